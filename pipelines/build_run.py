"""A whole build, without Prefect: ``run_build(store, sources, executor=...)``.

The loop: collect garbage -> discover each source -> plan against the latest
manifest -> cut batches -> build the batches through ``executor`` -> commit each
finished batch serially (a killed build keeps every committed batch) -> commit
removals -> write the build report. The step functions it calls are the
``*_step`` functions below; ``flows/build_dataset.py`` passes the same steps
wrapped as Prefect tasks (``BuildSteps``) and a Prefect-backed executor, so the
flow and a plain call share this one loop.

Executor protocol (``concurrent.futures.Executor`` fits, so does a
``dask.distributed.Client``): ``submit(fn, *args)`` returns a future with
``result()``. Completion order comes from, in turn: the ``as_completed``
argument, the executor's own ``as_completed`` method, ``concurrent.futures.
as_completed`` for standard futures, else the futures' ``add_done_callback``.
``executor=None`` runs each step in this process, in order, when its result
is asked for (so batch i is committed before batch i+1 is built).

CLI: ``python -m pipelines.build_run --store S --source kind:path[:k=v,...] [--workers N]``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import logging
import queue
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol, Sequence

from pipelines.build import (
    STAGES,
    BatchItem,
    BatchResult,
    SceneSettings,
    SourceSpec,
    TransientBatchError,
    absolute_location,
    build_batch,
    commit_batch,
    commit_complete,
    commit_removals,
    default_frame_gap,
    failure_of,
    fold_frame_gap,
    is_transient,
    make_batches,
    plan_build,
)
from pipelines.quarantine import SceneFailure, refresh_after_discovery, update_quarantine, write_build_report
from pipelines.store import Plan, StoreLocation, gc, latest_version, load_manifest
from pipelines.store.lease import build_lease
from preprocess.sources.hash_cache import stat_hash_cache
from preprocess.sources.base import SceneRef

log = logging.getLogger("pipelines.build")
# a store: a path or fsspec URL, or a StoreLocation (URL + storage options, e.g.
# S3 credentials: carried to the workers, never logged)
Store = "str | StoreLocation"

RETRIES = 3
BACKOFF_S = 2.0  # first retry after 2 s, then 4 s, 8 s


# ----------------------------------------------------------------------------- retries


def should_retry(exc: BaseException | None) -> bool:
    """Retry only errors that may pass (I/O hiccups, timeouts), not bad input."""
    if exc is None:
        return False
    cause = getattr(exc, "__cause__", None)
    return (is_transient(exc) or (cause is not None and is_transient(cause))
            or isinstance(exc, TransientBatchError) or type(exc).__name__ == "TransientBatchError")


def call_with_retries(fn: Callable, *args, retries: int = RETRIES, backoff_s: float = BACKOFF_S, **kwargs):
    """``fn(*args, **kwargs)``, retried up to ``retries`` times after a
    transient error (waits backoff_s, 2*backoff_s, ...); other errors raise."""
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == retries or not should_retry(exc):
                raise
            log.warning("%s: transient %s: %s; retry %d/%d", getattr(fn, "__name__", fn), type(exc).__name__,
                        exc, attempt + 1, retries)
            time.sleep(backoff_s * 2 ** attempt)


# ----------------------------------------------------------------------------- steps


def discover_step(spec: SourceSpec, store: str | None = None, logger: logging.Logger | None = None) -> list[SceneRef]:
    """List one source's scenes (cheap; no heavy loading). With a local ``store``,
    files whose stat did not change since the last run are not hashed again
    (``<store>/cache/file_hashes-<source>.json``, see ``preprocess.sources.hash_cache``)."""
    t = time.perf_counter()
    cache = contextlib.nullcontext()
    loc = StoreLocation.of(store) if store is not None else None
    if loc is not None and loc.is_local:
        cache = stat_hash_cache(Path(loc.path("cache", f"file_hashes-{spec.source_name}.json")))
    with cache:
        refs = spec.make().discover()
    (logger or log).info("source '%s' (%s at %s): %d scenes in %.1f s", spec.source_name, spec.kind, spec.path,
                         len(refs), time.perf_counter() - t)
    return refs


def build_batch_step(index: int, store: Store, items: list[BatchItem], settings: SceneSettings, shard_size: int,
                     logger: logging.Logger | None = None) -> BatchResult:
    """Build one batch into shards in the store (unlisted until committed)."""
    logger = logger or log
    t = time.perf_counter()
    result = build_batch(store, items, settings, shard_size, on_scene=lambda key, outcome: logger.info("%s: %s", key, outcome))
    dt = time.perf_counter() - t
    logger.info("batch %d: %d scenes -> %d shards, %d failed, %d points, %d segments in %.1f s (%.2f scenes/s)",
                index, len(items), len(result.shards), len(result.failures), result.points, result.segments,
                dt, len(items) / max(dt, 1e-9))
    return result


def gc_step(store: Store, grace_seconds: float, logger: logging.Logger | None = None) -> dict:
    """Remove shards no manifest lists (left by killed or failed batches) once
    they are older than ``grace_seconds`` (younger ones may belong to a
    concurrent writer about to commit)."""
    rep = gc(store, keep_last=None, min_age_s=grace_seconds)
    if rep.removed_shards:
        (logger or log).info("gc: removed %d unlisted shards", len(rep.removed_shards))
    return {"removed_shards": len(rep.removed_shards), "removed_temp_files": len(rep.removed_temp_files)}


def plan_step(store: Store, refs: list[SceneRef], sources: list[str], failed_sources: list[str], prune: bool = False,
              logger: logging.Logger | None = None) -> Plan:
    plan = plan_build(store, refs, sources, failed_sources, prune=prune)
    (logger or log).info(plan.summary())
    return plan


def commit_step(index: int, store: Store, result: BatchResult, failures: list[SceneFailure], run_id: str = "",
                sources: dict | None = None) -> int | None:
    """List a finished batch's shards in a new ("partial") manifest version and
    update the quarantine (scenes committed leave it, failed ones enter it)."""
    version = commit_batch(store, result.shards, note=f"build-dataset batch {index}", run_id=run_id,
                           sources=sources) if result.shards else None
    update_quarantine(store, failures, resolved=result.scene_keys, manifest_version=version)
    return version


def removals_step(store: Store, removed: list[str], run_id: str = "", drop_sources: Sequence[str] = (),
                  logger: logging.Logger | None = None) -> int | None:
    version = commit_removals(store, removed, run_id=run_id, drop_sources=drop_sources)
    if version is not None:
        (logger or log).warning("v%d: pruned %d scenes this build did not find: %s", version, len(removed),
                                ", ".join(removed[:20]) + (" ..." if len(removed) > 20 else ""))
    return version


def finish_step(store: Store, run_id: str, sources: dict, logger: logging.Logger | None = None) -> int:
    version = commit_complete(store, run_id, sources)
    (logger or log).info("v%d: run %s complete (readers open this version)", version, run_id)
    return version


@dataclass(frozen=True)
class BuildSteps:
    """The steps ``run_build`` calls. ``discover`` and ``build_batch`` go
    through the executor (they must pickle for a process pool or Dask); the
    others run in the driver, in order. The flow passes Prefect tasks here."""

    discover: Callable[..., list[SceneRef]] = partial(call_with_retries, discover_step)
    build_batch: Callable[..., BatchResult] = partial(call_with_retries, build_batch_step)
    gc: Callable[[str, float], dict] = gc_step
    plan: Callable[..., Plan] = plan_step
    commit: Callable[..., int | None] = commit_step
    remove: Callable[..., int | None] = removals_step
    finish: Callable[..., int] = finish_step


# ----------------------------------------------------------------------------- executors


class Executor(Protocol):
    def submit(self, fn: Callable, /, *args: Any) -> Any: ...


class _Deferred:
    """A future of ``SerialExecutor``: runs its call the first time ``result()`` is asked."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict):
        self._call: Optional[tuple] = (fn, args, kwargs)
        self._value: Any = None
        self._error: BaseException | None = None

    def result(self, timeout: float | None = None) -> Any:
        if self._call is not None:
            fn, args, kwargs = self._call
            self._call = None
            try:
                self._value = fn(*args, **kwargs)
            except Exception as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._value


