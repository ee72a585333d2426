"""What a build will do, decided in the driver before any scene is built.

``source_specs`` resolves the sources (frame gap per source, folded into the
adapter where it can skip frames; the record each manifest keeps of them),
``plan_build`` compares the discovered scenes with the store's latest manifest,
``make_batches`` cuts the scenes to build into batches (one task each).
"""
from __future__ import annotations

from typing import Iterable, Sequence

from pipelines.build.batch import BatchItem
from pipelines.build.options import SOURCE_KEYS, BuildOptions, SceneSettings, SourceSpec
from pipelines.image_groups import FRAME_GAP
from pipelines.store import Plan, StoreLocation, latest_version, load_manifest, plan_update
from preprocess.sources.base import SceneRef


def default_frame_gap(kind: str) -> int:
    """Reference frame gap of a source kind (ScanNet 75, ScanNet++ 20,
    ARKitScenes 50, S3DIS 5); 1 (every frame) for any other kind."""
    return int(FRAME_GAP.get(kind, 1))


def fold_frame_gap(spec: SourceSpec, gap: int) -> tuple[SourceSpec, int]:
    """Apply a frame gap at read time when the adapter can skip frames.

    Adapters built on ``AdapterBase`` take the option ``frame_gap``: reading every
    ``gap``-th frame there means a ScanNet scene (~5,500 frames at 1296x968)
    decodes and renders 75x fewer frames, and the image-group stage then uses every
    frame it gets (gap 1). The kept frames are the same (0, gap, 2*gap, ...).
    A spec that sets the option itself (``frame_gap``, or its deprecated alias
    ``frame_skip`` that manifests of older stores record), or an adapter without
    it, keeps the gap in the image-group stage. Returns (spec, gap for
    process_scene)."""
    from preprocess.sources._common import LEGACY_FRAME_GAP
    from preprocess.sources.base import source_class

    cls = source_class(spec.kind)
    takes_gap = "frame_gap" in getattr(cls, "_COMMON_OPTIONS", {}) or "frame_gap" in getattr(cls, "OPTIONS", {})
    if gap <= 1 or not takes_gap or "frame_gap" in spec.options or LEGACY_FRAME_GAP in spec.options:
        return spec, gap
    folded = SourceSpec(spec.kind, spec.path, spec.name, {**spec.options, "frame_gap": int(gap)}, spec.frame_gap)
    return folded, 1


def source_record(spec: SourceSpec, gap: int, settings: SceneSettings) -> dict:
    """How a source was built, as the manifest records it (see ``Manifest.sources``)."""
    return {"kind": spec.kind, "path": spec.path, "name": spec.name, "options": dict(spec.options),
            "frame_gap": gap, "settings": dict(settings.__dict__)}


def recorded_sources(store: StoreLocation) -> list[dict]:
    """The source records of the store's latest manifest, as ``sources`` entries."""
    base = latest_version(store)
    records = load_manifest(store, base).sources if base is not None else {}
    if not records:
        raise ValueError(f"build-dataset: no sources given and the store {StoreLocation.of(store).url} records none; name at least one")
    return [{k: r[k] for k in SOURCE_KEYS} for r in records.values()]


def source_specs(options: BuildOptions) -> tuple[list[SourceSpec], dict[str, int], dict[str, dict]]:
    """The build's specs with their frame gap folded in (see ``fold_frame_gap``),
    the gap left for the image-group stage per source name, and each source's record
    for the manifest. Source names must be unique."""
    specs, gap_of, records = [], {}, {}
    for spec in options.sources:
        gap = spec.frame_gap if spec.frame_gap is not None else (
            int(options.frame_gap) if options.frame_gap is not None else default_frame_gap(spec.kind))
        records[spec.source_name] = source_record(spec, gap, options.settings)
        spec, gap_of[spec.source_name] = fold_frame_gap(spec, gap)
        specs.append(spec)
    names = [s.source_name for s in specs]
    if not specs:
        raise ValueError("build-dataset: 'sources' is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"build-dataset: source names must be unique, got {names}; give one a 'name'")
    return specs, gap_of, records


def make_batches(items: Iterable[BatchItem], scenes_per_task: int) -> list[list[BatchItem]]:
    """Cut the scenes into batches of at most ``scenes_per_task``, never mixing
    sources (a shard holds one source, so a dropped source drops whole shards).
    Deterministic: sorted by source, then key."""
    if scenes_per_task < 1:
        raise ValueError(f"scenes_per_task must be >= 1, got {scenes_per_task}")
    by_source: dict[str, list[BatchItem]] = {}
    for it in items:
        by_source.setdefault(it.ref.source, []).append(it)
    batches = []
    for source in sorted(by_source):
        group = sorted(by_source[source], key=lambda it: it.key)
        batches.extend(group[i:i + scenes_per_task] for i in range(0, len(group), scenes_per_task))
    return batches


def plan_build(store, refs: Sequence[SceneRef], sources: Iterable[str], failed_sources: Iterable[str] = (),
               prune: bool = False) -> Plan:
    """Plan against the store's latest manifest (none: everything is new).

    A build adds and updates the scenes of its ``sources`` and keeps every other
    scene listed. Only with ``prune`` does ``plan.removed`` hold the listed
    scenes it did not find: those of sources not in this build and those their
    source no longer lists, except for sources whose discovery failed
    (``failed_sources``): the build did not see them."""
    base = latest_version(store)
    manifest = load_manifest(store, base) if base is not None else None
    listed_sources = {e.source for _, e in (manifest.scenes().values() if manifest else [])}
    plan = plan_update(manifest, refs, sources_present=set(sources) | listed_sources)
    failed = set(failed_sources)
    plan.removed = [k for k in plan.removed if k.split("/", 1)[0] not in failed] if prune else []
    return plan
