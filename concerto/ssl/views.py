"""Sonata-style view generation for one sample (numpy, runs in loader workers).

Input: a sample's cloud (coord float32 [N,3] metres, color uint8 [N,3], normal
float32 [N,3]). Steps, as the reference pretraining transform:

1. grid sampling at ``grid_size`` (one random point per voxel);
2. colour / normal dropping (to 0);
3. the principal global view: when the sample has images, a crop of
   ``principal_max_points`` points around the centroid of the points seen by every
   image (a random point when there are none); without images, a random centre and
   a fraction in ``global_scale`` of ``max_points``; the other global view: nearest points around a
   random point of the principal view, a fraction in ``global_scale`` of
   ``max_points``; local views: fraction in ``local_scale``, centres drawn from
   principal-view points no earlier local view covered;
4. augmentation: shared colour jitter (concerto.ssl.color_jitter) for the globals,
   own for each local;
   per-view centre shift, scale, rotation (z full turn, x/y small), flip, jitter;
   normals rotated and flipped with the coordinates;
5. cube masks on each global view (side ``mask.size``, fraction ``mask.ratio`` of
   cubes) and jitter on the masked points' coordinates.

``origin_coord`` is the grid-sampled coordinate before augmentation: students and
teachers are matched on it. ``global_index`` maps each global-view point back to
the input cloud (for the correspondences). Features are 9 channels:
(augmented coord, colour / 255 as the released transforms feed it, or
``views.color_range="symmetric"``: / 127.5 - 1, normal).

Elastic distortion (smoothed noise grids, granularity/magnitude pairs in
``elastic``) follows the per-view jitter, with probability 0.95.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.ndimage import uniform_filter1d

from concerto.config import ViewConfig
from concerto.ssl.color_jitter import color_jitter
from concerto.ssl.masking import MaskShape, cube_mask, jitter_masked


def grid_sample_random(coord: np.ndarray, grid_size: float, rng: np.random.Generator) -> np.ndarray:
    """Index int64 [M] of one uniformly random point per occupied voxel of side grid_size."""
    cell = np.floor((coord - coord.min(0)) / grid_size).astype(np.int64)
    dims = cell.max(0) + 1
    key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
    perm = rng.permutation(len(coord))
    _, first = np.unique(key[perm], return_index=True)
    return np.sort(perm[first])


def drop_attribute(values: np.ndarray, rng: np.random.Generator, all_prob: float,
                   part_prob: float, part_ratio: float) -> np.ndarray:
    """Zero the whole attribute with prob all_prob; then, with prob part_prob, zero a
    random part_ratio of the points (as the two RandomDrop transforms of the reference)."""
    values = values.copy()
    if rng.random() < all_prob:
        values[:] = 0
    if rng.random() < part_prob:
        values[rng.random(len(values)) < part_ratio] = 0
    return values


def nearest_crop(coord: np.ndarray, center: np.ndarray, size: int) -> np.ndarray:
    """Index of the ``size`` points nearest to ``center`` (sorted by distance)."""
    d = np.square(coord - center).sum(1)
    size = int(min(max(size, 1), len(coord)))
    if size < len(coord):
        part = np.argpartition(d, size - 1)[:size]
        return part[np.argsort(d[part], kind="stable")]
    return np.argsort(d, kind="stable")


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def geometric_augment(coord: np.ndarray, normal: np.ndarray, rng: np.random.Generator,
                      elastic: tuple = ()):
    """Centre shift (x, y centred, z from 0), scale U(0.9, 1.1), rotation about z
    (U(-pi, pi), p 0.8) and about x and y (U(-pi/64, pi/64), p 0.8 each), flip of
    x and y (p 0.5 each), jitter N(0, 0.005) clipped at 0.02, then elastic distortion
    (p 0.95) for each (granularity, magnitude) in ``elastic``. Returns new arrays."""
    lo, hi = coord.min(0), coord.max(0)
    shift = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])
    coord = coord - shift
    coord = coord * rng.uniform(0.9, 1.1)
    rot = np.eye(3)
    for axis, limit in ((2, np.pi), (0, np.pi / 64), (1, np.pi / 64)):
        if rng.random() < 0.8:
            rot = _rotation(axis, rng.uniform(-limit, limit)) @ rot
    coord = coord @ rot.T
    normal = normal @ rot.T
    for axis in (0, 1):
        if rng.random() < 0.5:
            coord[:, axis] = -coord[:, axis]
            normal[:, axis] = -normal[:, axis]
    coord = coord + np.clip(rng.normal(0, 0.005, coord.shape), -0.02, 0.02)
    if elastic and rng.random() < 0.95:
        for granularity, magnitude in elastic:
            coord = elastic_distortion(coord, granularity, magnitude, rng)
    return coord.astype(np.float32), normal.astype(np.float32)


def elastic_distortion(coord: np.ndarray, granularity: float, magnitude: float,
                       rng: np.random.Generator) -> np.ndarray:
    """coord [N,3] + magnitude * (Gaussian noise on a grid of spacing ``granularity``,
    box-smoothed (3 taps, twice per axis), trilinearly interpolated at the points)."""
    lo = coord.min(0)
    dims = ((coord - lo).max(0) // granularity).astype(int) + 3
    noise = rng.standard_normal((*dims, 3)).astype(np.float32)
    for _ in range(2):
        for axis in range(3):
            noise = uniform_filter1d(noise, 3, axis=axis, mode="constant", cval=0.0)
    # grid node k of an axis sits at lo - granularity + k * granularity; trilinear weights
    pos = (coord - lo) / granularity + 1.0
    base = np.clip(np.floor(pos).astype(np.int64), 0, dims - 2)
    frac = (pos - base).astype(np.float32)
    out = np.zeros((len(coord), 3), np.float32)
    for dx in (0, 1):
        wx = frac[:, 0] if dx else 1 - frac[:, 0]
        for dy in (0, 1):
            wy = frac[:, 1] if dy else 1 - frac[:, 1]
            for dz in (0, 1):
                wz = frac[:, 2] if dz else 1 - frac[:, 2]
                out += (wx * wy * wz)[:, None] * noise[base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz]
    return coord + out.astype(coord.dtype) * magnitude


def scale_color(color: np.ndarray, color_range: str = "unit") -> np.ndarray:
    """Colour 0..255 -> network input: / 255 ("unit", released) or / 127.5 - 1
    ("symmetric", checkpoints trained that way before)."""
    if color_range == "unit":
        return np.asarray(color, np.float32) / 255.0
    if color_range == "symmetric":
        return np.asarray(color, np.float32) / 127.5 - 1.0
    raise ValueError(f"config key 'views.color_range': expected 'unit' or 'symmetric', got {color_range!r}")


def _features(coord, color, normal, color_range: str = "unit") -> np.ndarray:
    return np.concatenate([coord, scale_color(color, color_range), normal], 1).astype(np.float32)


def make_views(coord: np.ndarray, color: np.ndarray, normal: np.ndarray,
               params: ViewConfig, mask: MaskShape, rng: np.random.Generator,
               has_correspondence: Optional[np.ndarray] = None) -> dict:
    """All views of one sample.

    ``params``: the run's view settings; ``mask``: the cube-mask shape of this
    step (``MaskShape.at(cfg.mask, step, total)``).

    coord float32 [N,3], color uint8 [N,3], normal float32 [N,3];
    has_correspondence bool [N] (points seen by some image) or None.
    Returns numpy arrays: ``global_{coord,masked_coord,origin_coord,feat,mask,index}``
    concatenated over the global views with ``global_count`` int64 [G], and
    ``local_{coord,origin_coord,feat}`` with ``local_count`` [L]. The first global
    view is the principal view.
    """
    keep = grid_sample_random(coord, params.grid_size, rng)
    g_coord = coord[keep].astype(np.float32)
    g_color = drop_attribute(color[keep], rng, params.color_drop_all_prob,
                             params.color_drop_part_prob, params.color_drop_part_ratio)
    g_normal = drop_attribute(normal[keep].astype(np.float32), rng, params.normal_drop_all_prob,
                              params.normal_drop_part_prob, params.normal_drop_part_ratio)
    n = len(g_coord)
    max_size = min(params.max_points, n)

    def size_of(scale):
        return max(int(rng.uniform(*scale) * max_size), 1)

    seen = has_correspondence[keep] if has_correspondence is not None else None
    if seen is not None:  # released: with images, a fixed-size principal view
        center = g_coord[seen].mean(0) if seen.any() else g_coord[rng.integers(n)]
        principal = nearest_crop(g_coord, center, min(params.principal_max_points, n))
    else:
        principal = nearest_crop(g_coord, g_coord[rng.integers(n)], size_of(params.global_scale))
    global_idx = [principal]
    for _ in range(params.global_num - 1):
        global_idx.append(nearest_crop(g_coord, g_coord[principal[rng.integers(len(principal))]],
                                       size_of(params.global_scale)))
    covered = np.zeros(n, bool)
    local_idx = []
    for _ in range(params.local_num):
        free = principal[~covered[principal]]
        if len(free) == 0:
            covered[:] = False
            free = principal
        idx = nearest_crop(g_coord, g_coord[free[rng.integers(len(free))]], size_of(params.local_scale))
        covered[idx] = True
        local_idx.append(idx)

    shared_color = color_jitter(g_color, rng)
    out: dict = {}
    parts = {k: [] for k in ("coord", "masked_coord", "origin_coord", "feat", "mask", "index")}
    for idx in global_idx:
        c, nrm = geometric_augment(g_coord[idx], g_normal[idx], rng, params.elastic)
        masked = cube_mask(c, mask.size, mask.ratio, rng)
        parts["coord"].append(c)
        parts["masked_coord"].append(jitter_masked(c, masked, mask.jitter, rng, mask.jitter_clip))
        parts["origin_coord"].append(g_coord[idx])
        parts["feat"].append(_features(c, shared_color[idx], nrm, params.color_range))
        parts["mask"].append(masked)
        parts["index"].append(keep[idx])
    for k, v in parts.items():
        out[f"global_{k}"] = np.concatenate(v)
    out["global_count"] = np.array([len(i) for i in global_idx], np.int64)
    lparts = {k: [] for k in ("coord", "origin_coord", "feat")}
    for idx in local_idx:
        c, nrm = geometric_augment(g_coord[idx], g_normal[idx], rng, params.elastic)
        lparts["coord"].append(c)
        lparts["origin_coord"].append(g_coord[idx])
        lparts["feat"].append(_features(c, color_jitter(g_color[idx], rng), nrm, params.color_range))
    for k, v in lparts.items():
        out[f"local_{k}"] = np.concatenate(v)
    out["local_count"] = np.array([len(i) for i in local_idx], np.int64)
    return out