class SerialExecutor:
    """In this process, one call at a time, in submission order."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> _Deferred:
        return _Deferred(fn, args, kwargs)

    @staticmethod
    def as_completed(futures: Iterable[_Deferred]) -> Iterator[_Deferred]:
        return iter(list(futures))


def as_completed_any(futures: Iterable[Any]) -> Iterator[Any]:
    """Futures in completion order: ``concurrent.futures.as_completed`` for
    standard futures, else through ``add_done_callback`` (Dask futures)."""
    futures = list(futures)
    if all(isinstance(f, cf.Future) for f in futures):
        yield from cf.as_completed(futures)
        return
    done: queue.Queue = queue.Queue()
    for f in futures:
        f.add_done_callback(done.put)
    for _ in futures:
        yield done.get()


# ----------------------------------------------------------------------------- the loop


@dataclass
class BuildSummary:
    """What one build did; ``as_dict()`` is the JSON written to
    ``<store>/reports/build-v*.json`` (``report`` is that file's path)."""

    store: str
    sources: list[str]
    run_id: str = ""
    manifest_version: int | None = None
    base_version: int | None = None
    scenes: dict[str, int] = field(default_factory=dict)
    # {source: {new, unchanged, updated, removed, failed}}
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    failed_sources: list[str] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)
    batches: int = 0
    batches_failed: int = 0
    shards_written: int = 0
    points_written: int = 0
    segments_written: int = 0
    gc: dict = field(default_factory=dict)
    elapsed_s: dict[str, float] = field(default_factory=dict)
    worker_s: dict[str, float] = field(default_factory=dict)
    scenes_per_s: float = 0.0
    report: str | None = None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        if d["report"] is None:
            del d["report"]
        return d


