"""From a :class:`~concerto.demo.scan.Scan` to per-point features: inputs, normals, chunks, PCA.

- ``open_encoder``: ``concerto.inference.load`` for a checkpoint or released
  name, or a seeded random encoder for ``"random"``.
- ``model_inputs``: the colour and normal the encoder sees (a missing colour
  is black and a missing normal is estimated, or 0 on request; notes say so).
- ``estimate_normals``: PCA normals of the k nearest voxels, oriented.
- ``run_chunked``: a per-point function evaluated on spatial tiles of at most
  ``max_points`` occupied voxels (plus an overlap margin), for scans too big
  for one forward pass; ``embed_scan`` uses it for features.
- ``pca_basis`` / ``pca_project``: features reduced to fewer channels.

Coordinates are metres in the scan's own frame with z up; features float32 [N, C],
one row per input point (points sharing a voxel share its row).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

NORMAL_MODES = ("auto", "estimate", "zero")
ORIENTS = ("center", "up")


class DemoError(ValueError):
    """A bad option or input of a demo command; the message says which."""


def open_encoder(checkpoint: str, config: str = "tiny", seed: int = 0, device: str = "cpu", levels: int = 2):
    """An ``Encoder``: ``checkpoint`` is what ``concerto.load`` takes, or ``"random"`` (preset ``config``, ``seed``)."""
    from concerto.inference import load, random_encoder

    if checkpoint == "random":
        return random_encoder(config, seed=seed, device=device, levels=levels)
    return load(checkpoint, device=device, levels=levels)


# ----------------------------------------------------------------------------- normals


def estimate_normals(coord: np.ndarray, grid_size: float = 0.02, k: int = 16, orient: str = "center",
                     block: int = 200_000, progress: bool = False) -> np.ndarray:
    """float32 [N, 3] unit normals of a bare cloud ``coord`` [N, 3] metres.

    The cloud is reduced to one point per ``grid_size`` voxel (the encoder sees
    no finer detail); each voxel's normal is the smallest principal axis of its
    ``k`` nearest voxels (``preprocess.geometry.pca_normals``), shared by the
    voxel's points. ``orient``: ``"center"`` turns normals towards the cloud's
    bounding-box centre (a room scan: into the room, as mesh normals of indoor
    datasets face), ``"up"`` towards +z (the project's bare-cloud adapters).
    """
    from concerto.inference import canonical_grid_sample
    from preprocess.geometry import pca_normals

    if orient not in ORIENTS:
        raise DemoError(f"--normal-orient must be one of {ORIENTS}, got {orient!r}")
    coord = np.asarray(coord, np.float64)
    rows, _, inverse = canonical_grid_sample(coord, np.zeros((len(coord), 1), np.float32), grid_size)
    rep = coord[rows]
    if len(rep) < 3:
        return np.tile(np.array([0, 0, 1], np.float32), (len(coord), 1))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rep), desc="normals", unit="voxel", unit_scale=True, dynamic_ncols=True)
    try:
        normal = pca_normals(rep, min(k, len(rep)), block=block, on_block=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    if orient == "center":
        towards = (rep.min(0) + rep.max(0)) / 2 - rep
    else:
        towards = np.broadcast_to(np.array([0.0, 0.0, 1.0]), rep.shape)
    normal[(normal * towards).sum(1) < 0] *= -1
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    return normal[inverse].astype(np.float32)


def model_inputs(scan, grid_size: float, color: str = "auto", normals: str = "auto", orient: str = "center",
                 k: int = 16, progress: bool = False) -> tuple[Optional[np.ndarray], Optional[np.ndarray], list[str]]:
    """(color uint8 [N, 3] or None, normal float32 [N, 3] or None, notes) the encoder is given for ``scan``.

    ``color``: "auto" (the file's, black when it has none) or "zero" (black:
    pretraining dropped colour, so the encoder knows it). ``normals``: "auto"
    (the file's, estimated when it has none), "estimate" (always), "zero".
    """
    if color not in ("auto", "zero"):
        raise DemoError(f"--color must be 'auto' or 'zero', got {color!r}")
    if normals not in NORMAL_MODES:
        raise DemoError(f"--normals must be one of {NORMAL_MODES}, got {normals!r}")
    notes = list(scan.notes)
    col = scan.color if color == "auto" else None
    if color == "auto" and scan.color is None:
        notes.append(f"{scan.path.name}: no colour in the file; the encoder sees black (0), "
                     f"as pretraining's colour dropping showed it")
    nrm = scan.normal if normals == "auto" else None
    if normals == "estimate" or (normals == "auto" and scan.normal is None):
        nrm = estimate_normals(scan.coord, grid_size, k, orient, progress=progress)
        why = "no normals in the file" if scan.normal is None else "--normals estimate"
        notes.append(f"{scan.path.name}: {why}; estimated from the {k} nearest {grid_size:g} m voxels "
                     f"(oriented {'towards the centre' if orient == 'center' else 'up'})")
    elif normals == "zero":
        notes.append(f"{scan.path.name}: normals set to 0 (--normals zero)")
    return col, nrm, notes


# ----------------------------------------------------------------------------- chunks


@dataclass
class ChunkInfo:
    """How a scan was cut: number of tiles and the largest tile's occupied voxels (core + overlap)."""

    chunks: int
    max_voxels: int


def _voxel_count(coord: np.ndarray, grid_size: float) -> int:
    cell = np.floor(coord.astype(np.float64) / grid_size).astype(np.int64)
    cell -= cell.min(0)
    dims = cell.max(0) + 1
    return len(np.unique((cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]))


def plan_chunks(coord: np.ndarray, grid_size: float, max_points: int,
                overlap: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tiles of ``coord`` [N, 3] as (core rows, context rows) int64, sorted.

    The cores partition the points (every point in exactly one); a context is
    its core's x-y box grown by ``overlap`` metres (all heights), holding at
    most ``max_points`` occupied voxels. Boxes are halved at the median along
    their longer side until they fit.
    """
    if max_points < 1:
        raise DemoError(f"--max-points must be >= 1, got {max_points}")
    if overlap < 0:
        raise DemoError(f"--chunk-overlap must be >= 0 m, got {overlap}")
    xy = coord[:, :2].astype(np.float64)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    todo = [np.arange(len(coord))]
    while todo:
        core = todo.pop()
        lo, hi = xy[core].min(0) - overlap, xy[core].max(0) + overlap
        ctx = np.nonzero(((xy >= lo) & (xy <= hi)).all(1))[0]
        voxels = _voxel_count(coord[ctx], grid_size)
        if voxels <= max_points:
            out.append((core, ctx))
            continue
        span = xy[core].max(0) - xy[core].min(0)
        axis = int(np.argmax(span))
        if span[axis] < 2 * grid_size:
            raise DemoError(f"--max-points {max_points}: a {2 * overlap + span[axis]:.2f} m tile still holds "
                            f"{voxels} voxels; raise --max-points or lower --chunk-overlap")
        cut = np.median(xy[core, axis])
        left = core[xy[core, axis] <= cut]
        if len(left) in (0, len(core)):  # many points on the median: split by rank instead
            order = core[np.argsort(xy[core, axis], kind="stable")]
            left = np.sort(order[:len(order) // 2])
        right = np.setdiff1d(core, left, assume_unique=True)
        todo.extend([right, left])
    return out


def run_chunked(coord: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], grid_size: float,
                max_points: Optional[int] = None, overlap: float = 1.0,
                progress: bool = False) -> tuple[np.ndarray, ChunkInfo]:
    """``fn(rows)`` -> [len(rows), C] on the whole cloud, or per tile of ``plan_chunks`` (each point's row
    from its own tile's run, which also saw the tile's overlap) when ``max_points`` is given."""
    if max_points is None or _voxel_count(coord, grid_size) <= max_points:
        rows = np.arange(len(coord))
        return fn(rows), ChunkInfo(1, _voxel_count(coord, grid_size))
    plan = plan_chunks(coord, grid_size, max_points, overlap)
    out = None
    biggest = 0
    items = plan
    if progress:
        from tqdm import tqdm

        items = tqdm(plan, desc="chunks", unit="chunk", dynamic_ncols=True)
    for core, ctx in items:
        res = fn(ctx)
        if out is None:
            out = np.empty((len(coord),) + res.shape[1:], res.dtype)
        out[core] = res[np.searchsorted(ctx, core)]
        biggest = max(biggest, _voxel_count(coord[ctx], grid_size))
    return out, ChunkInfo(len(plan), biggest)


def embed_scan(encoder, coord: np.ndarray, color: Optional[np.ndarray], normal: Optional[np.ndarray],
               grid_size: Optional[float] = None, max_points: Optional[int] = None, overlap: float = 1.0,
               progress: bool = False) -> tuple[np.ndarray, ChunkInfo]:
    """float32 [N, C] features of one cloud (``Encoder.embed``), in tiles when ``max_points`` is given.

    Tiles are run in the whole cloud's frame: the same centre shift, voxel
    boundaries and grid coordinates as one pass over everything, so a tile
    differs from the whole only by what lies outside it (its attention windows
    and convolutions see less); one tile holding everything gives ``embed``'s
    result exactly.
    """
    gs = encoder.grid_size if grid_size is None else float(grid_size)
    if max_points is None:
        return encoder.embed(coord, color, normal, grid_size=gs, progress=None if progress else False), \
            ChunkInfo(1, _voxel_count(coord, gs))
    prepare = tile_preparer(coord, color, normal, gs, encoder.color_range)

    def fn(rows):
        prep = prepare(rows)
        return encoder._forward([prep]).cpu().numpy()[prep.inverse]

    return run_chunked(coord, fn, gs, max_points, overlap, progress)


def tile_preparer(coord: np.ndarray, color: Optional[np.ndarray], normal: Optional[np.ndarray], grid_size: float,
                  color_range: str = "unit") -> Callable[[np.ndarray], "PreparedCloud"]:
    """``prepare(rows)`` -> the model input (``concerto.inference.PreparedCloud``) of the points ``rows`` of
    the cloud, in the whole cloud's frame: its centre shift, voxel boundaries and grid coordinates. With every
    row it equals ``concerto.inference.prepare_cloud`` of the cloud."""
    from concerto.inference import PreparedCloud, canonical_grid_sample, center_shift, input_features

    shifted = center_shift(np.asarray(coord, np.float32))
    n = len(shifted)
    color = np.zeros((n, 3), np.float32) if color is None else color
    normal = np.zeros((n, 3), np.float32) if normal is None else np.asarray(normal, np.float32)
    cell_min = np.floor(shifted.astype(np.float64) / grid_size).astype(np.int64).min(0)

    def prepare(rows: np.ndarray) -> PreparedCloud:
        c = shifted[rows]
        feat = input_features(c, color[rows], normal[rows], color_range)
        chosen, grid, inverse = canonical_grid_sample(c, feat[:, 3:], grid_size)
        # canonical_grid_sample puts the tile's corner at 0: move it back to its place in the whole grid
        grid = grid + (np.floor(c.astype(np.float64) / grid_size).astype(np.int64).min(0) - cell_min).astype(np.int32)
        return PreparedCloud(c[chosen], feat[chosen], grid, inverse)

    return prepare


# ----------------------------------------------------------------------------- fewer channels


@dataclass
class PCABasis:
    """feat [N, C] -> (feat - mean) @ axes: mean float32 [C], axes float32 [C, K] (orthonormal columns)."""

    mean: np.ndarray
    axes: np.ndarray
    explained: np.ndarray  # float32 [K]: fraction of the variance along each axis

    def project(self, feat: np.ndarray) -> np.ndarray:
        return ((np.asarray(feat, np.float32) - self.mean) @ self.axes).astype(np.float32)


def pca_basis(feats: Sequence[np.ndarray], dims: int, max_fit_points: int = 200_000, seed: int = 0) -> PCABasis:
    """The top ``dims`` principal axes of the rows of ``feats`` (a seeded subsample of at most
    ``max_fit_points`` rows, drawn evenly from each array); each axis's largest loading is positive."""
    channels = feats[0].shape[1]
    if not 1 <= dims <= channels:
        raise DemoError(f"--pca-dims must be in [1, {channels}] (the encoder's channels), got {dims}")
    rng = np.random.default_rng(seed)
    per = max(1, max_fit_points // len(feats))
    fit = np.concatenate([f if len(f) <= per else f[rng.choice(len(f), per, replace=False)] for f in feats])
    fit = fit.astype(np.float64)
    mean = fit.mean(0)
    cov = np.cov(fit - mean, rowvar=False).reshape(channels, channels)
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    axes = vecs[:, :dims]
    signs = np.sign(axes[np.abs(axes).argmax(0), np.arange(dims)])
    axes = axes * np.where(signs == 0, 1.0, signs)
    explained = np.clip(vals[:dims], 0, None) / max(float(np.clip(vals, 0, None).sum()), 1e-12)
    return PCABasis(mean.astype(np.float32), axes.astype(np.float32), explained.astype(np.float32))
