"""Voxel grid sampling: keep one point per occupied voxel, remember the map back.

Conventions follow the reference GridSample transform: per sample,
``grid_coord = floor(coord / grid_size) - min(floor(coord / grid_size))`` so
every sample's voxel indices start at 0 on each axis.
"""

from __future__ import annotations

from typing import Literal

import torch

from .point import Point

GridSampleMode = Literal["random", "first"]

# Voxel indices per axis must fit 16 bits (the serialization depth limit).
MAX_GRID_EXTENT = 1 << 16


def voxelize(coord: torch.Tensor, batch: torch.Tensor, grid_size: float) -> torch.Tensor:
    """Per-sample voxel indices int32 [N, 3] of ``coord`` float [N, 3] (metres).

    Raises ValueError on non-finite coordinates or a sample wider than
    2**16 voxels on some axis.
    """
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord must be [N, 3], got {tuple(coord.shape)}")
    if not torch.isfinite(coord).all():
        bad = int((~torch.isfinite(coord)).any(1).nonzero()[0])
        raise ValueError(f"coord has non-finite values (first at point {bad}, sample {int(batch[bad])})")
    if grid_size <= 0:
        raise ValueError(f"grid_size must be > 0, got {grid_size}")
    cell = torch.floor(coord.double() / grid_size).long()
    num = int(batch.max()) + 1 if batch.numel() else 0
    lo = torch.full((num, 3), torch.iinfo(torch.long).max, device=coord.device, dtype=torch.long)
    lo = lo.scatter_reduce(0, batch.view(-1, 1).expand(-1, 3), cell, reduce="amin")
    grid = cell - lo[batch]
    if grid.numel() and int(grid.max()) >= MAX_GRID_EXTENT:
        bad = int(batch[grid.max(1).values.argmax()])
        raise ValueError(
            f"sample {bad} spans {int(grid.max()) + 1} voxels of {grid_size} m on one axis; "
            f"at most {MAX_GRID_EXTENT} are supported (crop it or use a coarser grid)"
        )
    return grid.int()


def voxel_key(grid_coord: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """One int64 per voxel, ordered by (batch, x, y, z); coords must be in [0, 2**16)."""
    g = grid_coord.long()
    return (batch.long() << 48) | (g[:, 0] << 32) | (g[:, 1] << 16) | g[:, 2]


def grid_sample(
    point: Point | dict,
    grid_size: float | None = None,
    mode: GridSampleMode = "random",
    generator: torch.Generator | None = None,
) -> Point:
    """Keep one point per voxel of ``grid_size`` metres, per sample.

    ``mode="random"`` picks a uniformly random point of each voxel (the
    reference's train mode); ``mode="first"`` picks the lowest input index
    (deterministic). Every per-point tensor field (first dimension N) is
    indexed; the result gains ``grid_coord`` int32 [M, 3], ``grid_size``,
    ``grid_sample_index`` int64 [M] (chosen input rows) and
    ``grid_sample_inverse`` int64 [N] (voxel of each input point). Voxels
    come out ordered by (sample, x, y, z).
    """
    point = point if isinstance(point, Point) else Point(point)
    if grid_size is None:
        if "grid_size" not in point:
            raise ValueError("grid_sample needs grid_size (argument or Point field)")
        grid_size = float(point["grid_size"])
    coord, batch = point["coord"], point["batch"]
    n = coord.shape[0]
    grid = voxelize(coord, batch, grid_size)
    key = voxel_key(grid, batch)
    uniq, inverse, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
    m = uniq.numel()
    if mode == "first":
        choice = torch.full((m,), n, device=coord.device, dtype=torch.long)
        choice = choice.scatter_reduce(0, inverse, torch.arange(n, device=coord.device), reduce="amin")
    elif mode == "random":
        # random rank inside each voxel: sort points by (voxel, random priority)
        prio = torch.rand(n, generator=generator, device="cpu").to(coord.device)
        order = torch.argsort(inverse.double() + prio)
        starts = torch.cumsum(counts, 0) - counts
        choice = order[starts]
    else:
        raise ValueError(f"grid_sample mode must be 'random' or 'first', got {mode!r}")

    out = Point()
    for k, v in point.items():
        if k in ("offset", "batch", "grid_coord"):
            continue
        if torch.is_tensor(v) and v.ndim >= 1 and v.shape[0] == n:
            out[k] = v[choice]
        else:
            out[k] = v
    out["batch"] = batch[choice]
    out["offset"] = torch.cumsum(
        torch.bincount(out["batch"], minlength=point.batch_size), 0
    )
    out["grid_coord"] = grid[choice]
    out["grid_size"] = grid_size
    out["grid_sample_index"] = choice
    out["grid_sample_inverse"] = inverse
    return out
