"""One batch of a build, on a worker: ``build_batch``.

For each scene of a batch: load -> complete depth -> process_scene -> validate,
then pack the good scenes into shards (``ShardPacker``: at most ``shard_size``
scenes each) written straight into the store (unlisted until committed). A
scene that fails is caught and returned as a ``SceneFailure`` (stage,
exception type, message); only errors that ``is_transient`` escape, as
``TransientBatchError``, so the caller can retry the whole batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pipelines.build.options import SceneSettings, SourceSpec
from pipelines.build.retry import TransientBatchError, is_transient
from pipelines.image_groups import process_scene
from pipelines.quarantine import SceneFailure
from pipelines.store import ShardInfo, ShardWriter, validate_processed
from pipelines.store.writer import ShardPacker
from preprocess.records import ProcessedScene
from preprocess.scene import SceneValidationError
from preprocess.sources.base import SceneRef, SceneSource

STAGES = ("load", "render", "process", "validate", "write")


@dataclass(frozen=True)
class BatchItem:
    """One scene to build: where it comes from and its frame gap."""

    spec: SourceSpec
    ref: SceneRef
    frame_gap: int

    @property
    def key(self) -> str:
        return self.ref.key


@dataclass
class BatchResult:
    """What a batch hands back to the driver: the shards it wrote (unlisted
    until committed), the scenes that failed, and seconds spent per stage."""

    shards: list[ShardInfo] = field(default_factory=list)
    failures: list[SceneFailure] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    points: int = 0
    image_groups: int = 0

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
    packer = ShardPacker(max_scenes=shard_size)
    result = BatchResult()
    writer = ShardWriter(store)
    sources: dict[SourceSpec, SceneSource] = {}

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
        if on_scene:
            on_scene(item.key, "ok")
        for shard in packer.add(ps):
            _write(writer, shard, result, by_key, fail)
    for shard in packer.flush():
        _write(writer, shard, result, by_key, fail)
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
            result.image_groups += sh.n_image_groups
    except (OSError, TimeoutError) as exc:
        if is_transient(exc):
            raise TransientBatchError(scenes[0].key, "write", exc) from exc
        raise
    finally:
        result.timings["write"] += time.perf_counter() - t
