"""Semantic-segmentation data protocol (numpy): Pointcept's training augmentations and test fragments.

Follows the defaults of Pointcept's ``configs/scannet/semseg-pt-v3m1-0-base.py``
(the Sonata / Concerto fine-tuning configs use the same pipeline):

training, in order: centre shift (x, y centred on the bounding box, min z 0);
random dropout of 20 % of the points with probability 0.2; rotation about z by
U(-1, 1) pi (p 0.5, about the origin), about x and y by U(-1/64, 1/64) pi
(p 0.5 each, about the bounding-box centre); scale U(0.9, 1.1); flip of x and
of y (p 0.5 each); jitter N(0, 0.005) clipped at 0.02 m; elastic distortion
((0.2, 0.4), (0.8, 1.6)) with p 0.95; chromatic auto-contrast (p 0.2),
translation (p 0.95, 5 %), jitter (p 0.95, std 0.05); grid sampling (a random
point per voxel); sphere crop to ``max_points`` around a random point; x, y centred
again (z kept); colours to [-1, 1].

test: centre shift, then for each of the augmentations (rotations about z by
0, 1/2, 1, 3/2 pi at scales 1, 0.95, 1.05, and a flip of x and y: 13) the cloud
is cut into *fragments*: fragment i takes the i-th point (cyclically) of every
voxel, so the fragments together cover every input point. Each fragment is
centred and run; softmax scores are summed per input point (``index``) and the
class is their argmax.

Features are 9 channels (coord, colour in [-1, 1], normal), as in pretraining.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from concerto.inference import center_shift, input_features
from concerto.ssl.views import _rotation, elastic_distortion

ELASTIC = ((0.2, 0.4), (0.8, 1.6))
# (z rotation in units of pi, scale) of the test-time augmentations, then one flip
TEST_AUGS = tuple((a, s) for s in (1.0, 0.95, 1.05) for a in (0.0, 0.5, 1.0, 1.5))


@dataclass
class Sample:
    """One network input: float32 coord [M, 3], feat [M, 9], int32 grid_coord [M, 3] >= 0,
    int64 label [M] (-1 unlabelled) and int64 index [M] (input row of each point)."""

    coord: np.ndarray
    feat: np.ndarray
    grid_coord: np.ndarray
    label: np.ndarray
    index: np.ndarray


def _voxels(coord: np.ndarray, grid_size: float) -> tuple[np.ndarray, np.ndarray]:
    """(voxel key int64 [N], grid coord int64 [N, 3] >= 0)."""
    cell = np.floor(coord / grid_size).astype(np.int64)
    cell -= cell.min(0)
    dims = cell.max(0) + 1
    return (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2], cell


def _center_xyz(coord: np.ndarray) -> np.ndarray:
    """x, y centred on the bounding box, z unchanged (Pointcept's CenterShift(apply_z=False))."""
    lo, hi = coord.min(0), coord.max(0)
    return coord - np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 0.0], coord.dtype)


