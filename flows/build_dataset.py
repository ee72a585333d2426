"""The ``build-dataset`` flow: scene datasets -> a versioned Zarr shard store.

Stages (Prefect tasks; the work itself lives in ``pipelines.build``):

1. ``discover-scenes`` per source (on Dask): list scenes with content hashes.
2. ``plan-build``: compare with the store's latest *manifest* (not Prefect's
   cache, so deleting the store really rebuilds); committed scenes with the
   same hash are skipped.
3. ``build-batch`` per batch of ``scenes_per_task`` scenes (on Dask): load ->
   complete depth -> process_scene -> shards written straight into the store;
   a failing scene is caught and reported, not raised.
4. ``commit-batch`` in the flow, serially, as each batch finishes: a new
   manifest version lists that batch's shards. A build killed at any point keeps
   every committed batch; a re-run skips those scenes, and the unlisted shards
   of unfinished batches are ignored by readers and removed by ``gc``.
5. ``commit-removals``: scenes that left the build stop being listed. The
   ``sources`` of a run define the dataset: scenes of a source left out of the
   run (or no longer found by its adapter) leave the new manifest version
   (older versions still list them). A source whose discovery fails keeps its
   scenes listed.

Failed scenes go to ``<store>/reports/quarantine.json``; each run writes a
summary to ``<store>/reports/build-v*.json`` and returns it.

Local mode (no server): ``python -m flows.build_dataset --store S --source synthetic:PATH[:k=v,...]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Optional

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from prefect import flow, get_run_logger, task
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel, Field

from pipelines.build import (
    STAGES,
    BatchItem,
    BatchResult,
    SceneSettings,
    SourceSpec,
    absolute_location,
    commit_batch,
    commit_removals,
    default_frame_gap,
    fold_frame_gap,
    failure_of,
    is_transient,
    make_batches,
    plan_build,
)
from pipelines.build import build_batch as run_batch
from pipelines.quarantine import SceneFailure, refresh_after_discovery, update_quarantine, write_build_report
from pipelines.image_groups import DEFAULT_MIN_CORRESPONDENCES
from pipelines.store import Plan, gc
from preprocess.geometry import DEPTH_EPS
from preprocess.sources.base import SceneRef

LOCAL_CLUSTER = dict(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1")
RETRIES = 3
BACKOFF_S = 2.0  # first retry after 2 s, then 4 s, 8 s


class SourceParam(BaseModel):
    """One source of the build (``preprocess.sources.make_source`` arguments)."""

    kind: str = Field(description="adapter kind, e.g. synthetic, scannet, s3dis")
    path: str = Field(description="dataset root folder")
    name: Optional[str] = Field(default=None, description="name used in scene keys (default: kind)")
    options: dict[str, Any] = Field(default_factory=dict, description="adapter options")
    frame_gap: Optional[int] = Field(default=None, ge=1, description="overrides the flow-wide frame_gap")


def make_task_runner(dask_address: str | None, worker_env: dict[str, str] | None = None) -> DaskTaskRunner:
    """Dask at ``dask_address``, or a fresh LocalCluster of 2 single-threaded
    worker processes on loopback whose environment gets ``worker_env``."""
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs=dict(LOCAL_CLUSTER, env=dict(worker_env or {})))


@contextmanager
def same_api_for_workers():
    """Make the API this flow run talks to explicit in the settings (and return
    it). In local mode the run's temporary server is not in the settings, so
    each Dask worker would start a temporary server of its own (tens of seconds
    each) and its task runs would land in a different database."""
    ctx = FlowRunContext.get()
    api = str(ctx.client.api_url).rstrip("/") if ctx is not None else None
    if not api:
        yield None
        return
    with temporary_settings(updates={PREFECT_API_URL: api}):
        yield api


def _retry_if_transient(task, task_run, state) -> bool:
    """Retry only errors that may pass (I/O hiccups, timeouts), not bad input."""
    exc = state.data if isinstance(state.data, BaseException) else None
    cause = getattr(exc, "__cause__", None)
    return exc is not None and (is_transient(exc) or (cause is not None and is_transient(cause))
                                or type(exc).__name__ == "TransientBatchError")


_task_options = dict(
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_S),
    retry_condition_fn=_retry_if_transient,
)


@task(name="discover-scenes", task_run_name="discover-{spec.source_name}", **_task_options)
def discover_scenes(spec: SourceSpec) -> list[SceneRef]:
    """List one source's scenes (cheap; no heavy loading)."""
    t = time.perf_counter()
    refs = spec.make().discover()
    get_run_logger().info("source '%s' (%s at %s): %d scenes in %.1f s", spec.source_name, spec.kind, spec.path,
                          len(refs), time.perf_counter() - t)
    return refs