def source_record(spec: SourceSpec, gap: int, settings: SceneSettings) -> dict:
    """How a source was built, as the manifest records it (see ``Manifest.sources``)."""
    return {"kind": spec.kind, "path": spec.path, "name": spec.name, "options": dict(spec.options),
            "frame_gap": gap, "settings": dict(settings.__dict__)}


def recorded_sources(store: Store) -> list[dict]:
    """The source records of the store's latest manifest, as ``sources`` entries."""
    base = latest_version(store)
    records = load_manifest(store, base).sources if base is not None else {}
    if not records:
        raise ValueError(f"build-dataset: no sources given and the store {StoreLocation.of(store).url} records none; name at least one")
    return [{k: r[k] for k in ("kind", "path", "name", "options", "frame_gap")} for r in records.values()]


def source_specs(sources: Sequence[SourceSpec | dict], frame_gap: int | None,
                 settings: SceneSettings) -> tuple[list[SourceSpec], dict[str, int], dict[str, dict]]:
    """Specs with their frame gap folded in (see ``fold_frame_gap``), the gap
    left for the segment stage per source name, and each source's record for the
    manifest. Source names must be unique."""
    specs, gap_of, records = [], {}, {}
    for src in sources:
        spec = src if isinstance(src, SourceSpec) else SourceSpec.from_dict(dict(src))
        gap = spec.frame_gap if spec.frame_gap is not None else (
            int(frame_gap) if frame_gap is not None else default_frame_gap(spec.kind))
        records[spec.source_name] = source_record(spec, gap, settings)
        spec, gap_of[spec.source_name] = fold_frame_gap(spec, gap)
        specs.append(spec)
    names = [s.source_name for s in specs]
    if not specs:
        raise ValueError("build-dataset: 'sources' is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"build-dataset: source names must be unique, got {names}; give one a 'name'")
    return specs, gap_of, records


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="build-dataset", unit="scene", file=sys.stderr)


def discover_sources(store: Store, specs: Sequence[SourceSpec], executor: Executor, discover: Callable,
                     logger: logging.Logger) -> tuple[dict[SourceSpec, list[SceneRef]], list[SceneFailure]]:
    """{spec: refs} of the sources whose discovery worked, and a "source/*"
    failure for each one that did not (the build goes on without it). Updates
    the quarantine report (see ``refresh_after_discovery``)."""
    futures = {spec: executor.submit(discover, spec, store) for spec in specs}
    refs_of: dict[SourceSpec, list[SceneRef]] = {}
    failures: list[SceneFailure] = []
    for spec, fut in futures.items():
        try:
            refs_of[spec] = fut.result()
        except Exception as exc:  # the source as a whole is unusable: report it, build the rest
            failures.append(SceneFailure.of(f"{spec.source_name}/*", spec.source_name, "*", "", "discover", exc))
            logger.error("source '%s' failed discovery: %s: %s", spec.source_name, type(exc).__name__, exc)
    refresh_after_discovery(store, failures, [s.source_name for s in refs_of],
                            [r.key for refs in refs_of.values() for r in refs])
    return refs_of, failures


@dataclass
class _Progress:
    """What the committed batches add up to (the build part of the summary)."""

    version: int | None
    committed: list[str] = field(default_factory=list)
    failures: list[SceneFailure] = field(default_factory=list)
    worker_s: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    shards: int = 0
    points: int = 0
    segments: int = 0
    batches_failed: int = 0
    commit_s: float = 0.0


