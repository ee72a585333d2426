"""A whole build, without Prefect: ``run_build(BuildOptions(store=..., sources=...), executor=...)``.

The loop: collect garbage -> discover each source -> plan against the latest
manifest -> cut batches -> build the batches through ``executor`` (see
``pipelines.build.executors``) -> commit each finished batch serially (a killed
build keeps every committed batch) -> commit removals -> write the build report.
The steps it calls are ``pipelines.build.steps``; ``flows/build_dataset.py``
passes the same steps wrapped as Prefect tasks and a Prefect-backed executor.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

from pipelines.build.batch import STAGES, BatchItem, BatchResult, failure_of
from pipelines.build.executors import Executor, SerialExecutor, as_completed_any
from pipelines.build.options import BuildOptions, SourceSpec
from pipelines.build.plan import make_batches, recorded_sources, source_specs
from pipelines.build.retry import is_transient
from pipelines.build.steps import BuildSteps
from pipelines.quarantine import SceneFailure, refresh_after_discovery, write_build_report
from pipelines.store import Plan, latest_version, load_manifest
from pipelines.store.lease import build_lease
from preprocess.sources.base import SceneRef

log = logging.getLogger("pipelines.build")


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
    image_groups_written: int = 0
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


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="build-dataset", unit="scene", file=sys.stderr)


def discover_sources(options: BuildOptions, specs: Sequence[SourceSpec], executor: Executor, discover: Callable,
                     logger: logging.Logger) -> tuple[dict[SourceSpec, list[SceneRef]], list[SceneFailure]]:
    """{spec: refs} of the sources whose discovery worked, and a "source/*"
    failure for each one that did not (the build goes on without it). Updates
    the quarantine report (see ``refresh_after_discovery``)."""
    futures = {spec: executor.submit(discover, options, spec) for spec in specs}
    refs_of: dict[SourceSpec, list[SceneRef]] = {}
    failures: list[SceneFailure] = []
    for spec, fut in futures.items():
        try:
            refs_of[spec] = fut.result()
        except Exception as exc:  # the source as a whole is unusable: report it, build the rest
            failures.append(SceneFailure.of(f"{spec.source_name}/*", spec.source_name, "*", "", "discover", exc))
            logger.error("source '%s' failed discovery: %s: %s", spec.source_name, type(exc).__name__, exc)
    refresh_after_discovery(options.store, failures, [s.source_name for s in refs_of],
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
    image_groups: int = 0
    batches_failed: int = 0
    commit_s: float = 0.0


def build_and_commit(options: BuildOptions, batches: list[list[BatchItem]], executor: Executor,
                     as_completed: Callable, steps: BuildSteps, logger: logging.Logger, bar=None,
                     records: dict | None = None) -> _Progress:
    """Submit every batch to ``executor`` and commit each one, serially, as it
    finishes. A batch that raises (retries exhausted, worker died) has all its
    scenes quarantined with stage "batch"."""
    t = time.perf_counter()
    n_items = sum(len(b) for b in batches)
    done = _Progress(version=None)
    batch_futures = {executor.submit(steps.build_batch, options, i, batch): (i, batch)
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
        v = steps.commit(options, index, result, records)
        done.commit_s += time.perf_counter() - tc
        done.version = v if v is not None else done.version
        done.failures.extend(result.failures)
        done.committed.extend(result.scene_keys)
        done.shards += len(result.shards)
        done.points += result.points
        done.image_groups += result.image_groups
        for s in STAGES:
            done.worker_s[s] += result.timings.get(s, 0.0)
        rate = len(done.committed) / max(time.perf_counter() - t, 1e-9)
        logger.info("batch %d/%d committed%s: %d scenes ok, %d failed; total %d/%d scenes (%.2f scenes/s)",
                    n_done, len(batches), f" as v{v}" if v is not None else " (nothing to list)",
                    len(result.scene_keys), len(result.failures), len(done.committed), n_items, rate)
        if bar is not None:
            bar.update(len(batch))
    return done


def per_source_counts(names: Sequence[str], plan: Plan, failures: Sequence[SceneFailure]) -> dict[str, dict[str, int]]:
    """{source: {new, unchanged, updated, removed, failed}} for the run summary:
    new and updated count the scenes that landed, a planned scene that failed
    counts under failed only."""
    out = {n: dict(new=0, unchanged=0, updated=0, removed=0, failed=0) for n in names}
    failed = {f.key for f in failures}

    def add(key: str, what: str):
        out.setdefault(key.split("/", 1)[0], dict(new=0, unchanged=0, updated=0, removed=0, failed=0))[what] += 1

    for r in plan.new:
        if r.key not in failed:
            add(r.key, "new")
    for r in plan.changed:
        if r.key not in failed:
            add(r.key, "updated")
    for k in plan.unchanged:
        add(k, "unchanged")
    for k in plan.removed:
        add(k, "removed")
    for f in failures:
        add(f.key, "failed")
    return out


def run_build(options: BuildOptions, *, executor: Executor | None = None,
              as_completed: Callable[[list], Iterable] | None = None, steps: BuildSteps = BuildSteps(),
              logger: logging.Logger | None = None) -> BuildSummary:
    """Build or update the shard store ``options.store`` from ``options.sources``
    (see ``BuildOptions``); returns the summary, also written to ``<store>/reports/``.

    Adding is the default: the run adds and updates the scenes of the sources it
    names and keeps every other scene listed; no sources refreshes every source
    the store records. ``prune`` also stops listing the scenes this run did not
    find (other sources, scenes gone from their source), except those of a
    source whose discovery failed; the summary lists them. One build at a time
    per store (``build_lease``); each finished batch is a "partial" manifest
    version (a killed build resumes from them) and the run ends with a
    "complete" one, recording ``run_id``. Failed scenes go to the quarantine.
    Without storage options fsspec/boto read the usual environment variables
    and config files."""
    logger = logger or log
    if not options.sources:
        options = replace(options, sources=recorded_sources(options.store))
    specs, gap_of, records = source_specs(options)
    executor = executor if executor is not None else SerialExecutor()
    as_completed = as_completed or getattr(executor, "as_completed", None) or as_completed_any
    with build_lease(options.store, options.run_id):
        names = options.source_names
        t_start = time.perf_counter()
        elapsed: dict[str, float] = {}
        t = time.perf_counter()
        gc_report = steps.gc(options)
        elapsed["gc"] = time.perf_counter() - t

        # 1. discover, one call per source
        t = time.perf_counter()
        refs_of, discover_failures = discover_sources(options, specs, executor, steps.discover, logger)
        failed_sources = [s.source_name for s in specs if s not in refs_of]
        records = {n: r for n, r in records.items() if n not in failed_sources}  # recorded once discovery works
        all_refs = [r for refs in refs_of.values() for r in refs]
        elapsed["discover"] = time.perf_counter() - t

        # 2. plan against the latest manifest
        t = time.perf_counter()
        plan = steps.plan(options, all_refs, failed_sources)
        spec_of = {r.key: spec for spec, refs in refs_of.items() for r in refs}
        items = [BatchItem(spec_of[r.key], r, gap_of[spec_of[r.key].source_name]) for r in plan.to_process]
        batches = make_batches(items, options.scenes_per_task)
        elapsed["plan"] = time.perf_counter() - t
        logger.info("%d scenes to build in %d batches of <= %d (skipping %d already committed)",
                    len(items), len(batches), options.scenes_per_task, len(plan.unchanged))

        # 3.+4. build batches through the executor, commit each one as it finishes
        t = time.perf_counter()
        bar = _progress_bar(len(items), options.progress)
        done = build_and_commit(options, batches, executor, as_completed, steps, logger, bar, records)
        if bar is not None:
            bar.close()
        elapsed["build"] = time.perf_counter() - t - done.commit_s
        elapsed["commit"] = done.commit_s

        # 5. prune (only when asked): scenes this build did not find
        t = time.perf_counter()
        gone = sorted({k.split("/", 1)[0] for k in plan.removed} - set(names))
        removed_version = steps.remove(options, plan.removed, gone) if plan.removed else None
        elapsed["remove"] = time.perf_counter() - t

        # 6. close the run with a complete version when it changed anything
        changed = done.version is not None or removed_version is not None
        version = finish_run(options, records, changed, steps)
        elapsed["total"] = time.perf_counter() - t_start

        summary = summarise(options, version, plan, batches, done, discover_failures, failed_sources, gc_report, elapsed)
        summary.report = write_build_report(options.store, summary.as_dict())
        logger.info("build-dataset done: v%s, %d discovered, %d skipped, %d processed, %d quarantined, %d pruned, "
                    "%d shards, %.1f s", version, summary.scenes["discovered"], len(plan.unchanged),
                    len(done.committed), len(summary.quarantined), len(plan.removed), done.shards, elapsed["total"])
        return summary


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause (a store error is often wrapped by zarr, s3fs, a task runner)."""
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def stop_message(store, exc: BaseException) -> tuple[str, bool]:
    """(one line saying the build of ``store`` stopped on ``exc`` and what is kept,
    whether it is an I/O or network error: the store or a source went away)."""
    root = _root_cause(exc)
    cause = f"{type(exc).__name__}: {exc}"
    if root is not exc and str(root) not in str(exc):
        cause += f" (caused by {type(root).__name__}: {root})"
    try:
        v = latest_version(store)
        kept = f"committed batches are kept (latest manifest v{v})" if v is not None else "nothing was committed"
    except Exception:  # noqa: BLE001 - the store may be what is unreachable
        kept = "committed batches are kept"
    io_error = isinstance(root, (OSError, TimeoutError)) or is_transient(exc) or \
        type(root).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "urllib3")
    url = getattr(store, "url", store)
    # "re-run" only where waiting may help; bad input or a bug fails the same way again
    again = "; re-run the same command to resume" if io_error else ""
    return f"build of {url} stopped: {cause}; {kept}{again}", io_error


