"""Piecewise-linear colour maps from a table of anchor colours."""
from __future__ import annotations

import numpy as np


def interpolate_anchors(t: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """t float [M] (clipped to [0, 1]) -> [M, C] float: the linear blend of the two
    anchor colours of ``anchors`` [A, C] (A >= 2, evenly spaced) around each t."""
    x = np.clip(t, 0.0, 1.0) * (len(anchors) - 1)
    i = np.minimum(x.astype(int), len(anchors) - 2)
    f = (x - i)[:, None]
    return anchors[i] * (1 - f) + anchors[i + 1] * f
