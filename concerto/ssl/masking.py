"""Cube masks for the masked global views (Sonata)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from concerto.model.grid_sample import voxel_key

from concerto.config import MaskConfig
from concerto.schedules import cosine_warmup


class MaskShape(NamedTuple):
    """The cube masks of one optimiser step: cube side ``size`` (m), fraction ``ratio``
    of cubes masked, coordinate jitter ``jitter`` (m) on masked points, clipped as
    ``jitter_clip`` says (see ``jitter_masked``)."""

    size: float
    ratio: float
    jitter: float
    jitter_clip: str = "upper"

    @staticmethod
    def at(mask: MaskConfig, step: int, total: int) -> "MaskShape":
        """Size and ratio warm up from their start to their base value (cosine_warmup)."""
        size = cosine_warmup(step, total, mask.size_start, mask.size_base, mask.size_base, mask.warmup_ratio)
        ratio = cosine_warmup(step, total, mask.ratio_start, mask.ratio_base, mask.ratio_base, mask.warmup_ratio)
        return MaskShape(size, ratio, mask.jitter, mask.jitter_clip)


def cube_mask(coord: np.ndarray, size: float, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """bool [N]: the points of int(ratio * #cubes) random cubes of side ``size`` (m),
    cubes aligned at the view's minimum corner."""
    cell = np.floor((coord - coord.min(0)) / size).astype(np.int64)
    _, cluster = np.unique(cell, axis=0, return_inverse=True)
    cluster = cluster.reshape(-1)
    num = int(cluster.max()) + 1 if len(cluster) else 0
    chosen = rng.permutation(num)[: int(num * ratio)]
    selected = np.zeros(num, bool)
    selected[chosen] = True
    return selected[cluster]


def jitter_masked(coord: np.ndarray, mask: np.ndarray, sigma: float, rng: np.random.Generator,
                  clip: str = "upper") -> np.ndarray:
    """Copy of coord with N(0, sigma) noise on masked points, clipped at +2 sigma
    (``clip="upper"``, as released) or to +-2 sigma (``"both"``)."""
    out = coord.copy()
    if sigma > 0 and mask.any():
        noise = rng.normal(0.0, sigma, (int(mask.sum()), 3))
        noise = np.clip(noise, -2 * sigma if clip == "both" else None, 2 * sigma)
        out[mask] += noise.astype(out.dtype)
    return out


def batch_cube_mask(coord: torch.Tensor, offset: torch.Tensor, size: float, ratio: float,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """bool [N]: cube masks drawn over a whole batch of views at once (released).

    coord [N,3] augmented coordinates, offset [V] cumulative view ends. Cubes of side
    ``size`` aligned at each view's minimum corner; int(ratio * #cubes of the batch)
    cubes chosen by ``torch.randperm`` (so the masked fraction varies per view)."""
    batch = torch.repeat_interleave(torch.arange(len(offset), device=coord.device),
                                    torch.diff(offset, prepend=offset.new_zeros(1)))
    lo = torch.full((len(offset), 3), float("inf"), device=coord.device, dtype=coord.dtype)
    lo = lo.scatter_reduce(0, batch[:, None].expand(-1, 3), coord, reduce="amin")
    cell = torch.div(coord - lo[batch], size, rounding_mode="floor").int()
    # cubes numbered in (view, x, y, z) order, as the reference's unique over rows
    _, cluster = torch.unique(voxel_key(cell, batch), sorted=True, return_inverse=True)
    num = int(cluster.max()) + 1 if len(cluster) else 0
    chosen = torch.randperm(num, device=coord.device, generator=generator)[: int(num * ratio)]
    return torch.isin(cluster, chosen)


def batch_jitter(coord: torch.Tensor, mask: torch.Tensor, sigma: float, clip: str = "upper",
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Copy of coord with N(0, sigma) noise on masked rows (torch's RNG), clipped
    at +2 sigma (``"upper"``, released) or to +-2 sigma (``"both"``)."""
    out = coord.clone()
    if sigma > 0:
        noise = torch.randn(out[mask].shape, generator=generator, dtype=out.dtype, device=out.device) * sigma
        out[mask] += torch.clip(noise, min=-2 * sigma if clip == "both" else None, max=2 * sigma)
    return out
