"""Inference hot path: ``Encoder.embed`` against the bare model call, measured in the same run.

- grid sampling: ours ``canonical_grid_sample`` (numpy, order-independent choice
  of the point nearest each voxel centre) vs the model's ``grid_sample`` in
  ``"first"`` mode (torch, first input index per voxel; what the model does in
  eval mode when given raw points);
- end to end: ``embed`` (shift, features, canonical grid sample, forward with
  fixed orders, upcast, map back to every input point) vs the baseline of
  calling the model directly on raw points (its own grid sampling, same fixed
  orders, same upcast and map back).
- picture rendering: ``pictures.render`` (numpy z-buffer splatting) of the
  same cloud vs a plain PIL ``putpixel``-free baseline of drawing the points
  without a z-buffer (numpy fancy assignment, last write wins).

    python benchmarks/bench_inference.py [--points 100000] [--config tiny|base] [--repeat 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import best_of, json_line  # noqa: E402

from concerto.eval.pictures import pca_rgb, render  # noqa: E402
from concerto.inference import canonical_grid_sample, center_shift, input_features, random_encoder  # noqa: E402
from concerto.model import Point, grid_sample, upcast  # noqa: E402


def room(n: int, seed: int = 0):
    """Floor, two walls and boxes of a 5 x 4 x 2.5 m room: coord, color uint8, normal."""
    rng = np.random.default_rng(seed)
    nf, nw = int(0.4 * n), int(0.3 * n)
    floor = np.c_[rng.uniform(0, 5, nf), rng.uniform(0, 4, nf), np.zeros(nf)]
    wall = np.c_[rng.uniform(0, 5, nw), np.full(nw, 4.0), rng.uniform(0, 2.5, nw)]
    boxes = rng.uniform([0.5, 0.5, 0], [4.5, 3.5, 1.0], (n - nf - nw, 3))
    coord = np.vstack([floor, wall, boxes]).astype(np.float32)
    color = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    normal = np.vstack([np.tile([0, 0, 1], (nf, 1)), np.tile([0, -1, 0], (nw, 1)),
                        rng.normal(size=(n - nf - nw, 3))]).astype(np.float32)
    return coord, color, normal


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    coord, color, normal = room(args.points)
    enc = random_encoder(args.config, seed=0)
    model = enc.model

    shifted = center_shift(coord)
    feat9 = input_features(shifted, color, normal)
    t_ours_gs, (rows, _, _) = best_of(lambda: canonical_grid_sample(shifted, feat9[:, 3:], enc.grid_size), args.repeat)
    raw = Point(coord=torch.from_numpy(shifted), feat=torch.from_numpy(feat9), grid_size=enc.grid_size)
    t_base_gs, sampled = best_of(lambda: grid_sample(raw, mode="first"), args.repeat)
    print(f"grid sample {args.points} pts -> {len(rows)} voxels: ours {t_ours_gs * 1e3:.1f} ms, "
          f"baseline torch 'first' {t_base_gs * 1e3:.1f} ms, ratio ours/baseline {t_ours_gs / t_base_gs:.2f}")

    orders = list(model.config.order)

    @torch.inference_mode()
    def baseline():
        out = upcast(model(raw, orders=orders, grid_sample_mode="first"), enc.levels)
        return out["feat"][out.index_to_input()].numpy()

    t_base, f_base = best_of(baseline, args.repeat)
    t_ours, f_ours = best_of(lambda: enc.embed(coord, color, normal, progress=False), args.repeat)
    assert f_base.shape == f_ours.shape
    print(f"embed ({args.config}, {enc.channels} ch): ours {t_ours:.2f} s, baseline model call {t_base:.2f} s, "
          f"ratio ours/baseline {t_ours / t_base:.2f}  ({args.points / t_ours / 1e3:.0f} k points/s)")

    rgb = pca_rgb(f_ours)
    t_render, _ = best_of(lambda: render(coord, rgb, "perspective", (640, 480)), args.repeat)

    def no_zbuffer():
        img = np.full((480, 640, 3), 255, np.uint8)
        u = np.clip((shifted[:, 0] - shifted[:, 0].min()) * 100, 0, 639).astype(int)
        v = np.clip((shifted[:, 1] - shifted[:, 1].min()) * 100, 0, 479).astype(int)
        img[v, u] = (rgb * 255).astype(np.uint8)
        return img

    t_plain, _ = best_of(no_zbuffer, args.repeat)
    print(f"render 640x480: z-buffer splat {t_render * 1e3:.1f} ms, baseline plain scatter (no z-buffer, 1 px) "
          f"{t_plain * 1e3:.1f} ms, ratio {t_render / t_plain:.2f}")
    json_line("bench_inference", f"concerto.embed seconds ({args.config}, {args.points} points) vs the bare model call",
              t_ours, t_base, "<= 1.2")


if __name__ == "__main__":
    main()