@task(name="build-batch", task_run_name="build-batch-{index:04d}", **_task_options)
def build_batch(index: int, store: str, items: list[BatchItem], settings: SceneSettings, shard_size: int) -> BatchResult:
    """Build one batch into shards in the store (unlisted until committed)."""
    logger = get_run_logger()
    t = time.perf_counter()

    def on_scene(key: str, outcome: str) -> None:
        logger.info("%s: %s", key, outcome)

    result = run_batch(store, items, settings, shard_size, on_scene=on_scene)
    dt = time.perf_counter() - t
    logger.info("batch %d: %d scenes -> %d shards, %d failed, %d points, %d segments in %.1f s (%.2f scenes/s)",
                index, len(items), len(result.shards), len(result.failures), result.points, result.segments,
                dt, len(items) / max(dt, 1e-9))
    return result


@task(name="collect-garbage", cache_policy=NO_CACHE, persist_result=False)
def collect_garbage(store: str, grace_seconds: float) -> dict:
    """Remove shards no manifest lists (left by killed or failed batches) once
    they are older than ``grace_seconds`` (younger ones may belong to a
    concurrent writer about to commit)."""
    rep = gc(store, keep_last=None, min_age_s=grace_seconds)
    if rep.removed_shards:
        get_run_logger().info("gc: removed %d unlisted shards", len(rep.removed_shards))
    return {"removed_shards": len(rep.removed_shards), "removed_temp_files": len(rep.removed_temp_files)}


@task(name="plan-build", cache_policy=NO_CACHE, persist_result=False)
def plan_task(store: str, refs: list[SceneRef], sources: list[str], failed_sources: list[str]) -> Plan:
    plan = plan_build(store, refs, sources, failed_sources)
    get_run_logger().info(plan.summary())
    return plan


@task(name="commit-batch", task_run_name="commit-batch-{index:04d}", cache_policy=NO_CACHE, persist_result=False)
def commit_task(index: int, store: str, result: BatchResult, failures: list[SceneFailure]) -> int | None:
    """List a finished batch's shards in a new manifest version and update the
    quarantine report (scenes committed leave it, failed ones enter it)."""
    version = commit_batch(store, result.shards, note=f"build-dataset batch {index}") if result.shards else None
    update_quarantine(store, failures, resolved=result.scene_keys, manifest_version=version)
    return version


@task(name="commit-removals", cache_policy=NO_CACHE, persist_result=False)
def removals_task(store: str, removed: list[str]) -> int | None:
    version = commit_removals(store, removed)
    if version is not None:
        get_run_logger().info("v%d: %d scenes that left the build are no longer listed", version, len(removed))
    return version


def _frame_gap_of(spec: SourceSpec, frame_gap: int | None) -> int:
    if spec.frame_gap is not None:
        return spec.frame_gap
    return int(frame_gap) if frame_gap is not None else default_frame_gap(spec.kind)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="build-dataset", unit="scene", file=sys.stderr)


