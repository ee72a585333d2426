"""Grid pooling between encoder stages, unpooling, and the feature upcast.

GridPooling (reference PT-v3m2): voxels of ``grid_coord // stride`` per
sample; features ``max`` over each coarse voxel's children after a Linear,
then LayerNorm and GELU; coordinates ``mean``. The coarse Point keeps its
parent and, for every parent point, the index of its coarse voxel
(``pooling_parent`` / ``pooling_inverse``), then is serialized again with the
parent's curves, re-shuffled unless the caller fixed the orders.
"""

from __future__ import annotations

import torch
from torch import nn

from .grid_sample import voxel_key
from .point import Point


def scatter_mean(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of rows of ``src`` [N, C] grouped by ``index`` [N] -> [size, C]."""
    total = src.new_zeros(size, src.shape[1]).index_add(0, index, src)
    count = torch.bincount(index, minlength=size).clamp_(min=1).to(src.dtype)
    return total / count[:, None]


def scatter_max(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Max of rows of ``src`` [N, C] grouped by ``index`` [N] -> [size, C] (every group non-empty)."""
    # Not new_empty: scatter_reduce's backward compares the initial values with the
    # result to find ties even with include_self=False, so stale memory that happens
    # to hold the max would steal gradient at random. -inf never ties.
    out = src.new_full((size, src.shape[1]), float("-inf"))
    return out.scatter_reduce(0, index[:, None].expand_as(src), src, reduce="amax", include_self=False)


# Per-point fields carried to the coarse Point by averaging (the reference does
# this for these names when present).
MEAN_POOLED_FIELDS = ("origin_coord", "color")
# Fields passed through unchanged.
SHARED_FIELDS = ("condition", "context", "name", "split")


class GridPooling(nn.Module):
    """Stride-``stride`` voxel pooling; state-dict keys ``proj.*``, ``norm.0.*``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.proj = nn.Linear(in_channels, out_channels)
        self.norm = nn.Sequential(nn.LayerNorm(out_channels))
        self.act = nn.Sequential(nn.GELU())

    def forward(
        self,
        point: Point,
        orders: tuple[str, ...] | None = None,
        shuffle_orders: bool = True,
        generator: torch.Generator | None = None,
    ) -> Point:
        """Pool ``point``; serialize the result with ``orders`` if given, else the parent's (shuffled)."""
        grid = torch.div(point["grid_coord"], self.stride, rounding_mode="floor")
        # sorting by (batch, x, y, z) gives coarse voxels in the reference's order
        key = voxel_key(grid, point["batch"])
        _, cluster, counts = torch.unique(key, sorted=True, return_inverse=True, return_counts=True)
        m = counts.numel()
        head = torch.full((m,), point.num_points, dtype=torch.long, device=key.device)
        head = head.scatter_reduce(0, cluster, torch.arange(point.num_points, device=key.device), reduce="amin")
        coarse = Point(
            feat=scatter_max(self.proj(point["feat"]), cluster, m),
            coord=scatter_mean(point["coord"], cluster, m),
            grid_coord=grid[head],
            batch=point["batch"][head],
        )
        for name in MEAN_POOLED_FIELDS:
            if name in point:
                coarse[name] = scatter_mean(point[name].to(coarse["coord"].dtype), cluster, m)
        for name in SHARED_FIELDS:
            if name in point:
                coarse[name] = point[name]
        if "grid_size" in point:
            coarse["grid_size"] = point["grid_size"] * self.stride
        # offsets over all samples, including any that became empty (cannot: pooling keeps >= 1)
        coarse["offset"] = torch.cumsum(torch.bincount(coarse["batch"], minlength=point.batch_size), 0)
        coarse["pooling_inverse"] = cluster
        coarse["pooling_parent"] = point
        coarse["feat"] = self.act(self.norm(coarse["feat"]))
        if orders is not None:
            coarse.serialization(order=orders, shuffle_orders=False)
        else:
            coarse.serialization(order=point["order"], shuffle_orders=shuffle_orders, generator=generator)
        return coarse


class GridUnpooling(nn.Module):
    """Decoder step: parent features (Linear-LN-GELU) plus upsampled coarse features (Linear-LN-GELU).

    State-dict keys ``proj.{0,1}.*`` and ``proj_skip.{0,1}.*`` as in the reference.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_channels, out_channels), nn.LayerNorm(out_channels), nn.GELU())
        self.proj_skip = nn.Sequential(nn.Linear(skip_channels, out_channels), nn.LayerNorm(out_channels), nn.GELU())

    def forward(self, point: Point) -> Point:
        parent = point["pooling_parent"].shallow_copy()
        parent["feat"] = self.proj_skip(parent["feat"]) + self.proj(point["feat"])[point["pooling_inverse"]]
        parent["unpooling_parent"] = point
        return parent


def upcast(point: Point, levels: int) -> Point:
    """Concatenate features up ``levels`` pooling levels, finest first.

    Returns a new Point at the resolution ``levels`` stages above ``point``
    (same coordinates, inverse chain and serialization as that stage) whose
    ``feat`` is ``cat([f_parent_levels, ..., f_parent_1, f_point])`` broadcast to
    the fine points. ``point`` itself is not modified. For the base encoder's
    output, levels=2 gives 192 + 384 + 512 = 1088 channels.
    """
    if levels < 0:
        raise ValueError(f"upcast levels must be >= 0, got {levels}")
    feat = point["feat"]
    current = point
    for level in range(levels):
        if "pooling_parent" not in current:
            raise ValueError(f"cannot upcast {levels} levels: only {level} pooling levels above this Point")
        parent = current["pooling_parent"]
        feat = torch.cat([parent["feat"], feat[current["pooling_inverse"]]], dim=-1)
        current = parent
    out = current.shallow_copy()
    out["feat"] = feat
    return out
