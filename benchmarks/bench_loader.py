"""Loader throughput against what a training step consumes (CPU).

Writes a small synthetic shard store, then measures in the same run:
- loader: samples/s of ``ShardLoader`` (views, masks, images, collate) with
  ``--workers`` DataLoader workers;
- baseline: samples/s that one training step of the chosen config consumes
  (forward + backward + EMA of the tiny config, batches taken from memory).
Prints both and the ratio (goal: loader >= 3x the step's appetite).

    .venv/bin/python benchmarks/bench_loader.py [--workers 2] [--batches 12] [--points 20000]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import json_line  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--points", type=int, default=20000, help="points per stored scene")
    ap.add_argument("--config", default="tiny")
    args = ap.parse_args()

    from concerto.config import load_config
    from concerto.data import ShardLoader, open_store
    from concerto.train import StoreInfo, build_sample_spec, resolve_config, train
    from testkit.pretrain_store import write_store

    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        url = write_store(tmp / "store", shard_sizes=(4, 4), n_points=args.points, without_images=1)
        cfg = resolve_config(load_config(args.config), StoreInfo(len(open_store(url))))
        torch.set_num_threads(max(cfg.run.num_threads, 1))
        from concerto.image_encoder import ImageEncoder

        enc = (ImageEncoder.from_config(dict(cfg.cross_modal.encoder_config))
               if cfg.cross_modal.encoder_config else None)
        grid = enc.grid if enc else __import__("concerto.patches", fromlist=["PatchGrid"]).PatchGrid()
        spec = build_sample_spec(cfg, grid, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), True)
        bs = cfg.data.batch_size

        loader = ShardLoader(url, spec, bs, num_workers=args.workers, seed=0)
        it = iter(loader)
        for _ in range(max(args.workers, 1)):
            next(it)  # worker start-up, imports and first Zarr opens are not throughput
        t0 = time.perf_counter()
        n = 0
        for _ in tqdm(range(args.batches), desc=f"loader ({args.workers} workers)"):
            n += len(next(it)["names"])
        loader_rate = n / (time.perf_counter() - t0)
        del it

        # baseline: the training step itself (same config, same store), per sample
        cfg.run.steps = args.steps + 1
        cfg.run.save_every = 10 ** 9
        cfg.data.num_workers = 0
        out = tmp / "run"
        train(cfg, url, out, progress=False, stop_after=1)  # model build + first step excluded
        summary = train(cfg, url, out, progress=False, resume=True)
        steps = summary["step"] - 1
        # the resumed run also loaded its batches in-process: subtract that time
        sync_loader = ShardLoader(url, spec, bs, num_workers=0, seed=0)
        sit = iter(sync_loader)
        t1 = time.perf_counter()
        for _ in range(steps):
            next(sit)
        load_time = time.perf_counter() - t1
        step_rate = steps * bs / max(summary["seconds"] - load_time, 1e-9)

        print(f"loader   : {loader_rate:8.2f} samples/s ({args.workers} workers, {args.points} points/scene)")
        print(f"training : {step_rate:8.2f} samples/s consumed by '{args.config}' steps "
              f"(batch {bs}, {summary['seconds'] / steps:.2f} s/step incl. in-process loading)")
        print(f"ratio    : {loader_rate / step_rate:8.2f}x (goal >= 3x)")
        json_line("bench_loader", f"loader samples/s ({args.workers} workers) vs samples/s the '{args.config}' step consumes",
                  loader_rate, step_rate, ">= 3")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