@flow(name="build-dataset", persist_result=False, validate_parameters=True)
def build_dataset(
    sources: list[SourceParam],
    store: str,
    frame_gap: Optional[int] = None,
    eps: float = DEPTH_EPS,
    max_image_side: Optional[int] = None,
    min_correspondences: int = DEFAULT_MIN_CORRESPONDENCES,
    scenes_per_task: int = 4,
    shard_size: int = 4,
    dask_address: Optional[str] = None,
    render_backend: str = "auto",
    gc_grace_seconds: float = 3600.0,
    progress: bool = False,
) -> dict:
    """Build or update the shard store ``store`` from ``sources``; returns the
    run summary (also written to ``<store>/reports/``).

    frame_gap: every n-th frame is a candidate image (None: per source kind,
    scannet 75, scannetpp 20, arkitscenes 50, s3dis 5, others 1). eps: depth
    test tolerance in metres. shard_size: scenes per shard. dask_address: a
    running Dask scheduler, None for a local cluster of 2 worker processes.
    gc_grace_seconds: unlisted shards older than this are deleted at start.
    """
    logger = get_run_logger()
    t_start = time.perf_counter()
    elapsed: dict[str, float] = {}
    store = absolute_location(store)
    specs, gap_of = [], {}
    for param in sources:
        spec = SourceSpec.from_dict(param.model_dump() if isinstance(param, BaseModel) else dict(param))
        spec, gap_of[spec.source_name] = fold_frame_gap(spec, _frame_gap_of(spec, frame_gap))
        specs.append(spec)
    names = [s.source_name for s in specs]
    if not specs:
        raise ValueError("build-dataset: 'sources' is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"build-dataset: source names must be unique, got {names}; give one a 'name'")
    for pname, value in (("scenes_per_task", scenes_per_task), ("shard_size", shard_size)):
        if value < 1:
            raise ValueError(f"build-dataset: {pname} must be >= 1, got {value}")
    if not eps > 0:
        raise ValueError(f"build-dataset: eps must be > 0 (metres), got {eps}")
    settings = SceneSettings(eps=eps, min_correspondences=min_correspondences,
                             max_image_side=max_image_side, render_backend=render_backend)

    t = time.perf_counter()
    gc_report = collect_garbage(store, gc_grace_seconds)
    elapsed["gc"] = time.perf_counter() - t

    failures: list[SceneFailure] = []
    summary: dict[str, Any] = {"store": store, "sources": names}
    with same_api_for_workers() as api, make_task_runner(dask_address, {"PREFECT_API_URL": api} if api else None) as runner:
        # 1. discover, one task per source
        t = time.perf_counter()
        futures = {spec: runner.submit(discover_scenes, parameters={"spec": spec}) for spec in specs}
        refs_of: dict[SourceSpec, list[SceneRef]] = {}
        failed_sources: list[str] = []
        for spec, fut in futures.items():
            try:
                refs_of[spec] = fut.result()
            except Exception as exc:  # the source as a whole is unusable: report it, build the rest
                failed_sources.append(spec.source_name)
                failures.append(SceneFailure.of(f"{spec.source_name}/*", spec.source_name, "*", "", "discover", exc))
                logger.error("source '%s' failed discovery: %s: %s", spec.source_name, type(exc).__name__, exc)
        all_refs = [r for refs in refs_of.values() for r in refs]
        refresh_after_discovery(store, failures, [s.source_name for s in refs_of], [r.key for r in all_refs])
        elapsed["discover"] = time.perf_counter() - t

        # 2. plan against the latest manifest
        t = time.perf_counter()
        plan = plan_task(store, all_refs, names, failed_sources)
        spec_of = {r.key: spec for spec, refs in refs_of.items() for r in refs}
        items = [BatchItem(spec_of[r.key], r, gap_of[spec_of[r.key].source_name]) for r in plan.to_process]
        batches = make_batches(items, scenes_per_task)
        elapsed["plan"] = time.perf_counter() - t
        logger.info("%d scenes to build in %d batches of <= %d (skipping %d already committed)",
                    len(items), len(batches), scenes_per_task, len(plan.unchanged))

        # 3.+4. build batches on Dask, commit each one as it finishes
        t = time.perf_counter()
        worker_s = {s: 0.0 for s in STAGES}
        commit_s = 0.0
        version = plan.base_version
        committed: list[str] = []
        shards_written = points = segments = batches_failed = 0
        bar = _progress_bar(len(items), progress)
        batch_futures = {
            runner.submit(build_batch, parameters=dict(index=i, store=store, items=batch, settings=settings,
                                                       shard_size=shard_size)): (i, batch)
            for i, batch in enumerate(batches)
        }
        for done, fut in enumerate(as_completed(list(batch_futures)), start=1):
            index, batch = batch_futures[fut]
            try:
                result: BatchResult = fut.result()
            except Exception as exc:  # retries exhausted or the worker died: its scenes are quarantined
                batches_failed += 1
                result = BatchResult(failures=[failure_of(it, "batch", exc) for it in batch])
                logger.error("batch %d failed after retries: %s: %s", index, type(exc).__name__, exc)
            tc = time.perf_counter()
            v = commit_task(index, store, result, result.failures)
            commit_s += time.perf_counter() - tc
            version = v if v is not None else version
            failures.extend(result.failures)
            committed.extend(result.scene_keys)
            shards_written += len(result.shards)
            points += result.points
            segments += result.segments
            for s in STAGES:
                worker_s[s] += result.timings.get(s, 0.0)
            rate = len(committed) / max(time.perf_counter() - t, 1e-9)
            logger.info("batch %d/%d committed%s: %d scenes ok, %d failed; total %d/%d scenes (%.2f scenes/s)",
                        done, len(batches), f" as v{v}" if v is not None else " (nothing to list)",
                        len(result.scene_keys), len(result.failures), len(committed), len(items), rate)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        elapsed["build"] = time.perf_counter() - t - commit_s
        elapsed["commit"] = commit_s

    # 5. scenes that left the build
    t = time.perf_counter()
    removed_version = removals_task(store, plan.removed) if plan.removed else None
    version = removed_version if removed_version is not None else version
    elapsed["remove"] = time.perf_counter() - t
    elapsed["total"] = time.perf_counter() - t_start

    summary.update({
        "manifest_version": version,
        "base_version": plan.base_version,
        "scenes": {
            "discovered": len(all_refs),
            "skipped": len(plan.unchanged),
            "new": len(plan.new),
            "changed": len(plan.changed),
            "processed": len(committed),
            "quarantined": len(failures),
            "removed": len(plan.removed),
        },
        "failed_sources": failed_sources,
        "quarantined": [{"key": f.key, "stage": f.stage, "error_type": f.error_type, "message": f.message}
                        for f in failures],
        "batches": len(batches),
        "batches_failed": batches_failed,
        "shards_written": shards_written,
        "points_written": points,
        "segments_written": segments,
        "gc": gc_report,
        "elapsed_s": {k: round(v, 3) for k, v in elapsed.items()},
        "worker_s": {k: round(v, 3) for k, v in worker_s.items()},
        "scenes_per_s": round(len(committed) / max(elapsed["build"] + elapsed["commit"], 1e-9), 3),
    })
    summary["report"] = write_build_report(store, summary)
    logger.info("build-dataset done: v%s, %d discovered, %d skipped, %d processed, %d quarantined, %d shards, %.1f s",
                version, len(all_refs), len(plan.unchanged), len(committed), len(failures), shards_written,
                elapsed["total"])
    return summary


# ----------------------------------------------------------------------------- CLI (local mode)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m flows.build_dataset",
        description="Run the build-dataset flow in Prefect's local mode (no server needed).",
    )
    p.add_argument("--store", required=True, help="output store (path or fsspec URL)")
    p.add_argument("--source", action="append", required=True, metavar="KIND:PATH[:k=v,...]",
                   help="a source, repeatable; options name=, frame_gap= and adapter options, "
                        "e.g. synthetic:data/synthetic:num_scenes=4,seed=0")
    p.add_argument("--frame-gap", type=int, default=None)
    p.add_argument("--eps", type=float, default=DEPTH_EPS)
    p.add_argument("--max-image-side", type=int, default=None)
    p.add_argument("--min-correspondences", type=int, default=DEFAULT_MIN_CORRESPONDENCES)
    p.add_argument("--scenes-per-task", type=int, default=4)
    p.add_argument("--shard-size", type=int, default=4)
    p.add_argument("--dask-address", default=None)
    p.add_argument("--render-backend", default="auto")
    p.add_argument("--gc-grace-seconds", type=float, default=3600.0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        specs = [SourceSpec.parse(s) for s in args.source]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = build_dataset(
        sources=[SourceParam(kind=s.kind, path=s.path, name=s.name, options=s.options, frame_gap=s.frame_gap)
                 for s in specs],
        store=args.store,
        frame_gap=args.frame_gap,
        eps=args.eps,
        max_image_side=args.max_image_side,
        min_correspondences=args.min_correspondences,
        scenes_per_task=args.scenes_per_task,
        shard_size=args.shard_size,
        dask_address=args.dask_address,
        render_backend=args.render_backend,
        gc_grace_seconds=args.gc_grace_seconds,
        progress=not args.no_progress,
    )
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    # Re-import under the package name so Dask workers unpickle the tasks by
    # reference to flows.build_dataset, not to this __main__ module.
    from flows.build_dataset import main as _main

    sys.exit(_main())
