"""PTv3 base encoder, forward + backward on CPU, per sparse-conv backend.

Times one training step (forward, upcast to level 2, backward) of the base
configuration on a synthetic room at each point count, once with the
reference's kernel (spconv, ConvAlgo.Native on CPU: the baseline) and once
with the pure-torch submanifold conv, and prints torch / spconv ratios.
Both runs use the same weights, sampling and curve orders, so it also reports
how far their outputs differ.

    python benchmarks/bench_ptv3.py [--points 20000 100000] [--repeats 1] [--config base]

Slow on a 2-core machine (minutes per point count): run it once.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from tqdm import tqdm

from concerto.model import Point, PointTransformerV3, PTv3Config, grid_sample, upcast
from concerto.model.sparse_conv import SubMConv3d, spconv_available

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")


def synthetic_room(num_voxels: int, seed: int = 0, grid: float = 0.02) -> Point:
    """Points on the floor and four walls of a box room, about ``num_voxels`` occupied voxels.

    Room footprint L x L, walls 2.5 m high; surface area chosen so the
    surface holds ~num_voxels voxels of ``grid``; points are grid-sampled.
    """
    gen = torch.Generator().manual_seed(seed)
    height = 2.5
    area = num_voxels * grid * grid * 1.15  # extra for voxels shared by two surfaces / empty cells
    side = (-4 * height + (16 * height**2 + 4 * area) ** 0.5) / 2  # L^2 + 4 L h = area
    n = num_voxels * 4
    u, v = torch.rand(n, generator=gen) * side, torch.rand(n, generator=gen)
    # 0 floor, 1..4 walls y=0, y=L, x=0, x=L
    which = torch.where(
        torch.rand(n, generator=gen) < side * side / area, 0, torch.randint(1, 5, (n,), generator=gen)
    )
    zero, full = torch.zeros(n), torch.full((n,), side)
    x = torch.stack([u, u, u, zero, full])[which, torch.arange(n)]
    y = torch.stack([v * side, zero, full, u, u])[which, torch.arange(n)]
    z = torch.where(which == 0, zero, v * height)
    coord = torch.stack([x, y, z], 1)
    color = torch.rand(n, 3, generator=gen)
    normal = torch.zeros(n, 3)
    normal[which == 0, 2] = 1
    normal[(which == 1) | (which == 2), 1] = 1
    normal[(which == 3) | (which == 4), 0] = 1
    p = Point(coord=coord, feat=torch.cat([coord, color, normal], 1), offset=torch.tensor([n]))
    s = grid_sample(p, grid, mode="first")
    keep = torch.randperm(s.num_points, generator=gen)[:num_voxels]
    return Point(coord=s.coord[keep], feat=s.feat[keep], offset=torch.tensor([len(keep)]))


def train_step(model: PointTransformerV3, point: Point) -> tuple[float, torch.Tensor]:
    """Seconds for forward + upcast(2) + backward, and the level-2 features."""
    model.zero_grad(set_to_none=True)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # same drop-path masks for every backend
    t0 = time.perf_counter()
    out = model(point, orders=ORDERS, generator=gen)
    feats = upcast(out, 2).feat
    feats.square().mean().backward()
    return time.perf_counter() - t0, feats.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--config", choices=["base", "large", "tiny"], default="base")
    args = ap.parse_args()

    backends = ["spconv", "torch"] if spconv_available() else ["torch"]
    if "spconv" not in backends:
        print("spconv is not installed: no baseline, torch backend only")
    torch.manual_seed(0)
    cfg = getattr(PTv3Config, args.config)(sparse_conv_backend="torch")
    model = PointTransformerV3(cfg).train()
    print(f"config {args.config}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{torch.get_num_threads()} torch threads")
    warm = synthetic_room(2000, seed=1)
    rows = []
    for n in args.points:
        point = synthetic_room(n)
        times, feats = {}, {}
        for backend in tqdm(backends, desc=f"{point.num_points} points", leave=False):
            for module in model.modules():
                if isinstance(module, SubMConv3d):
                    module.backend = backend
            train_step(model, warm)  # first-call set-up (spconv kernels, allocator) is not timed
            best = float("inf")
            for _ in range(args.repeats):
                seconds, f = train_step(model, point)
                best = min(best, seconds)
                gc.collect()
            times[backend], feats[backend] = best, f
            print(f"  {point.num_points:>7d} points  {backend:>6s}: {best:7.2f} s forward+backward")
        row = {"points": point.num_points, **times}
        if "spconv" in times:
            row["ratio"] = times["torch"] / times["spconv"]
            row["max_abs_diff"] = (feats["torch"] - feats["spconv"]).abs().max().item()
        rows.append(row)

    print("\npoints   spconv (baseline) s   torch s   torch/spconv   max |diff| of level-2 features")
    for r in rows:
        if "ratio" in r:
            print(f"{r['points']:>7d}   {r['spconv']:>17.2f}   {r['torch']:>7.2f}   {r['ratio']:>12.2f}   {r['max_abs_diff']:.2e}")
        else:
            print(f"{r['points']:>7d}   {'-':>17s}   {r['torch']:>7.2f}")


if __name__ == "__main__":
    main()
