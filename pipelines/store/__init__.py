"""Zarr v3 shard store with versioned manifests and incremental updates.

Write (what a build does, ``pipelines.build``): each worker writes its scenes
into new, unlisted shards with ``ShardWriter(url).write(scenes) -> ShardInfo``;
the driver alone lists them, a batch at a time, with ``commit(url,
base_version, added_shards, ...) -> version`` (a compare-and-swap on the
manifest version: retried on ``ManifestConflictError``). ``plan_update``
decides what a build must (re)process; ``commit_update`` drops the scenes that
left it (and compacts shards that became mostly dead). Records: ``ShardInfo``
and ``SceneEntry`` (``pipelines.store.records``). Read: ``ShardStore.open(url,
version=None)``. Maintenance: ``gc``; inspection: ``python -m
pipelines.store.inspect``.
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
from pipelines.store.incremental import Plan, UpdateResult, commit_update, plan_update
from pipelines.store.location import StoreLocation
from pipelines.store.manifest import Manifest, commit, latest_version, list_versions, load_manifest
from pipelines.store.reader import ShardReader, ShardStore
from pipelines.store.records import SceneEntry, ShardInfo
from pipelines.store.writer import ShardWriter, pack_scenes, validate_processed

__all__ = [
    "GcReport", "Manifest", "ManifestConflictError", "ManifestFormatError", "ManifestVersionError",
    "NoManifestError", "Plan", "SceneEntry", "ShardCorruptError", "ShardInfo", "ShardReader", "ShardStore",
    "ShardWriter", "StoreError", "StoreLocation", "UpdateResult", "commit", "commit_update", "gc",
    "latest_version", "list_versions", "load_manifest", "pack_scenes", "plan_update", "validate_processed",
]
