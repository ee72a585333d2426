"""Rewrite an older-format store in the current shard format.

Store format 1 wrote chunks without checksums, so a flipped byte decoded to
wrong values. ``migrate`` reads every listed format-1 shard back scene by scene
(the reader checks what it can: inventory sizes, blosc frames), writes the same
scenes into new format-2 shards and commits one version that lists them in place
of the old ones. Old shard folders stay until ``gc`` removes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.store.manifest import commit
from pipelines.store.reader import ShardStore
from pipelines.store.writer import ShardWriter


@dataclass
class MigrationReport:
    version: int | None  # the committed version, None if nothing needed migrating
    rewritten: dict[str, str] = field(default_factory=dict)  # old shard id -> new shard id


def migrate(store, progress: bool = False) -> MigrationReport:
    """Rewrite the latest version's format-1 shards; returns what was done."""
    reader = ShardStore.open(store)
    manifest = reader.manifest
    old = manifest.outdated_shards
    if not old:
        return MigrationReport(version=None)
    writer = ShardWriter(reader.location)
    report = MigrationReport(version=None)
    added = []
    for sh in old:
        shard = reader.reader(sh.id)
        scenes = [shard.scene(e.index) for e in sh.scenes]
        info = writer.write(scenes)
        added.append(info)
        report.rewritten[sh.id] = info.id
        if progress:
            print(f"migrate: shard {sh.id} ({len(scenes)} scenes) -> {info.id}")
    report.version = commit(reader.location, manifest.version, added_shards=added,
                            removed_shards=[sh.id for sh in old], note=f"migrate {len(old)} shards to store format 2")
    return report
