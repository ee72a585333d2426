"""A store update in one process, for tests and benchmarks of the store: the
build's write path (``ShardWriter.write`` of packed scenes, then one commit)
without the build around it."""
from __future__ import annotations

from typing import Sequence

from pipelines.store import Plan, ShardWriter, UpdateResult, commit_update, pack_scenes
from preprocess.records import ProcessedScene


def write_and_commit(store, plan: Plan, scenes: Sequence[ProcessedScene], *, target_shard_bytes: int = 256 << 20,
                     **commit_kw) -> UpdateResult:
    """Write ``scenes`` (the processed ``plan.to_process``) into new shards of
    about ``target_shard_bytes`` and commit them with ``commit_update``
    (``commit_kw``: compact_below, note, manifest fields)."""
    writer = ShardWriter(store)
    written = [writer.write(group) for group in pack_scenes(scenes, target_shard_bytes)]
    return commit_update(store, plan, written, **commit_kw)
