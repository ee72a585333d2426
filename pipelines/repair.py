"""Repair a store: rebuild the scenes of damaged shards from their sources.

``repair(store)`` verifies every shard the latest version lists (file hashes
against the shard's inventory), rebuilds the scenes of the shards that fail
from the sources the manifest records (same source options, frame gap and
processing settings as when they were built) into new shards, and commits one
version that lists those in place of the damaged ones. A scene that cannot be
rebuilt (its source is gone or fails) stays out of the store and goes to the
quarantine: nothing is unlisted silently.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pipelines.build.batch import BatchItem, build_batch
from pipelines.build.commit import commit_with_retries
from pipelines.build.options import BuildOptions, SceneSettings, SourceSpec
from pipelines.build.plan import fold_frame_gap
from pipelines.quarantine import SceneFailure, update_quarantine
from pipelines.store import ShardStore, StoreLocation, commit, load_manifest

log = logging.getLogger("pipelines.repair")


@dataclass
class RepairReport:
    damaged: dict[str, list[str]] = field(default_factory=dict)  # shard id -> problems found
    rebuilt: list[str] = field(default_factory=list)  # scene keys now served by new shards
    lost: dict[str, str] = field(default_factory=dict)  # scene key -> why it could not be rebuilt
    version: int | None = None  # the committed version (None: nothing was damaged)


def _items_for(keys: list[str], records: dict) -> tuple[list[BatchItem], dict[str, str], dict[str, SceneSettings]]:
    """Batch items of ``keys`` from the recorded sources (discovered again, so
    each scene is rebuilt from its current files), the keys that cannot be, and
    each source's recorded settings."""
    items, lost, settings = [], {}, {}
    by_source: dict[str, list[str]] = {}
    for key in keys:
        by_source.setdefault(key.split("/", 1)[0], []).append(key)
    for name, wanted in by_source.items():
        rec = records.get(name)
        if rec is None:
            lost.update({k: f"source '{name}' is not recorded in the manifest (built before sources were recorded)"
                         for k in wanted})
            continue
        spec = SourceSpec.from_dict({k: rec[k] for k in ("kind", "path", "name", "options", "frame_gap")})
        settings[name] = SceneSettings(**rec.get("settings", {}))
        try:
            refs = {r.key: r for r in spec.make().discover()}
        except Exception as exc:  # noqa: BLE001 - the source as a whole is unusable: its scenes are lost
            lost.update({k: f"source '{name}' failed discovery: {type(exc).__name__}: {exc}" for k in wanted})
            continue
        folded, gap = fold_frame_gap(spec, rec["frame_gap"])
        for key in wanted:
            if key in refs:
                items.append(BatchItem(folded, refs[key], gap))
            else:
                lost[key] = f"source '{name}' no longer lists this scene"
    return items, lost, settings


def repair(store: str, shard_size: int = BuildOptions.shard_size, run_id: str = "repair") -> RepairReport:
    """Verify, rebuild damaged shards' scenes from their sources, commit; see the module docstring."""
    report = RepairReport()
    loc = StoreLocation.of(store)
    opened = ShardStore(loc, load_manifest(loc))  # the newest version, complete or not
    for sh in opened.manifest.shards:
        problems = opened.reader(sh.id).verify()
        if problems:
            report.damaged[sh.id] = problems
    if not report.damaged:
        return report
    manifest = opened.manifest
    keys = sorted(e.key for sh in manifest.shards if sh.id in report.damaged for e in sh.scenes)
    items, report.lost, settings_of = _items_for(keys, manifest.sources)
    shards, failures = [], []
    for name in sorted({it.spec.source_name for it in items}):
        batch = [it for it in items if it.spec.source_name == name]
        result = build_batch(store, batch, settings_of[name], shard_size)
        shards += result.shards
        failures += result.failures
        report.rebuilt += result.scene_keys
    report.lost.update({f.key: f"{f.stage}: {f.message}" for f in failures})
    failures += [SceneFailure(key=k, source=k.split("/", 1)[0], scene_id=k.split("/", 1)[1], content_hash="",
                              stage="repair", error_type="RepairError", message=why)
                 for k, why in report.lost.items() if not any(f.key == k for f in failures)]

    def attempt(base: int | None) -> int:
        listed = load_manifest(store, base)
        gone = [sid for sid in report.damaged if sid in {sh.id for sh in listed.shards}]
        return commit(store, base, added_shards=shards, removed_shards=gone, run_id=run_id,
                      note=f"repair: {len(report.damaged)} damaged shards, {len(report.rebuilt)} scenes rebuilt, "
                           f"{len(report.lost)} lost")

    report.version = commit_with_retries(store, attempt)
    update_quarantine(store, failures, resolved=report.rebuilt, manifest_version=report.version)
    for key, why in report.lost.items():
        log.error("repair: %s could not be rebuilt and is no longer listed: %s", key, why)
    return report
