"""The steps ``run_build`` calls, each taking the build's ``BuildOptions`` whole.

``discover`` and ``build_batch`` go through the executor (they must pickle for
a process pool or Dask); the others run in the driver, in order.
``flows/build_dataset.py`` passes the same steps wrapped as Prefect tasks
(``BuildSteps``), so the flow and a plain call share one loop.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from pipelines.build.batch import BatchItem, BatchResult, build_batch
from pipelines.build.commit import commit_batch, commit_complete, commit_removals
from pipelines.build.options import BuildOptions, SourceSpec
from pipelines.build.plan import plan_build
from pipelines.build.retry import call_with_retries
from pipelines.quarantine import update_quarantine
from pipelines.store import Plan, gc
from preprocess.sources.base import SceneRef
from preprocess.sources.hash_cache import stat_hash_cache

log = logging.getLogger("pipelines.build")


def discover_step(options: BuildOptions, spec: SourceSpec, logger: logging.Logger | None = None) -> list[SceneRef]:
    """List one source's scenes (cheap; no heavy loading). With a local store,
    files whose stat did not change since the last run are not hashed again
    (``<store>/cache/file_hashes-<source>.json``, see ``preprocess.sources.hash_cache``)."""
    t = time.perf_counter()
    loc = options.store
    cache = contextlib.nullcontext()
    if loc.is_local:
        cache = stat_hash_cache(Path(loc.path("cache", f"file_hashes-{spec.source_name}.json")))
    with cache:
        refs = spec.make().discover()
    (logger or log).info("source '%s' (%s at %s): %d scenes in %.1f s", spec.source_name, spec.kind, spec.path,
                         len(refs), time.perf_counter() - t)
    return refs


def build_batch_step(options: BuildOptions, index: int, items: list[BatchItem],
                     logger: logging.Logger | None = None) -> BatchResult:
    """Build one batch into shards in the store (unlisted until committed)."""
    logger = logger or log
    t = time.perf_counter()
    result = build_batch(options.store, items, options.settings, options.shard_size,
                         on_scene=lambda key, outcome: logger.info("%s: %s", key, outcome))
    dt = time.perf_counter() - t
    logger.info("batch %d: %d scenes -> %d shards, %d failed, %d points, %d image groups in %.1f s (%.2f scenes/s)",
                index, len(items), len(result.shards), len(result.failures), result.points, result.image_groups,
                dt, len(items) / max(dt, 1e-9))
    return result


def gc_step(options: BuildOptions, logger: logging.Logger | None = None) -> dict:
    """Remove shards no manifest lists (left by killed or failed batches) once
    they are older than ``gc_grace_seconds`` (younger ones may belong to a
    concurrent writer about to commit)."""
    rep = gc(options.store, keep_last=None, min_age_s=options.gc_grace_seconds)
    if rep.removed_shards:
        (logger or log).info("gc: removed %d unlisted shards", len(rep.removed_shards))
    return {"removed_shards": len(rep.removed_shards), "removed_temp_files": len(rep.removed_temp_files)}


def plan_step(options: BuildOptions, refs: list[SceneRef], failed_sources: list[str],
              logger: logging.Logger | None = None) -> Plan:
    plan = plan_build(options.store, refs, options.source_names, failed_sources, prune=options.prune)
    (logger or log).info(plan.summary())
    return plan


def commit_step(options: BuildOptions, index: int, result: BatchResult, records: dict | None = None) -> int | None:
    """List a finished batch's shards in a new ("partial") manifest version and
    update the quarantine (scenes committed leave it, failed ones enter it)."""
    store = options.store
    version = commit_batch(store, result.shards, note=f"build-dataset batch {index}", run_id=options.run_id,
                           sources=records) if result.shards else None
    update_quarantine(store, result.failures, resolved=result.scene_keys, manifest_version=version)
    return version


def removals_step(options: BuildOptions, removed: list[str], drop_sources: Sequence[str] = (),
                  logger: logging.Logger | None = None) -> int | None:
    version = commit_removals(options.store, removed, run_id=options.run_id, drop_sources=drop_sources)
    if version is not None:
        (logger or log).warning("v%d: pruned %d scenes this build did not find: %s", version, len(removed),
                                ", ".join(removed[:20]) + (" ..." if len(removed) > 20 else ""))
    return version


def finish_step(options: BuildOptions, records: dict, logger: logging.Logger | None = None) -> int:
    version = commit_complete(options.store, options.run_id, records)
    (logger or log).info("v%d: run %s complete (readers open this version)", version, options.run_id)
    return version


@dataclass(frozen=True)
class BuildSteps:
    """The steps ``run_build`` calls (the flow passes Prefect tasks here)."""

    discover: Callable[..., list[SceneRef]] = partial(call_with_retries, discover_step)
    build_batch: Callable[..., BatchResult] = partial(call_with_retries, build_batch_step)
    gc: Callable[..., dict] = gc_step
    plan: Callable[..., Plan] = plan_step
    commit: Callable[..., int | None] = commit_step
    remove: Callable[..., int | None] = removals_step
    finish: Callable[..., int] = finish_step
