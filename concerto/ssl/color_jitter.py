"""Point colour jitter of the released recipe (Pointcept ``RandomColorJitter`` then
``ChromaticTranslation``), split into drawing the parameters and applying them so
that a recorded draw can be replayed (golden tests).

Colours are [N,3] in 0..255; the array's dtype is kept after every step, as the
reference does (uint8 colours are truncated to integers after each step, float
colours are not). Steps:

- brightness, contrast, saturation and hue, in a random order, each applied with
  its own probability ``p``; factors U(1 - 0.4, 1 + 0.4), U(0.6, 1.4), U(0.8, 1.2)
  and hue shift U(-0.02, 0.02) of a turn. Brightness scales towards black, contrast
  towards the mean grey level of the cloud (weights 0.2989, 0.587, 0.114),
  saturation towards each point's grey level; each result is clipped to [0, 255];
- with probability ``translate_p``, one shift per channel U(-1, 1) * 255 * ratio,
  clipped to [0, 255].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GREY_WEIGHTS = (0.2989, 0.587, 0.114)


@dataclass
class JitterDraw:
    """One draw: ``order`` the 4 step ids (0 brightness, 1 contrast, 2 saturation,
    3 hue) in application order; ``factors`` [4] by step id; ``applied`` [4] by
    position in ``order``; ``shift`` [3] or None (no translation)."""

    order: np.ndarray
    factors: np.ndarray
    applied: np.ndarray
    shift: np.ndarray | None


def draw_jitter(rng: np.random.Generator, brightness: float = 0.4, contrast: float = 0.4,
                saturation: float = 0.2, hue: float = 0.02, p: float = 0.8,
                translate_p: float = 0.95, translate_ratio: float = 0.05) -> JitterDraw:
    """Draw the parameters of one jitter (released defaults)."""
    order = rng.permutation(4)
    factors = np.array([rng.uniform(1 - brightness, 1 + brightness), rng.uniform(1 - contrast, 1 + contrast),
                        rng.uniform(1 - saturation, 1 + saturation), rng.uniform(-hue, hue)])
    applied = rng.random(4) < p
    shift = (rng.random(3) - 0.5) * 255 * 2 * translate_ratio if rng.random() < translate_p else None
    return JitterDraw(order, factors, applied, shift)


def _blend(a: np.ndarray, b, ratio: float, dtype) -> np.ndarray:
    return (ratio * a + (1.0 - ratio) * b).clip(0, 255.0).astype(dtype)


def grey(color: np.ndarray) -> np.ndarray:
    """Grey level [N,1] in the colour's dtype."""
    w = GREY_WEIGHTS
    return (w[0] * color[:, 0] + w[1] * color[:, 1] + w[2] * color[:, 2]).astype(color.dtype)[:, None]


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """[N,3] rgb in [0,1] -> hsv in [0,1] (hue in turns)."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    hi, lo = rgb.max(1), rgb.min(1)
    flat = hi == lo
    span = hi - lo
    s = span / np.where(flat, 1.0, hi)
    d = np.where(flat, 1.0, span)
    rc, gc, bc = (hi - r) / d, (hi - g) / d, (hi - b) / d
    h = (hi == r) * (bc - gc) + ((hi == g) & (hi != r)) * (2.0 + rc - bc) \
        + ((hi != g) & (hi != r)) * (4.0 + gc - rc)
    return np.stack([(h / 6.0 + 1.0) % 1.0, s, hi], 1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """[N,3] hsv in [0,1] -> rgb in [0,1]."""
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    sector = np.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.astype(np.int32) % 6
    p = np.clip(v * (1.0 - s), 0.0, 1.0)
    q = np.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = np.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    table = np.stack([np.stack(c, 1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 1)
    return np.take_along_axis(table, sector[:, None, None].repeat(3, 2), 1)[:, 0].astype(hsv.dtype)


def apply_jitter(color: np.ndarray, draw: JitterDraw) -> np.ndarray:
    """Apply ``draw`` to ``color`` [N,3] (0..255); returns a new array of the same dtype."""
    dtype = color.dtype
    out = color.copy()
    for pos, step in enumerate(draw.order):
        if not draw.applied[pos]:
            continue
        f = float(draw.factors[step])
        if step == 0:
            out = _blend(out, np.zeros_like(out), f, dtype)
        elif step == 1:
            out = _blend(out, np.mean(grey(out)), f, dtype)
        elif step == 2:
            out = _blend(out, grey(out), f, dtype)
        else:
            hsv = rgb_to_hsv(out / 255.0)
            hsv[:, 0] = (hsv[:, 0] + f) % 1.0
            out = (hsv_to_rgb(hsv) * 255.0).astype(dtype)
    if draw.shift is not None:
        out = np.clip(draw.shift[None, :] + out, 0, 255).astype(dtype)
    return out


def color_jitter(color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Released point colour jitter (draw + apply)."""
    return apply_jitter(color, draw_jitter(rng))
