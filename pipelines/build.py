"""Building a store batch by batch: the library half of the build-dataset flow.

Worker side, ``build_batch``: for each scene of a batch, load -> complete depth
-> process_scene -> validate, then pack the good scenes into shards written
straight into the store (unlisted until committed). A scene that fails is
caught and returned as a ``SceneFailure`` (stage, exception type, message);
only errors that look transient (I/O hiccups, timeouts) escape, so the caller
can retry the whole batch.

Driver side (serial, one writer per store): ``plan_build`` compares the
discovered scenes with the store's latest manifest, ``commit_batch`` lists a
finished batch's shards in a new manifest version (so a killed build keeps
every committed batch), ``commit_removals`` drops scenes that left the build.

No Prefect import: ``pipelines.build_run.run_build`` runs these in a whole
build; ``flows/build_dataset.py`` wires the same loop into Prefect tasks.
"""
from __future__ import annotations

import errno
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

from pipelines.quarantine import SceneFailure
from preprocess.records import ProcessedScene
from pipelines.image_groups import DEFAULT_MIN_CORRESPONDENCES, FRAME_GAP, process_scene
from pipelines.store import (
    ManifestConflictError,
    Plan,
    ShardInfo,
    ShardWriter,
    commit,
    commit_update,
    latest_version,
    load_manifest,
    plan_update,
    validate_processed,
)
from preprocess.geometry import DEPTH_EPS
from preprocess.scene import SceneValidationError
from preprocess.sources.base import SceneRef, SceneSource, make_source

STAGES = ("load", "render", "process", "validate", "write")
# errno values that say "try again", not "this input is bad".
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET,
                     errno.ECONNABORTED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESTALE}


def absolute_location(path_or_url: str) -> str:
    """A local path made absolute (workers may run in another directory); a
    URL with a scheme (s3://, memory://, file://) is returned unchanged."""
    import os

    return path_or_url if "://" in path_or_url else os.path.abspath(os.path.expanduser(path_or_url))


def default_frame_gap(kind: str) -> int:
    """Reference frame gap of a source kind (ScanNet 75, ScanNet++ 20,
    ARKitScenes 50, S3DIS 5); 1 (every frame) for any other kind."""
    return int(FRAME_GAP.get(kind, 1))


def fold_frame_gap(spec: "SourceSpec", gap: int) -> tuple["SourceSpec", int]:
    """Apply a frame gap at read time when the adapter can skip frames.

    Adapters built on ``AdapterBase`` take ``frame_skip``: reading every
    ``gap``-th frame there means a ScanNet scene (~5,500 frames at 1296x968)
    decodes and renders 75x fewer frames, and the segment stage then uses every
    frame it gets (gap 1). The kept frames are the same (0, gap, 2*gap, ...).
    A spec that sets ``frame_skip`` itself, or an adapter without it, keeps the
    gap in the segment stage. Returns (spec, gap for process_scene)."""
    from preprocess.sources.base import source_class

    cls = source_class(spec.kind)
    takes_skip = "frame_skip" in getattr(cls, "_COMMON_OPTIONS", {}) or "frame_skip" in getattr(cls, "OPTIONS", {})
    if gap <= 1 or not takes_skip or "frame_skip" in spec.options:
        return spec, gap
    folded = SourceSpec(spec.kind, spec.path, spec.name, {**spec.options, "frame_skip": int(gap)}, spec.frame_gap)
    return folded, 1


@dataclass(frozen=True)
class SourceSpec:
    """One source of a build: ``make_source(kind, path, name, **options)``.
    ``frame_gap`` None: the flow-wide value, else the kind's default."""

    kind: str
    path: str
    name: Optional[str] = None
    options: dict = field(default_factory=dict)
    frame_gap: Optional[int] = None

    @property
    def source_name(self) -> str:
        """The name scene keys use ("name/scene_id")."""
        return self.name or self.kind

    def make(self) -> SceneSource:
        return make_source(self.kind, self.path, name=self.name, **self.options)

    def __hash__(self) -> int:  # options is a dict; identity is kind, path, name
        return hash((self.kind, self.path, self.name))

    @staticmethod
    def from_dict(d: dict) -> "SourceSpec":
        """{kind, path, name?, options?, frame_gap?}; unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"a source must be a mapping {{kind, path, name?, options?}}, got {d!r}")
        unknown = sorted(set(d) - {"kind", "path", "name", "options", "frame_gap"})
        if unknown:
            raise ValueError(f"source {d!r}: unknown key(s) {unknown}; known: kind, path, name, options, frame_gap")
        for req in ("kind", "path"):
            if not d.get(req):
                raise ValueError(f"source {d!r}: '{req}' is required")
        gap = d.get("frame_gap")
        if gap is not None and (not isinstance(gap, int) or gap < 1):
            raise ValueError(f"source {d!r}: frame_gap must be an integer >= 1")
        return SourceSpec(str(d["kind"]), absolute_location(str(d["path"])), d.get("name") or None,
                          dict(d.get("options") or {}), gap)

    @staticmethod
    def parse(text: str) -> "SourceSpec":
        """``kind:path[:k=v,k=v,...]`` (the CLI form). ``name=`` and
        ``frame_gap=`` are taken out of the options; values are read as JSON
        when they parse (numbers, true/false), else kept as strings."""
        from preprocess.sources.base import parse_source_arg

        kind, path, options = parse_source_arg(text)
        name = options.pop("name", None)
        gap = options.pop("frame_gap", None)
        return SourceSpec.from_dict({"kind": kind, "path": path, "name": name, "options": options, "frame_gap": gap})


@dataclass(frozen=True)
class SceneSettings:
    """Per-scene processing settings shared by a build (frame_gap is per source)."""

    eps: float = DEPTH_EPS
    min_correspondences: int = DEFAULT_MIN_CORRESPONDENCES
    max_image_side: Optional[int] = None
    render_backend: str = "auto"


@dataclass(frozen=True)
class BatchItem:
    """One scene to build: where it comes from and its frame gap."""

    spec: SourceSpec
    ref: SceneRef
    frame_gap: int

    @property
    def key(self) -> str:
        return self.ref.key


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


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying (network/disk hiccups, timeouts), False
    for errors that say the input or the code is wrong."""
    if isinstance(exc, (ConnectionError, TimeoutError, BlockingIOError, InterruptedError)):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