def build_and_commit(store: Store, batches: list[list[BatchItem]], executor: Executor, as_completed: Callable,
                     steps: BuildSteps, settings: SceneSettings, shard_size: int, logger: logging.Logger,
                     bar=None, run_id: str = "", records: dict | None = None) -> _Progress:
    """Submit every batch to ``executor`` and commit each one, serially, as it
    finishes. A batch that raises (retries exhausted, worker died) has all its
    scenes quarantined with stage "batch"."""
    t = time.perf_counter()
    n_items = sum(len(b) for b in batches)
    done = _Progress(version=None)
    batch_futures = {executor.submit(steps.build_batch, i, store, batch, settings, shard_size): (i, batch)
                     for i, batch in enumerate(batches)}
    for n_done, fut in enumerate(as_completed(list(batch_futures)), start=1):
        index, batch = batch_futures[fut]
        try:
            result: BatchResult = fut.result()
        except Exception as exc:
            done.batches_failed += 1
            result = BatchResult(failures=[failure_of(it, "batch", exc) for it in batch])
            logger.error("batch %d failed after retries: %s: %s", index, type(exc).__name__, exc)
        tc = time.perf_counter()
        v = steps.commit(index, store, result, result.failures, run_id, records)
        done.commit_s += time.perf_counter() - tc
        done.version = v if v is not None else done.version
        done.failures.extend(result.failures)
        done.committed.extend(result.scene_keys)
        done.shards += len(result.shards)
        done.points += result.points
        done.segments += result.segments
        for s in STAGES:
            done.worker_s[s] += result.timings.get(s, 0.0)
        rate = len(done.committed) / max(time.perf_counter() - t, 1e-9)
        logger.info("batch %d/%d committed%s: %d scenes ok, %d failed; total %d/%d scenes (%.2f scenes/s)",
                    n_done, len(batches), f" as v{v}" if v is not None else " (nothing to list)",
                    len(result.scene_keys), len(result.failures), len(done.committed), n_items, rate)
        if bar is not None:
            bar.update(len(batch))
    return done


def new_run_id() -> str:
    return "cli-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def per_source_counts(names: Sequence[str], plan: Plan, failures: Sequence[SceneFailure]) -> dict[str, dict[str, int]]:
    """{source: {new, unchanged, updated, removed, failed}} for the run summary."""
    out = {n: dict(new=0, unchanged=0, updated=0, removed=0, failed=0) for n in names}

    def add(key: str, what: str):
        out.setdefault(key.split("/", 1)[0], dict(new=0, unchanged=0, updated=0, removed=0, failed=0))[what] += 1

    for r in plan.new:
        add(r.key, "new")
    for r in plan.changed:
        add(r.key, "updated")
    for k in plan.unchanged:
        add(k, "unchanged")
    for k in plan.removed:
        add(k, "removed")
    for f in failures:
        add(f.key, "failed")
    return out


def run_build(
    store: Store,
    sources: Sequence[SourceSpec | dict] = (),
    *,
    storage_options: dict | None = None,
    executor: Executor | None = None,
    as_completed: Callable[[list], Iterable] | None = None,
    settings: SceneSettings = SceneSettings(),
    frame_gap: int | None = None,
    scenes_per_task: int = 4,
    shard_size: int = 4,
    prune: bool = False,
    run_id: str | None = None,
    gc_grace_seconds: float = 3600.0,
    progress: bool = False,
    steps: BuildSteps = BuildSteps(),
    logger: logging.Logger | None = None,
) -> BuildSummary:
    """Build or update the shard store ``store`` from ``sources`` (specs or
    ``{kind, path, name?, options?, frame_gap?}`` dicts); returns the summary,
    also written to ``<store>/reports/``.

    Adding is the default: the run adds and updates the scenes of the sources it
    names and keeps every other scene listed; ``sources`` empty refreshes every
    source the store records. ``prune`` also stops listing the scenes this run
    did not find (other sources, scenes gone from their source), except those
    of a source whose discovery failed; the summary lists them.
    frame_gap: every n-th frame is a candidate image (None: per source kind).
    One build at a time per store (``build_lease``); each finished batch is a
    "partial" manifest version (a killed build resumes from them) and the run
    ends with a "complete" one, recording ``run_id``. Failed scenes go to the
    quarantine.

    store: a path, an fsspec URL (``s3://bucket/prefix``: workers write shard
    chunks straight to the object store) or a StoreLocation. storage_options:
    fsspec options for the URL (credentials, ``client_kwargs.endpoint_url``);
    they travel with the store to the workers and are never logged. Without
    them fsspec/boto read the usual environment variables and config files."""
    logger = logger or log
    store = StoreLocation.of(absolute_location(store) if isinstance(store, str) else store, storage_options)
    run_id = run_id or new_run_id()
    specs, gap_of, records = source_specs(list(sources) or recorded_sources(store), frame_gap, settings)
    for pname, value in (("scenes_per_task", scenes_per_task), ("shard_size", shard_size)):
        if value < 1:
            raise ValueError(f"build-dataset: {pname} must be >= 1, got {value}")
    if not settings.eps > 0:
        raise ValueError(f"build-dataset: eps must be > 0 (metres), got {settings.eps}")
    executor = executor if executor is not None else SerialExecutor()
    as_completed = as_completed or getattr(executor, "as_completed", None) or as_completed_any
    with build_lease(store, run_id):
        return _run_locked(store, specs, gap_of, records, executor, as_completed, settings, scenes_per_task,
                           shard_size, prune, run_id, gc_grace_seconds, progress, steps, logger)


