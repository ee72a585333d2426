"""Committing a build's work, serially in the driver (one writer per store at a
time, the build lease): each finished batch's shards are listed in a new
"partial" manifest version (a killed build keeps every committed batch),
``commit_removals`` drops scenes that left the build, ``commit_complete``
closes the run. Each commit is a compare-and-swap on the manifest version
(``commit_with_retries``).
"""
from __future__ import annotations

import random
import time
from typing import Callable, Iterable, Sequence

from pipelines.store import ManifestConflictError, Plan, ShardInfo, commit, commit_update, latest_version, load_manifest


def commit_with_retries(store, attempt: Callable[[int | None], int | None], max_attempts: int = 100) -> int | None:
    """Compare-and-swap on the manifest version: ``attempt(latest)`` re-applies a
    run's change on top of the latest version and commits ``latest + 1``; when
    another writer took that version first, read the new latest and try again."""
    for n in range(max_attempts):
        try:
            return attempt(latest_version(store))
        except ManifestConflictError:
            time.sleep(random.uniform(0.0, 0.01 * min(n + 1, 20)))  # de-synchronise racing writers
    raise ManifestConflictError(f"{store}: gave up after {max_attempts} commit races")


def commit_batch(store, shards: Sequence[ShardInfo], note: str = "", run_id: str = "",
                 sources: dict | None = None) -> int | None:
    """List ``shards`` in a new "partial" manifest version on top of the latest
    one; returns it (None when nothing was left to list). A scene that an older
    version lists with other content (a changed scene) is re-pointed to the new
    shard; one that another run committed meanwhile with the same content stays
    as that run listed it (listed exactly once)."""
    if not shards:
        raise ValueError("commit_batch needs at least one shard")

    def attempt(base: int | None) -> int | None:
        listed = load_manifest(store, base).scenes() if base is not None else {}
        fresh = []
        for sh in shards:
            keep = [e for e in sh.scenes if not (e.key in listed and listed[e.key][1].content_hash == e.content_hash)]
            if keep:
                fresh.append(sh if len(keep) == len(sh.scenes) else sh.with_scenes(keep))
        if not fresh:
            return None
        replaced = sorted({e.key for sh in fresh for e in sh.scenes} & set(listed))
        return commit(store, base, added_shards=fresh, removed_scenes=replaced, note=note, run_id=run_id,
                      state="partial", sources=sources)

    return commit_with_retries(store, attempt)


def commit_removals(store, removed: Sequence[str], compact_below: float = 0.5, note: str = "", run_id: str = "",
                    drop_sources: Iterable[str] = ()) -> int | None:
    """Stop listing ``removed`` scene keys in a "partial" version (compacting
    shards that become mostly dead, see ``pipelines.store.incremental``); None
    when none of them is listed."""

    def attempt(base: int | None) -> int | None:
        if base is None or not removed:
            return None
        keys = sorted(set(removed) & set(load_manifest(store, base).scenes()))
        if not keys:
            return None
        res = commit_update(store, Plan(base_version=base, removed=keys), compact_below=compact_below,
                            note=note or f"pruned {len(keys)} scenes this build did not find", run_id=run_id,
                            state="partial", drop_sources=list(drop_sources))
        return res.version

    return commit_with_retries(store, attempt)


def commit_complete(store, run_id: str, sources: dict | None = None, note: str = "") -> int:
    """Close a run: a "complete" version on top of the latest, listing the same
    shards (readers open the latest complete version by default)."""

    def attempt(base: int | None) -> int:
        return commit(store, base, note=note or f"run {run_id} complete", run_id=run_id, state="complete",
                      sources=sources)

    return commit_with_retries(store, attempt)