def _chromatic(color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Auto-contrast (p 0.2, random blend), translation (p 0.95, +-5 %), jitter (p 0.95, std 5 %); [0, 255]."""
    color = color.astype(np.float32)
    if rng.random() < 0.2:
        lo, hi = color.min(0, keepdims=True), color.max(0, keepdims=True)
        diff = hi - lo
        if (diff > 0).any():
            scale = np.where(diff > 0, 255.0 / np.where(diff > 0, diff, 1.0), 1.0)
            blend = rng.random()
            color = (1 - blend) * color + blend * (color - lo) * scale
    if rng.random() < 0.95:
        color = np.clip(color + (rng.random((1, 3)) - 0.5) * 255 * 2 * 0.05, 0, 255)
    if rng.random() < 0.95:
        color = np.clip(color + rng.standard_normal(color.shape) * 0.05 * 255, 0, 255)
    return color.astype(np.float32)


def train_sample(coord: np.ndarray, color: np.ndarray, normal: np.ndarray, label: np.ndarray, grid_size: float,
                 rng: np.random.Generator, max_points: int = 102_400, keep: Optional[np.ndarray] = None,
                 elastic: tuple = ELASTIC) -> Sample:
    """One augmented, grid-sampled, cropped training sample (see module doc).

    ``keep``: input rows that dropout must not remove and grid sampling prefers in
    their voxel (the labelled points of a limited-annotation run, as Pointcept's
    ``sampled_index``; Pointcept adds them as extra points in occupied voxels,
    which our sparse convolutions cannot take: one point per voxel).
    """
    index = np.arange(len(coord))
    coord = center_shift(coord).astype(np.float64)
    normal = normal.astype(np.float64)
    if rng.random() < 0.2:
        sel = rng.choice(len(coord), int(len(coord) * 0.8), replace=False)
        if keep is not None:
            sel = np.union1d(sel, keep)
        sel = np.sort(sel)
        coord, normal, index = coord[sel], normal[sel], index[sel]
    rot = np.eye(3)
    if rng.random() < 0.5:
        rot = _rotation(2, rng.uniform(-1, 1) * np.pi)
        coord, normal = coord @ rot.T, normal @ rot.T
    for axis in (0, 1):
        if rng.random() < 0.5:
            r = _rotation(axis, rng.uniform(-1 / 64, 1 / 64) * np.pi)
            centre = (coord.min(0) + coord.max(0)) / 2
            coord, normal = (coord - centre) @ r.T + centre, normal @ r.T
    coord = coord * rng.uniform(0.9, 1.1)
    for axis in (0, 1):
        if rng.random() < 0.5:
            coord[:, axis], normal[:, axis] = -coord[:, axis], -normal[:, axis]
    coord = coord + np.clip(rng.normal(0, 0.005, coord.shape), -0.02, 0.02)
    if elastic and rng.random() < 0.95:
        for granularity, magnitude in elastic:
            coord = elastic_distortion(coord, granularity, magnitude, rng)
    col = _chromatic(color[index], rng)
    # grid sampling: a random point per voxel; a voxel holding a kept row keeps
    # that row instead (one point per voxel: the sparse convolutions need unique
    # voxels; two kept rows in one voxel keep the first of the permutation)
    key, cell = _voxels(coord, grid_size)
    perm = rng.permutation(len(coord))
    if keep is not None:
        perm = perm[np.argsort(~np.isin(index[perm], keep), kind="stable")]
    _, first = np.unique(key[perm], return_index=True)
    sel = np.sort(perm[first])
    if len(sel) > max_points:  # sphere crop around a random point
        c = coord[sel][rng.integers(len(sel))]
        sel = sel[np.argsort(np.square(coord[sel] - c).sum(1), kind="stable")[:max_points]]
    coord, normal, col, cell, index = coord[sel], normal[sel], col[sel], cell[sel], index[sel]
    coord = _center_xyz(coord)
    feat = input_features(coord.astype(np.float32), col, normal.astype(np.float32))
    return Sample(coord.astype(np.float32), feat, cell.astype(np.int32), np.asarray(label)[index].astype(np.int64),
                  index.astype(np.int64))


def voting_fragments(coord: np.ndarray, color: np.ndarray, normal: np.ndarray, grid_size: float,
                   augs: str = "full", max_fragments: Optional[int] = None) -> list[Sample]:
    """Every fragment of every test augmentation (see module doc); ``label`` is left empty.

    ``augs``: "full" (the 13 of Pointcept's test config) or "none" (identity only).
    ``max_fragments``: per augmentation, at most this many (None: all; each point
    is still covered only when all are kept).
    """
    if augs not in ("full", "none"):
        raise ValueError(f"test augmentations must be 'full' or 'none', got {augs!r}")
    base = center_shift(coord).astype(np.float64)
    col = color.astype(np.float32)
    plans = [(0.0, 1.0, False)] if augs == "none" else [(a, s, False) for a, s in TEST_AUGS] + [(0.0, 1.0, True)]
    out = []
    for angle, scale, flip in plans:
        rot = _rotation(2, angle * np.pi)
        c, n = base @ rot.T * scale, normal.astype(np.float64) @ rot.T
        if flip:
            c[:, :2], n[:, :2] = -c[:, :2], -n[:, :2]
        key, cell = _voxels(c, grid_size)
        order = np.argsort(key, kind="stable")
        _, start, count = np.unique(key[order], return_index=True, return_counts=True)
        frags = int(count.max()) if max_fragments is None else min(int(count.max()), max_fragments)
        for i in range(frags):
            idx = order[start + i % count]
            fc = _center_xyz(c[idx])
            out.append(Sample(fc.astype(np.float32), input_features(fc.astype(np.float32), col[idx], n[idx].astype(np.float32)),
                              cell[idx].astype(np.int32), np.zeros(0, np.int64), idx.astype(np.int64)))
    return out
