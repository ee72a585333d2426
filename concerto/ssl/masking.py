"""Cube masks for the masked global views (Sonata)."""
from __future__ import annotations

import numpy as np


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
