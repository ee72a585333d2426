"""The ``build-dataset`` flow: scene datasets -> a versioned Zarr shard store.

Stages (Prefect tasks; the loop is ``pipelines.build.run.run_build``, the steps
are ``pipelines.build.steps``):

1. ``discover-scenes`` per source (on Dask): list scenes with content hashes.
2. ``plan-build``: compare with the store's latest *manifest* (not Prefect's
   cache, so deleting the store really rebuilds); committed scenes with the
   same hash are skipped.
3. ``build-batch`` per batch of ``scenes_per_task`` scenes (on Dask): load ->
   complete depth -> process_scene -> shards written straight into the store;
   a failing scene is caught and reported, not raised.
4. ``commit-batch`` in the flow, serially, as each batch finishes: a new
   "partial" manifest version lists that batch's shards. A build killed at any
   point keeps every committed batch; a re-run skips those scenes, and the
   unlisted shards of unfinished batches are ignored by readers and removed by
   ``gc``. Readers keep opening the last complete version meanwhile.
5. ``commit-removals``, only with ``prune``: scenes this run did not find stop
   being listed. Without it a run only adds and updates: the dataset is every
   source the store records, and a run with no sources refreshes them all.
6. ``commit-complete``: the version that ends the run (its flow-run id inside).

One run per store at a time: the store's build lease
(``pipelines.store.lease``) makes a second run wait, logging which run it waits
for. (Not a Prefect global concurrency limit: the slot of a run killed with
SIGKILL stays taken until the server's repossessor reclaims its lease, and
forever on servers that run no services, such as local mode.) Failed scenes go to ``<store>/reports/quarantine/``; each run
writes a summary to ``<store>/reports/build-v*.json``, returns it and leaves
two artifacts (the summary per source, a table of quarantined scenes); a
source whose discovery failed ends the run Failed (after the other sources'
scenes are committed), and so does a quarantined scene with ``fail_on_quarantine``.

Local mode (no server): ``python -m flows.build_dataset --store S --source synthetic:PATH[:k=v,...]``.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from contextlib import contextmanager
from typing import Any, Optional

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Failed
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel, Field, SecretStr

from pipelines.build.batch import BatchItem, BatchResult
from pipelines.build.cli import add_build_args, build_params
from pipelines.build.options import BuildOptions, SceneSettings, SourceSpec
from pipelines.build.retry import BACKOFF_S, RETRIES, is_transient
from pipelines.build.run import quiet_abandoned_writes, run_build, stop_message
from pipelines.build.steps import (
    BuildSteps,
    build_batch_step,
    commit_step,
    discover_step,
    finish_step,
    gc_step,
    plan_step,
    removals_step,
)
from pipelines.store import Plan
from preprocess.sources.base import SceneRef

LOCAL_CLUSTER = dict(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1")


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


class TaskRunnerExecutor:
    """``run_build``'s executor protocol on a Prefect task runner:
    ``submit(task, *args)`` submits a task run with those arguments."""

    def __init__(self, runner: DaskTaskRunner):
        self.runner = runner

    def submit(self, task, /, *args: Any, **kwargs: Any):
        parameters = inspect.signature(task.fn).bind(*args, **kwargs).arguments
        return self.runner.submit(task, parameters=dict(parameters))

    @staticmethod
    def as_completed(futures):
        return as_completed(futures)


def _retry_if_transient(task, task_run, state) -> bool:
    """Retry only errors that may pass (I/O hiccups, timeouts), not bad input."""
    return is_transient(state.data if isinstance(state.data, BaseException) else None)


_task_options = dict(
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_S),
    retry_condition_fn=_retry_if_transient,
)
_driver_options = dict(cache_policy=NO_CACHE, persist_result=False)


# The steps of pipelines.build.steps as Prefect tasks.
@task(name="discover-scenes", task_run_name="discover-{spec.source_name}", **_task_options)
def discover_scenes(options: BuildOptions, spec: SourceSpec) -> list[SceneRef]:
    return discover_step(options, spec, get_run_logger())


@task(name="build-batch", task_run_name="build-batch-{index:04d}", **_task_options)
def build_batch(options: BuildOptions, index: int, items: list[BatchItem]) -> BatchResult:
    return build_batch_step(options, index, items, get_run_logger())


@task(name="collect-garbage", **_driver_options)
def collect_garbage(options: BuildOptions) -> dict:
    return gc_step(options, get_run_logger())


@task(name="plan-build", **_driver_options)
def plan_task(options: BuildOptions, refs: list[SceneRef], failed_sources: list[str]) -> Plan:
    return plan_step(options, refs, failed_sources, get_run_logger())


@task(name="commit-batch", task_run_name="commit-batch-{index:04d}", **_driver_options)
def commit_task(options: BuildOptions, index: int, result: BatchResult, records: dict | None = None) -> int | None:
    return commit_step(options, index, result, records)


@task(name="commit-removals", **_driver_options)
def removals_task(options: BuildOptions, removed: list[str], drop_sources: list[str] = ()) -> int | None:
    return removals_step(options, removed, drop_sources, get_run_logger())


@task(name="commit-complete", **_driver_options)
def finish_task(options: BuildOptions, records: dict) -> int:
    return finish_step(options, records, get_run_logger())


PREFECT_STEPS = BuildSteps(discover=discover_scenes, build_batch=build_batch, gc=collect_garbage, plan=plan_task,
                           commit=commit_task, remove=removals_task, finish=finish_task)


class BuildFailed(RuntimeError):
    """The run ended Failed after committing what it could; the message names what failed."""


class QuarantineError(BuildFailed):
    """``fail_on_quarantine``: the build left scenes out."""


class SourceFailed(BuildFailed):
    """A source could not be discovered (missing folder, unreadable index): its scenes were not built."""


def summary_markdown(summary: dict) -> str:
    """The run's summary artifact: per source, scenes new/unchanged/updated/removed/failed."""
    lines = [f"# build-dataset: {summary['store']}", "",
             f"manifest version **v{summary['manifest_version']}** (from v{summary['base_version']}), run "
             f"`{summary['run_id']}`", "",
             "| source | new | unchanged | updated | removed | failed |", "|---|---|---|---|---|---|"]
    for src, c in summary["per_source"].items():
        lines.append(f"| {src} | {c['new']} | {c['unchanged']} | {c['updated']} | {c['removed']} | {c['failed']} |")
    if summary["failed_sources"]:
        lines += ["", f"sources whose discovery failed (their scenes stay listed): {', '.join(summary['failed_sources'])}"]
    if summary["removed"]:
        lines += ["", f"pruned ({len(summary['removed'])}): " + ", ".join(summary["removed"][:50])]
    return "\n".join(lines)


