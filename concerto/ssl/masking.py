"""Cube masks for the masked global views (Sonata)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from concerto.config import MaskConfig
from concerto.schedules import cosine_warmup


class MaskShape(NamedTuple):
    """The cube masks of one optimiser step: cube side ``size`` (m), fraction ``ratio``
    of cubes masked, coordinate jitter ``jitter`` (m) on masked points."""

    size: float
    ratio: float
    jitter: float

    @staticmethod
    def at(mask: MaskConfig, step: int, total: int) -> "MaskShape":
        """Size and ratio warm up from their start to their base value (cosine_warmup)."""
        size = cosine_warmup(step, total, mask.size_start, mask.size_base, mask.size_base, mask.warmup_ratio)
        ratio = cosine_warmup(step, total, mask.ratio_start, mask.ratio_base, mask.ratio_base, mask.warmup_ratio)
        return MaskShape(size, ratio, mask.jitter)


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


def jitter_masked(coord: np.ndarray, mask: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Copy of coord with N(0, sigma) noise, clipped to +-2 sigma, on masked points."""
    out = coord.copy()
    if sigma > 0 and mask.any():
        noise = np.clip(rng.normal(0.0, sigma, (int(mask.sum()), 3)), -2 * sigma, 2 * sigma)
        out[mask] += noise.astype(out.dtype)
    return out