def _run_locked(store, specs, gap_of, records, executor, as_completed, settings, scenes_per_task, shard_size,
                prune, run_id, gc_grace_seconds, progress, steps, logger) -> BuildSummary:
    t_start = time.perf_counter()
    elapsed: dict[str, float] = {}
    names = [s.source_name for s in specs]
    t = time.perf_counter()
    gc_report = steps.gc(store, gc_grace_seconds)
    elapsed["gc"] = time.perf_counter() - t

    # 1. discover, one call per source
    t = time.perf_counter()
    refs_of, discover_failures = discover_sources(store, specs, executor, steps.discover, logger)
    failed_sources = [s.source_name for s in specs if s not in refs_of]
    records = {n: r for n, r in records.items() if n not in failed_sources}  # recorded once discovery works
    all_refs = [r for refs in refs_of.values() for r in refs]
    elapsed["discover"] = time.perf_counter() - t

    # 2. plan against the latest manifest
    t = time.perf_counter()
    plan = steps.plan(store, all_refs, names, failed_sources, prune)
    spec_of = {r.key: spec for spec, refs in refs_of.items() for r in refs}
    items = [BatchItem(spec_of[r.key], r, gap_of[spec_of[r.key].source_name]) for r in plan.to_process]
    batches = make_batches(items, scenes_per_task)
    elapsed["plan"] = time.perf_counter() - t
    logger.info("%d scenes to build in %d batches of <= %d (skipping %d already committed)",
                len(items), len(batches), scenes_per_task, len(plan.unchanged))

    # 3.+4. build batches through the executor, commit each one as it finishes
    t = time.perf_counter()
    bar = _progress_bar(len(items), progress)
    done = build_and_commit(store, batches, executor, as_completed, steps, settings, shard_size, logger, bar,
                            run_id, records)
    if bar is not None:
        bar.close()
    elapsed["build"] = time.perf_counter() - t - done.commit_s
    elapsed["commit"] = done.commit_s

    # 5. prune (only when asked): scenes this build did not find
    t = time.perf_counter()
    gone = sorted({k.split("/", 1)[0] for k in plan.removed} - set(names))
    removed_version = steps.remove(store, plan.removed, run_id, gone) if plan.removed else None
    elapsed["remove"] = time.perf_counter() - t

    # 6. close the run with a complete version when it changed anything
    changed = done.version is not None or removed_version is not None
    version = finish_run(store, run_id, records, changed, steps)
    elapsed["total"] = time.perf_counter() - t_start

    summary = summarise(store, names, run_id, version, plan, batches, done, discover_failures, failed_sources,
                        gc_report, elapsed)
    summary.report = write_build_report(store, summary.as_dict())
    logger.info("build-dataset done: v%s, %d discovered, %d skipped, %d processed, %d quarantined, %d pruned, "
                "%d shards, %.1f s", version, summary.scenes["discovered"], len(plan.unchanged),
                len(done.committed), len(summary.quarantined), len(plan.removed), done.shards, elapsed["total"])
    return summary