def quiet_abandoned_writes() -> None:
    """After a build stopped on an unreachable store, zarr's writes still pending
    are dropped at exit, each with a "coroutine ... was never awaited" warning
    printed after the error line; the error already says what happened."""
    import warnings

    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


def finish_run(options: BuildOptions, records: dict, changed: bool, steps: BuildSteps) -> int | None:
    """The version that ends the run: a new "complete" one when the run changed
    anything, a killed run left the latest version partial, or the source records
    changed; else the latest (a no-op run adds no version)."""
    latest = latest_version(options.store)
    if latest is None:
        return None
    last = load_manifest(options.store, latest)
    if changed or last.state != "complete" or any(last.sources.get(n) != r for n, r in records.items()):
        return steps.finish(options, records)
    return latest


def summarise(options: BuildOptions, version: int | None, plan: Plan, batches, done: _Progress,
              discover_failures, failed_sources, gc_report: dict, elapsed: dict) -> BuildSummary:
    """The run's summary (see ``BuildSummary``)."""
    names = options.source_names
    failures = discover_failures + done.failures
    return BuildSummary(
        store=options.store.url, sources=names, run_id=options.run_id, manifest_version=version, base_version=plan.base_version,
        scenes={"discovered": len(plan.new) + len(plan.changed) + len(plan.unchanged), "skipped": len(plan.unchanged),
                "new": len(plan.new), "changed": len(plan.changed), "processed": len(done.committed),
                "quarantined": len(failures), "removed": len(plan.removed)},
        per_source=per_source_counts(names, plan, failures),
        removed=list(plan.removed),
        failed_sources=failed_sources,
        quarantined=[{"key": f.key, "stage": f.stage, "error_type": f.error_type, "message": f.message}
                     for f in failures],
        batches=len(batches), batches_failed=done.batches_failed, shards_written=done.shards,
        points_written=done.points, image_groups_written=done.image_groups, gc=gc_report,
        elapsed_s={k: round(v, 3) for k, v in elapsed.items()},
        worker_s={k: round(v, 3) for k, v in done.worker_s.items()},
        scenes_per_s=round(len(done.committed) / max(elapsed["build"] + elapsed["commit"], 1e-9), 3),
    )
