"""The build's command line (no Prefect): ``python -m pipelines.build --store S
--source kind:path[:k=v,...] [--workers N]``.

``add_build_args`` and ``build_params`` are shared with ``python -m
flows.build_dataset``: each argument's ``dest`` is the ``BuildOptions`` name
(and the flow's parameter), its default comes from ``BuildOptions``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import sys
import traceback

from pipelines.build.options import BuildOptions, SceneSettings, SourceSpec
from pipelines.build.run import quiet_abandoned_writes, run_build, stop_message


def add_build_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The build options (see ``BuildOptions``), as ``--dashed-names``."""
    p.add_argument("--store", required=True, help="output store (path or fsspec URL)")
    p.add_argument("--source", dest="sources", type=_source, action="append", default=[],
                   metavar="KIND:PATH[:k=v,...]",
                   help="a source, repeatable; options name=, frame_gap= and adapter options, "
                        "e.g. synthetic:data/synthetic:num_scenes=4,seed=0 (none: refresh every source "
                        "the store records)")
    p.add_argument("--prune", action="store_true",
                   help="also stop listing scenes this build does not find (sources not named, scenes gone "
                        "from their source); without it a build only adds and updates")
    p.add_argument("--frame-gap", type=int, default=BuildOptions.frame_gap)
    p.add_argument("--eps", type=float, default=SceneSettings.eps)
    p.add_argument("--max-image-side", type=int, default=SceneSettings.max_image_side)
    p.add_argument("--min-correspondences", type=int, default=SceneSettings.min_correspondences)
    p.add_argument("--scenes-per-task", type=int, default=BuildOptions.scenes_per_task)
    p.add_argument("--shard-size", type=int, default=BuildOptions.shard_size)
    p.add_argument("--render-backend", default=SceneSettings.render_backend)
    p.add_argument("--gc-grace-seconds", type=float, default=BuildOptions.gc_grace_seconds)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _source(text: str) -> SourceSpec:
    try:
        return SourceSpec.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_params(args: argparse.Namespace) -> dict:
    """The ``BuildOptions.from_params`` arguments among parsed arguments."""
    names = BuildOptions.param_names()
    return {k: v for k, v in vars(args).items() if k in names}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.build",
                                description="Build a shard store without Prefect (in this process or a process pool).")
    add_build_args(p)
    p.add_argument("--workers", type=int, default=0, help="worker processes (0: build in this process)")
    args = p.parse_args(argv)
    try:
        options = BuildOptions.from_params(**build_params(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.workers > 0:
            with cf.ProcessPoolExecutor(args.workers) as pool:
                summary = run_build(options, executor=pool)
        else:
            summary = run_build(options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the store went away, a worker died: one line, what is kept
        message, io_error = stop_message(options.store, exc)
        if not io_error:  # may be a bug: keep its traceback
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        quiet_abandoned_writes()
        return 3
    print(json.dumps(summary.as_dict(), indent=1))
    if summary.failed_sources:
        lost = "; ".join(q["message"] for q in summary.quarantined if q["stage"] == "discover")
        print(f"error: {len(summary.failed_sources)} source(s) could not be read, their scenes were not built: "
              f"{lost}", file=sys.stderr)
        return 3
    return 0