def finish_run(store, run_id: str, records: dict, changed: bool, steps: BuildSteps) -> int | None:
    """The version that ends the run: a new "complete" one when the run changed
    anything, a killed run left the latest version partial, or the source records
    changed; else the latest (a no-op run adds no version)."""
    latest = latest_version(store)
    if latest is None:
        return None
    last = load_manifest(store, latest)
    if changed or last.state != "complete" or any(last.sources.get(n) != r for n, r in records.items()):
        return steps.finish(store, run_id, records)
    return latest


def summarise(store, names, run_id, version, plan: Plan, batches, done: _Progress, discover_failures,
              failed_sources, gc_report: dict, elapsed: dict) -> BuildSummary:
    """The run's summary (see ``BuildSummary``)."""
    failures = discover_failures + done.failures
    return BuildSummary(
        store=store.url, sources=names, run_id=run_id, manifest_version=version, base_version=plan.base_version,
        scenes={"discovered": len(plan.new) + len(plan.changed) + len(plan.unchanged), "skipped": len(plan.unchanged),
                "new": len(plan.new), "changed": len(plan.changed), "processed": len(done.committed),
                "quarantined": len(failures), "removed": len(plan.removed)},
        per_source=per_source_counts(names, plan, failures),
        removed=list(plan.removed),
        failed_sources=failed_sources,
        quarantined=[{"key": f.key, "stage": f.stage, "error_type": f.error_type, "message": f.message}
                     for f in failures],
        batches=len(batches), batches_failed=done.batches_failed, shards_written=done.shards,
        points_written=done.points, segments_written=done.segments, gc=gc_report,
        elapsed_s={k: round(v, 3) for k, v in elapsed.items()},
        worker_s={k: round(v, 3) for k, v in done.worker_s.items()},
        scenes_per_s=round(len(done.committed) / max(elapsed["build"] + elapsed["commit"], 1e-9), 3),
    )


# ----------------------------------------------------------------------------- CLI (no Prefect)


def add_build_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The build options shared by this CLI and ``python -m flows.build_dataset``."""
    from pipelines.image_groups import DEFAULT_MIN_CORRESPONDENCES

    p.add_argument("--store", required=True, help="output store (path or fsspec URL)")
    p.add_argument("--source", action="append", default=[], metavar="KIND:PATH[:k=v,...]",
                   help="a source, repeatable; options name=, frame_gap= and adapter options, "
                        "e.g. synthetic:data/synthetic:num_scenes=4,seed=0 (none: refresh every source "
                        "the store records)")
    p.add_argument("--prune", action="store_true",
                   help="also stop listing scenes this build does not find (sources not named, scenes gone "
                        "from their source); without it a build only adds and updates")
    p.add_argument("--frame-gap", type=int, default=None)
    p.add_argument("--eps", type=float, default=SceneSettings.eps)
    p.add_argument("--max-image-side", type=int, default=None)
    p.add_argument("--min-correspondences", type=int, default=DEFAULT_MIN_CORRESPONDENCES)
    p.add_argument("--scenes-per-task", type=int, default=4)
    p.add_argument("--shard-size", type=int, default=4)
    p.add_argument("--render-backend", default="auto")
    p.add_argument("--gc-grace-seconds", type=float, default=3600.0)
    p.add_argument("--no-progress", action="store_true")
    return p


def settings_of(args: argparse.Namespace) -> SceneSettings:
    return SceneSettings(eps=args.eps, min_correspondences=args.min_correspondences,
                         max_image_side=args.max_image_side, render_backend=args.render_backend)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.build_run",
                                description="Build a shard store without Prefect (in this process or a process pool).")
    add_build_args(p)
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: build in this process)")
    args = p.parse_args(argv)
    try:
        specs = [SourceSpec.parse(s) for s in args.source]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    kw = dict(settings=settings_of(args), frame_gap=args.frame_gap, scenes_per_task=args.scenes_per_task,
              shard_size=args.shard_size, gc_grace_seconds=args.gc_grace_seconds, progress=not args.no_progress,
              prune=args.prune)
    try:
        if args.workers > 0:
            with cf.ProcessPoolExecutor(args.workers) as pool:
                summary = run_build(args.store, specs, executor=pool, **kw)
        else:
            summary = run_build(args.store, specs, **kw)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.as_dict(), indent=1))
    return 0


if __name__ == "__main__":
    # Re-import under the package name so worker processes unpickle the steps
    # by reference to pipelines.build_run, not to this __main__ module.
    from pipelines.build_run import main as _main

    sys.exit(_main())