class TransientBatchError(RuntimeError):
    """A batch hit an error worth retrying; names the scene and the stage."""

    def __init__(self, key: str, stage: str, exc: BaseException):
        self.key, self.stage = key, stage
        super().__init__(f"scene '{key}': stage '{stage}': transient {type(exc).__name__}: {exc}")


@dataclass
class BatchResult:
    """What a batch hands back to the driver: the shards it wrote (unlisted
    until committed), the scenes that failed, and seconds spent per stage."""

    shards: list[ShardInfo] = field(default_factory=list)
    failures: list[SceneFailure] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    points: int = 0
    segments: int = 0

    @property
    def scene_keys(self) -> list[str]:
        return [s.key for sh in self.shards for s in sh.scenes]


def failure_of(item: BatchItem, stage: str, exc: BaseException) -> SceneFailure:
    r = item.ref
    return SceneFailure.of(r.key, r.source, r.scene_id, r.content_hash, stage, exc)


def build_scene(source: SceneSource, item: BatchItem, settings: SceneSettings, timings: dict[str, float]) -> ProcessedScene:
    """Load, render the missing depth and process one scene. Raises the stage's
    exception wrapped as ``_StageError`` so the caller knows where it failed."""
    from preprocess.render.complete_depth import complete_depth

    stage = "load"
    try:
        t = time.perf_counter()
        scene = source.load(item.ref)
        if scene.key != item.ref.key:
            raise SceneValidationError(item.ref.key, "key", f"adapter returned scene '{scene.key}' for ref '{item.ref.key}'")
        # The manifest must record the hash the plan compared, whatever load sets.
        scene = scene.replace(content_hash=item.ref.content_hash)
        timings["load"] += time.perf_counter() - t
        stage = "render"
        t = time.perf_counter()
        scene = complete_depth(scene, backend=settings.render_backend)
        timings["render"] += time.perf_counter() - t
        stage = "process"
        t = time.perf_counter()
        ps = process_scene(scene, eps=settings.eps, frame_gap=item.frame_gap,
                           min_correspondences=settings.min_correspondences,
                           max_image_side=settings.max_image_side)
        timings["process"] += time.perf_counter() - t
        stage = "validate"
        validate_processed(ps)
        return ps
    except Exception as exc:
        raise _StageError(stage, exc) from exc


class _StageError(Exception):
    def __init__(self, stage: str, exc: BaseException):
        self.stage, self.exc = stage, exc
        super().__init__(stage, exc)


def build_batch(store, items: Sequence[BatchItem], settings: SceneSettings, shard_size: int,
                on_scene: Callable[[str, str], None] | None = None) -> BatchResult:
    """Build ``items`` into shards of at most ``shard_size`` scenes written to
    ``store``; return them with the per-scene failures.

    ``on_scene(key, outcome)`` ("ok" or "failed: <stage>") reports progress.
    Raises TransientBatchError when a scene hits a transient error (retry the
    batch; shards already written stay unlisted and are garbage-collected)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    result = BatchResult()
    writer = ShardWriter(store)
    sources: dict[SourceSpec, SceneSource] = {}
    pending: list[ProcessedScene] = []

    def fail(item, stage, exc):
        if is_transient(exc):
            raise TransientBatchError(item.key, stage, exc) from exc
        result.failures.append(failure_of(item, stage, exc))
        if on_scene:
            on_scene(item.key, f"failed: {stage}")

    by_key = {it.key: it for it in items}
    for item in items:
        try:
            if item.spec not in sources:
                t = time.perf_counter()
                try:
                    sources[item.spec] = item.spec.make()
                finally:
                    result.timings["load"] += time.perf_counter() - t
            ps = build_scene(sources[item.spec], item, settings, result.timings)
        except _StageError as e:
            fail(item, e.stage, e.exc)
            continue
        except Exception as exc:  # the adapter could not even be constructed
            fail(item, "load", exc)
            continue
        pending.append(ps)
        if on_scene:
            on_scene(item.key, "ok")
        if len(pending) >= shard_size:
            _write(writer, pending, result, by_key, fail)
            pending = []
    if pending:
        _write(writer, pending, result, by_key, fail)
    return result


def _write(writer: ShardWriter, scenes: list[ProcessedScene], result: BatchResult, by_key, fail) -> None:
    """Write one shard; if a scene's content cannot be stored (e.g. metadata
    JSON cannot hold), isolate it by writing the scenes one by one."""
    t = time.perf_counter()
    try:
        try:
            shards = [writer.write(scenes)]
        except SceneValidationError:
            shards = []
            for ps in scenes:
                try:
                    shards.append(writer.write([ps]))
                except SceneValidationError as exc:
                    fail(by_key[ps.key], "write", exc)
        for sh in shards:
            result.shards.append(sh)
            result.points += sh.n_points
            result.segments += sh.n_segments
    except (OSError, TimeoutError) as exc:
        if is_transient(exc):
            raise TransientBatchError(scenes[0].key, "write", exc) from exc
        raise
    finally:
        result.timings["write"] += time.perf_counter() - t


# ----------------------------------------------------------------------------- driver side


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