def publish_artifacts(summary: dict) -> None:
    create_markdown_artifact(summary_markdown(summary), key="build-summary",
                             description=f"build-dataset on {summary['store']}")
    rows = [{"scene": q["key"], "stage": q["stage"], "error": q["error_type"], "message": q["message"]}
            for q in summary["quarantined"]]
    create_table_artifact(rows or [{"scene": "-", "stage": "-", "error": "-", "message": "no scene quarantined"}],
                          key="build-quarantine", description=f"{len(rows)} quarantined scenes")


def _announce(event: str, summary: dict, message: str, logger) -> None:
    """Log ``message`` and send it as an event of the run (the message as its
    resource name, whole): ``prefect deployment run --watch`` streams a run's
    events always, its logs only when the server streams logs out."""
    if logger is not None:
        logger.error("%s", message)
    emit_event(event=event, resource={"prefect.resource.id": f"concerto.store.{summary['store']}",
                                      "prefect.resource.name": message})


def check_failures(summary: dict, fail_on_quarantine: bool, logger=None) -> Optional[BuildFailed]:
    """The error the run must end Failed with, or None: a source whose discovery failed
    (always: its scenes were not built), or, with ``fail_on_quarantine``, any
    quarantined scene. The message names each source or scene with its whole
    reason (the first 5, then how many more)."""
    report = f"; report: {summary['report']}" if summary.get("report") else ""
    lost = [q for q in summary["quarantined"] if q["stage"] == "discover"]
    if lost:
        shown = "; ".join(q["message"] for q in lost[:5]) + (f"; and {len(lost) - 5} more" if len(lost) > 5 else "")
        message = (f"{len(lost)} source(s) could not be read, their scenes were not built "
                   f"(the other sources' scenes are committed, v{summary['manifest_version']}): {shown}{report}")
        _announce("build-dataset.source-failed", summary, message, logger)
        return SourceFailed(message)
    if fail_on_quarantine and summary["quarantined"]:
        q_all = summary["quarantined"]
        shown = "; ".join(f"{q['key']} ({q['stage']}: {q['message']})" for q in q_all[:5])
        more = f"; and {len(q_all) - 5} more" if len(q_all) > 5 else ""
        message = (f"fail_on_quarantine: {len(q_all)} scenes quarantined in {summary['store']} "
                   f"(v{summary['manifest_version']}): {shown}{more}{report}")
        _announce("build-dataset.quarantined", summary, message, logger)
        return QuarantineError(message)
    return None


class BuildStopped(BuildFailed):
    """The build stopped part-way (store unreachable, a worker lost, a bug); what it committed stays."""


def stopped(options: BuildOptions, exc: BaseException, logger) -> BuildStopped:
    """``exc`` as the run's one-line error, logged once (with its traceback only
    when it is not an I/O error: then it may be a bug)."""
    message, io_error = stop_message(options.store, exc)
    logger.error("%s", message, exc_info=None if io_error else exc)
    return BuildStopped(message)


def parse_storage_options(text: SecretStr | str | None) -> dict | None:
    """The fsspec options from the secret JSON parameter; the error never echoes it."""
    if text is None:
        return None
    raw = text.get_secret_value() if isinstance(text, SecretStr) else text
    try:
        options = json.loads(raw)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise ValueError("build-dataset: storage_options must be a JSON object of fsspec options "
                         "(e.g. {\"key\": ..., \"secret\": ..., \"client_kwargs\": {\"endpoint_url\": ...}})")
    return options


