"""Build throughput: scenes/s of the build-dataset work, serial vs on Dask.

Baseline: ``pipelines.build.batch.build_batch`` over every batch in this process, one
after the other. Measured against it in the same run:
- dask: the same batches on a LocalCluster (2 single-threaded worker
  processes, warmed up first), committed serially as they finish, which is
  what the flow does minus Prefect;
- flow (``--flow``): the whole Prefect flow in local mode, cluster start and
  Prefect overhead included.

    python benchmarks/bench_build.py [--scenes 8] [--scenes-per-task 2] [--flow]
    python benchmarks/bench_build.py --noop [--scenes 32] [--flow]

``--noop``: the cost of a re-run with nothing to do. Discovery of the unchanged
source is timed three ways in the same run: without the stat cache (every
content hash re-reads the files: the baseline), with a cold cache, and with the
cache warm (the no-op case, goal <= 1 ms per scene); with ``--flow`` the flow is
then run twice on one store and the second (no-op) run's wall time is split
into our own work inside the flow (its ``elapsed_s`` stages) and the rest
(Prefect start-up, the local server, task runner and cluster set-up). Ends
with one JSON line for warm-cache discovery ms per scene.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import flows  # noqa: F401  (Prefect defaults before prefect is imported)
from pipelines.build.batch import BatchItem, build_batch
from pipelines.build.commit import commit_batch
from pipelines.build.options import SceneSettings, SourceSpec
from pipelines.build.plan import make_batches
from pipelines.store import ShardStore


def _warm_up() -> str:
    """Import the whole per-scene path and probe the renderer, so neither side
    pays first-call costs inside the timed region."""
    import pipelines.build  # noqa: F401
    import pipelines.correspondence  # noqa: F401
    import preprocess.render.complete_depth  # noqa: F401
    import preprocess.sources.synthetic  # noqa: F401
    from preprocess.render import resolve_backend

    return resolve_backend("auto")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--scenes-per-task", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--points", type=int, default=8000)
    p.add_argument("--flow", action="store_true", help="also time the Prefect flow in local mode")
    p.add_argument("--workdir", default=None)
    p.add_argument("--noop", action="store_true", help="time a re-run with nothing to do (see above)")
    args = p.parse_args()
    if args.noop:
        return noop_rerun(args)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-build-"))
    opts = dict(num_scenes=args.scenes, seed=0, frames_per_scene=args.frames, image_width=args.width,
                image_height=args.height, points_per_scene=args.points)
    spec = SourceSpec("synthetic", str(work / "rooms"), "bench", opts)
    refs = spec.make().discover()  # generation is not part of what is timed
    settings = SceneSettings(min_correspondences=10)
    batches = make_batches([BatchItem(spec, r, 1) for r in refs], args.scenes_per_task)
    print(f"{len(refs)} scenes ({args.frames} frames {args.width}x{args.height}, {args.points} points) "
          f"in {len(batches)} batches; workdir {work}")

    _warm_up()
    t = time.perf_counter()
    for b in batches:
        res = build_batch(str(work / "serial"), b, settings, shard_size=args.scenes_per_task)
        commit_batch(str(work / "serial"), res.shards)
    serial = time.perf_counter() - t
    assert len(ShardStore.open(str(work / "serial")).scene_keys()) == len(refs)
    print(f"serial (baseline): {serial:7.2f} s  {len(refs) / serial:6.2f} scenes/s")

    from distributed import Client, LocalCluster, as_completed

    from flows.build_dataset import LOCAL_CLUSTER

    t = time.perf_counter()
    with LocalCluster(**LOCAL_CLUSTER) as cluster, Client(cluster) as client:
        client.run(_warm_up)
        start = time.perf_counter() - t
        t = time.perf_counter()
        futs = [client.submit(build_batch, str(work / "dask"), b, settings, args.scenes_per_task, pure=False)
                for b in batches]
        for fut in as_completed(futs):
            commit_batch(str(work / "dask"), fut.result().shards)
        dask_s = time.perf_counter() - t
    assert len(ShardStore.open(str(work / "dask")).scene_keys()) == len(refs)
    print(f"dask (2 workers):  {dask_s:7.2f} s  {len(refs) / dask_s:6.2f} scenes/s  "
          f"ratio vs serial {serial / dask_s:5.2f}x  (cluster start + warm-up {start:.1f} s, not counted)")

    if args.flow:
        from flows.build_dataset import build_dataset

        t = time.perf_counter()
        summary = build_dataset(sources=[{"kind": spec.kind, "path": spec.path, "name": spec.name, "options": opts}],
                                store=str(work / "flow"), min_correspondences=10,
                                scenes_per_task=args.scenes_per_task, shard_size=args.scenes_per_task)
        flow_s = time.perf_counter() - t
        assert summary["scenes"]["processed"] == len(refs)
        print(f"prefect flow:      {flow_s:7.2f} s  {len(refs) / flow_s:6.2f} scenes/s  ratio vs serial "
              f"{serial / flow_s:5.2f}x  (all overhead counted; stages {summary['elapsed_s']})")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


def noop_rerun(args) -> None:
    import json
    import statistics

    from preprocess.sources.hash_cache import stat_hash_cache

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-noop-"))
    opts = dict(num_scenes=args.scenes, seed=0, frames_per_scene=args.frames, image_width=args.width,
                image_height=args.height, points_per_scene=args.points)
    spec = SourceSpec("synthetic", str(work / "rooms"), "bench", opts)
    refs = spec.make().discover()  # generation, not timed
    for f in (work / "rooms").rglob("*"):  # age the files past the cache's racy window
        os.utime(f, (time.time() - 60, time.time() - 60))
    n = len(refs)
    cache_file = work / "store" / "cache" / "file_hashes.json"

    def discover(cached: bool) -> float:
        t = time.perf_counter()
        if cached:
            with stat_hash_cache(cache_file):
                again = spec.make().discover()
        else:
            again = spec.make().discover()
        s = time.perf_counter() - t
        assert again == refs, "discovery changed its answer"
        return s

    plain = [discover(False) for _ in range(3)]
    cold = discover(True)
    warm = [discover(True) for _ in range(5)]
    ms = lambda v: 1e3 * v / n  # noqa: E731
    print(f"{n} scenes; discovery ms/scene (median of repeats; shared machine):")
    print(f"  no cache (baseline, hashes every file): {ms(statistics.median(plain)):7.3f}  (min {ms(min(plain)):.3f})")
    print(f"  stat cache, cold (first run):            {ms(cold):7.3f}")
    print(f"  stat cache, warm (no-op re-run):         {ms(statistics.median(warm)):7.3f}  (min {ms(min(warm)):.3f})")

    if args.flow:
        from flows.build_dataset import build_dataset

        params = dict(sources=[{"kind": spec.kind, "path": spec.path, "name": spec.name, "options": opts}],
                      store=str(work / "flow"), min_correspondences=10, scenes_per_task=args.scenes_per_task,
                      shard_size=args.scenes_per_task)
        build_dataset(**params)  # the real build
        t = time.perf_counter()
        summary = build_dataset(**params)  # nothing to do
        wall = time.perf_counter() - t
        assert summary["scenes"]["processed"] == 0
        stages = summary["elapsed_s"]
        own = statistics.median(plain)  # the source's discover() itself, timed above without the cache
        print(f"no-op flow run: {wall:.2f} s wall = {wall - stages['total']:.2f} s Prefect start-up (outside the "
              f"flow body) + {stages['total']:.2f} s inside it: "
              f"{', '.join(f'{k} {v:.2f}' for k, v in stages.items() if k != 'total')}; of the discover stage "
              f"{own:.3f} s is discover() itself and {stages['discover'] - own:.2f} s the task runner's start-up "
              f"(Dask cluster, worker imports, task submission)")
    value, base = ms(statistics.median(warm)), ms(statistics.median(plain))
    print(json.dumps({"benchmark": "bench_build", "metric": "no-op discovery ms per scene, stat cache warm vs "
                      "re-hashing every file (synthetic source; the goal bounds the value, ms)", "value": round(value, 4),
                      "baseline": round(base, 4), "ratio": round(value / base, 4), "goal": 1.0}))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
