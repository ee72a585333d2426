"""Zarr v3 shard store with versioned manifests and incremental updates.

Write: ``ShardWriter(url).write(scenes) -> ShardInfo`` then
``commit(url, base_version, added_shards, ...) -> version`` (or the whole
incremental cycle: ``plan_update`` -> process ``plan.to_process`` ->
``apply_update``). Read: ``ShardStore.open(url, version=None)``.
Maintenance: ``gc``; inspection: ``python -m pipelines.store.inspect``.
"""
from pipelines.store.errors import (
    ManifestConflictError,
    ManifestFormatError,
    ManifestVersionError,
    NoManifestError,
    ShardCorruptError,
    StoreError,
)
from pipelines.store.gc import GcReport, gc
from pipelines.store.incremental import Plan, UpdateResult, apply_update, commit_update, plan_update, write_update
from pipelines.store.location import StoreLocation
from pipelines.store.manifest import Manifest, commit, latest_version, list_versions, load_manifest
from pipelines.store.reader import ShardReader, ShardStore
from pipelines.store.writer import SceneEntry, ShardInfo, ShardWriter, pack_scenes, validate_processed

__all__ = [
    "GcReport", "Manifest", "ManifestConflictError", "ManifestFormatError", "ManifestVersionError",
    "NoManifestError", "Plan", "SceneEntry", "ShardCorruptError", "ShardInfo", "ShardReader", "ShardStore",
    "ShardWriter", "StoreError", "StoreLocation", "UpdateResult", "apply_update", "commit", "commit_update", "write_update", "gc",
    "latest_version", "list_versions", "load_manifest", "pack_scenes", "plan_update", "validate_processed",
]