@flow(name="build-dataset", persist_result=False, validate_parameters=True)
def build_dataset(
    store: str,
    sources: list[SourceParam] = [],  # noqa: B006 - pydantic copies parameter defaults
    prune: bool = BuildOptions.prune,
    fail_on_quarantine: bool = False,
    frame_gap: Optional[int] = BuildOptions.frame_gap,
    eps: float = SceneSettings.eps,
    max_image_side: Optional[int] = SceneSettings.max_image_side,
    min_correspondences: int = SceneSettings.min_correspondences,
    scenes_per_task: int = BuildOptions.scenes_per_task,
    shard_size: int = BuildOptions.shard_size,
    dask_address: Optional[str] = None,
    render_backend: str = SceneSettings.render_backend,
    gc_grace_seconds: float = BuildOptions.gc_grace_seconds,
    progress: bool = BuildOptions.progress,
    storage_options: Optional[SecretStr] = None,
) -> dict:
    """Build or update the shard store ``store`` from ``sources``; returns the
    run summary (also written to ``<store>/reports/`` and as two artifacts).
    ``pipelines.build.run.run_build`` does the work; this flow runs its steps as
    Prefect tasks, the per-source and per-batch ones on Dask, one run per store
    at a time (the store's build lease).

    Adding is the default: the named sources are added or updated, every other
    scene stays listed; no sources refreshes every source the store records.
    prune: also stop listing scenes this run did not find (listed in the
    summary). fail_on_quarantine: end Failed, naming the scenes, when any scene
    was quarantined.

    frame_gap: every n-th frame is a candidate image (None: per source kind,
    scannet 75, scannetpp 20, arkitscenes 50, s3dis 5, others 1). eps: depth
    test tolerance in metres. shard_size: scenes per shard. dask_address: a
    running Dask scheduler, None for a local cluster of 2 worker processes.
    gc_grace_seconds: unlisted shards older than this are deleted at start.
    store may be an fsspec URL (``s3://bucket/prefix``); storage_options are
    its fsspec options as JSON text (``{"key": ..., "secret": ...,
    "client_kwargs": {"endpoint_url": ...}}``), a secret parameter: passed
    as a ``pydantic.SecretStr`` the flow run records it masked, and it is
    never logged. Without it the workers read credentials from their
    environment (AWS_* variables) or fsspec config, which is also what
    deployments should use: a deployment run's parameters are stored as the
    caller sent them.
    """
    params = dict(locals())  # first thing: every parameter but the flow's own is a BuildOptions one
    del params["fail_on_quarantine"], params["dask_address"]
    ctx = FlowRunContext.get()
    options = BuildOptions.from_params(**dict(
        params, sources=[p.model_dump() if isinstance(p, BaseModel) else p for p in sources],
        storage_options=parse_storage_options(storage_options),
        run_id=f"prefect-{ctx.flow_run.id}" if ctx is not None and ctx.flow_run is not None else None))
    try:
        with same_api_for_workers() as api, \
                make_task_runner(dask_address, {"PREFECT_API_URL": api} if api else None) as runner:
            summary = run_build(options, executor=TaskRunnerExecutor(runner), steps=PREFECT_STEPS,
                                logger=get_run_logger()).as_dict()
    except Exception as exc:  # noqa: BLE001 - every way the build stops ends in one line naming it
        failure = stopped(options, exc, get_run_logger())
        return Failed(message=str(failure), data=failure)
    publish_artifacts(summary)
    failure = check_failures(summary, fail_on_quarantine, get_run_logger())
    if failure is not None:
        # A returned Failed state, not a raise: Prefect pickles a raised exception into
        # its result storage and lists it as an unnamed artifact of the run. The caller
        # of the flow still gets ``failure`` raised.
        return Failed(message=str(failure), data=failure)
    return summary


# ----------------------------------------------------------------------------- CLI (local mode)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m flows.build_dataset",
        description="Run the build-dataset flow in Prefect's local mode (no server needed).",
    )
    add_build_args(p)
    p.add_argument("--dask-address", default=None)
    p.add_argument("--fail-on-quarantine", action="store_true", help="end Failed when any scene was quarantined")
    p.add_argument("--storage-options-file", default=None, metavar="JSON",
                   help="fsspec options of the store URL (credentials, endpoint) from this JSON file; "
                        "passed as a secret parameter (default: environment variables / fsspec config)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params = dict(build_params(args), sources=[s.as_dict() for s in args.sources])
    try:
        # bad options (an unknown source kind, ...) are refused before a Prefect server or cluster starts
        BuildOptions.from_params(**params)
        secret = SecretStr(open(args.storage_options_file).read()) if args.storage_options_file else None
        summary = build_dataset(**params, fail_on_quarantine=args.fail_on_quarantine, dask_address=args.dask_address,
                                storage_options=secret)
    except (ValueError, OSError, BuildFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, BuildStopped):
            quiet_abandoned_writes()
        return 3 if isinstance(exc, BuildFailed) else 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    # Re-import under the package name so Dask workers unpickle the tasks by
    # reference to flows.build_dataset, not to this __main__ module.
    from flows.build_dataset import main as _main

    sys.exit(_main())
