"""Point <-> pixel correspondences by projection and a depth check (Concerto A.2).

A point X (world, metres) is seen by a frame when, with ``world_to_camera`` =
inv(pose) and OpenCV axes,

- its camera-space depth z > 0 (in front of the camera),
- its projection (u, v) = K X_cam / z falls in pixel (col, row) =
  (floor(u + 0.5), floor(v + 0.5)) inside the image (pixel centres at integer
  coordinates, see ``preprocess.scene``),
- the frame's z-depth D at that pixel is valid (not NaN, > 0), and
- |D(row, col) - z| < eps (strict; eps in metres).

Every point projects to exactly one pixel, so each frame's ``Correspondence``
holds each seen point once, sorted by point index.

``reference_correspondence`` is the variant of the released preprocessing
scripts (unproject every depth pixel, nearest cloud point within a radius via a
KD-tree); ``correspondence_agreement`` measures how far the two agree.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy.spatial import cKDTree

from pipelines.records import Correspondence
from preprocess.scene import Frame, Scene, validate_frame

# Point-views (points x frames) processed per vectorised step. Each float64
# temporary of that size is 8 MB and a step holds about eight of them, so the
# working set stays under ~100 MB whatever the cloud and frame counts are.
DEFAULT_POINT_VIEWS_PER_STEP = 1 << 20


def project_points(coord: np.ndarray, K: np.ndarray, world_to_camera: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection.

    coord [N,3] world metres; K [3,3]; world_to_camera [4,4] (OpenCV axes).
    Returns uv float64 [N,2] (u = column, v = row; pixel centres at integers)
    and z float64 [N], the camera-space depth. Points with z <= 0 get uv = NaN
    (they are behind or on the camera plane and have no image position).
    """
    coord = np.asarray(coord, dtype=np.float64).reshape(-1, 3)
    P = np.asarray(K, np.float64) @ np.asarray(world_to_camera, np.float64)[:3, :4]
    uvw = coord @ P[:, :3].T + P[:, 3]
    # K's last row is [0, 0, 1], so the homogeneous coordinate is the z-depth.
    z = uvw[:, 2].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / z[:, None]
    uv[z <= 0] = np.nan
    return uv, z


def _projection_matrices(frames: Sequence[Frame]) -> np.ndarray:
    """[F,3,4] float64: K @ world_to_camera[:3] per frame."""
    out = np.empty((len(frames), 3, 4))
    for i, frame in enumerate(frames):
        out[i] = frame.K.astype(np.float64) @ frame.world_to_camera()[:3, :4]
    return out


def _check_frames(scene_key: str, frames: Sequence[Frame], offset: int = 0) -> None:
    for i, frame in enumerate(frames):
        validate_frame(scene_key, offset + i, frame, require_depth=True)


def _depth_check_block(
    coord: np.ndarray,
    proj: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    depths: Sequence[np.ndarray],
    eps: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The depth check for a block of points against a block of frames.

    coord float64 [C,3]; proj [B,3,4]; heights/widths int64 [B]; depths: the B
    depth maps float32 [H_b, W_b]. Returns (frame_in_block, point_in_chunk, col,
    row) of the kept pairs, ordered by frame, then point.
    """
    B, C = proj.shape[0], coord.shape[0]
    # Homogeneous image coordinates of every point in every frame, [B, 3, C];
    # float64 so that pixel rounding and the eps test match a per-point
    # evaluation. einsum (no BLAS: a k=3 product through multithreaded BLAS
    # ran 2-8x slower than one thread on a shared 2-core machine) over a
    # contiguous [3, C] copy of the coordinates (strided input is 25x slower).
    hom = np.einsum("brk,kc->brc", proj[:, :, :3], np.ascontiguousarray(coord.T))
    hom += proj[:, :, 3, None]
    z = hom[:, 2]
    uv = hom[:, :2]
    # In place: (u, v) -> floor(u / z + 0.5), floor(v / z + 0.5), the pixel.
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(uv, z[:, None, :], out=uv)
    uv += 0.5
    np.floor(uv, out=uv)
    col, row = hom[:, 0], hom[:, 1]
    # z <= 0 gave inf/NaN above; the z test drops those before any cast.
    inside = z > 0
    inside &= col >= 0
    inside &= row >= 0
    inside &= col < widths[:, None]
    inside &= row < heights[:, None]
    flat = np.flatnonzero(inside)
    fb, pc = np.divmod(flat, C)
    zs = z.reshape(-1)[flat]
    col = col.reshape(-1)[flat].astype(np.int64)
    row = row.reshape(-1)[flat].astype(np.int64)
    # Entries are ordered by frame (row-major nonzero over [B, C]), so each
    # frame's depth lookups are one contiguous slice: gather from its own map
    # rather than copying all maps into one array.
    d = np.empty(len(fb), np.float64)
    bounds = np.searchsorted(fb, np.arange(len(depths) + 1))
    for b, depth in enumerate(depths):
        s, e = bounds[b], bounds[b + 1]
        d[s:e] = depth[row[s:e], col[s:e]]
    # NaN compares false, so invalid depth drops out here.
    keep = (d > 0) & (np.abs(d - zs) < eps)
    return fb[keep], pc[keep], col[keep], row[keep]


def _auto_chunk(n_frames: int, chunk_points: Optional[int]) -> int:
    if chunk_points is not None:
        if chunk_points < 1:
            raise ValueError(f"chunk_points must be >= 1, got {chunk_points}")
        return int(chunk_points)
    return max(1024, DEFAULT_POINT_VIEWS_PER_STEP // max(n_frames, 1))


def _frame_blocks(frames: Sequence[Frame], chunk_points: int) -> list[tuple[int, int]]:
    """Split frames into [start, stop) blocks so one block's point-view working
    set (block frames x chunk_points) stays within the per-step budget."""
    per_block = max(1, DEFAULT_POINT_VIEWS_PER_STEP // chunk_points)
    return [(s, min(s + per_block, len(frames))) for s in range(0, len(frames), per_block)]


def _correspond_frames(coord: np.ndarray, frames: Sequence[Frame], eps: float, chunk_points: Optional[int]) -> list[Correspondence]:
    """Depth-checked correspondences of every frame (frames already validated)."""
    n = coord.shape[0]
    if not frames:
        return []
    if not (eps > 0):
        raise ValueError(f"eps must be > 0 metres, got {eps}")
    chunk = _auto_chunk(len(frames), chunk_points)
    out: list[Correspondence] = []
    for start, stop in _frame_blocks(frames, chunk):
        block = frames[start:stop]
        proj = _projection_matrices(block)
        heights = np.array([f.height for f in block], np.int64)
        widths = np.array([f.width for f in block], np.int64)
        depths = [f.depth for f in block]
        # Results go straight into per-frame lists in their final compact dtypes
        # (8 bytes a pair): peak memory is the output plus one step's working
        # set. Chunks come in increasing point order, so points stay ascending.
        pts_parts = [[] for _ in block]
        pix_parts = [[] for _ in block]
        for p0 in range(0, n, chunk):
            xyz = coord[p0 : p0 + chunk].astype(np.float64)
            fb, pc, col, row = _depth_check_block(xyz, proj, heights, widths, depths, eps)
            bounds = np.searchsorted(fb, np.arange(len(block) + 1))
            for b in range(len(block)):
                s, e = bounds[b], bounds[b + 1]
                if e > s:
                    pts_parts[b].append((pc[s:e] + p0).astype(np.int32))
                    pix_parts[b].append(np.stack([col[s:e], row[s:e]], axis=1).astype(np.uint16))
            del fb, pc, col, row
        for b in range(len(block)):
            if pts_parts[b]:
                out.append(Correspondence(np.concatenate(pts_parts[b]), np.concatenate(pix_parts[b])))
            else:
                out.append(Correspondence.empty())
            pts_parts[b] = pix_parts[b] = None  # free the pieces frame by frame
    return out


def frame_correspondence(coord: np.ndarray, frame: Frame, eps: float = 0.01, scene_key: str = "<unnamed>") -> Correspondence:
    """Depth-checked correspondences of one frame.

    coord float [N,3] world metres; frame with depth (z-depth, NaN invalid).
    Returns point_index int32 [M] ascending and pixel uint16 [M,2] (u, v).
    Raises SceneValidationError (naming ``scene_key``) for a bad frame.
    """
    _check_frames(scene_key, [frame])
    coord = np.asarray(coord).reshape(-1, 3)
    return _correspond_frames(coord, [frame], eps, None)[0]


def scene_correspondences(scene: Scene, eps: float = 0.01, chunk_points: Optional[int] = None, validate: bool = True) -> list[Correspondence]:
    """Depth-checked correspondences of every frame of ``scene`` (list aligned
    with scene.frames).

    Work is vectorised over blocks of frames x chunks of points, each step at most
    ~2M point-views, so memory stays bounded for millions of points and hundreds
    of frames (``chunk_points`` overrides the points per step). With
    ``validate`` the scene is checked first (depth required): a NaN pose or a depth
    map whose shape differs from its image raises SceneValidationError naming the
    scene and the frame.
    """
    if validate:
        scene.validate(require_depth=True)
    return _correspond_frames(scene.points.coord, scene.frames, eps, chunk_points)


# --------------------------------------------------------------------------
# The released scripts' variant: unproject depth, nearest cloud point.


def unproject_depth(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """World positions of every valid depth pixel.

    Returns pixel int64 [P,2] (u = col, v = row), in row-major order, and
    xyz float64 [P,3] = pose @ (D * K^-1 [u, v, 1]).
    """
    depth = frame.depth
    rows, cols = np.nonzero(np.isfinite(depth) & (depth > 0))
    d = depth[rows, cols].astype(np.float64)
    Kinv = np.linalg.inv(frame.K.astype(np.float64))
    rays = np.stack([cols, rows, np.ones_like(cols)], axis=1).astype(np.float64) @ Kinv.T
    cam = rays * (d / rays[:, 2])[:, None]  # scale so the z component is the z-depth
    pose = frame.pose.astype(np.float64)
    xyz = cam @ pose[:3, :3].T + pose[:3, 3]
    return np.stack([cols, rows], axis=1), xyz


def reference_pixel_matches(coord: np.ndarray, frame: Frame, radius: float = 0.01, tree: Optional[cKDTree] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every valid depth pixel's nearest cloud point within ``radius`` metres.

    Returns (pixel int64 [P,2] (u, v), point int64 [P], distance float64 [P]) for
    the pixels that found a point; a point may be matched by several pixels.
    """
    if tree is None:
        tree = cKDTree(np.asarray(coord, np.float64))
    pixel, xyz = unproject_depth(frame)
    dist, idx = tree.query(xyz, k=1, distance_upper_bound=radius)
    hit = dist < radius
    return pixel[hit], idx[hit].astype(np.int64), dist[hit]


def reference_correspondence(
    coord: np.ndarray,
    frame: Frame,
    radius: float = 0.01,
    tree: Optional[cKDTree] = None,
    dedupe: bool = True,
    scene_key: str = "<unnamed>",
) -> Correspondence:
    """Correspondences the way the released preprocessing scripts make them:
    unproject every valid depth pixel to world, keep the nearest cloud point if
    closer than ``radius`` metres (scipy cKDTree).

    One point per pixel, but a point can be the nearest of several pixels. With
    ``dedupe`` (default) each point keeps only its closest pixel (ties: lowest
    row-major pixel), so the result has the same shape of content as the
    depth-check method (each point once, ascending). With ``dedupe=False`` all
    pixel pairs are returned, sorted by (point, row-major pixel).
    ``tree`` lets callers reuse one KD-tree over ``coord`` for many frames.
    """
    _check_frames(scene_key, [frame])
    pixel, point, dist = reference_pixel_matches(coord, frame, radius, tree)
    flat = pixel[:, 1] * frame.width + pixel[:, 0]
    if dedupe:
        order = np.lexsort((flat, dist, point))
        point, pixel = point[order], pixel[order]
        first = np.ones(len(point), bool)
        first[1:] = point[1:] != point[:-1]
        point, pixel = point[first], pixel[first]
    else:
        order = np.lexsort((flat, point))
        point, pixel = point[order], pixel[order]
    return Correspondence(point.astype(np.int32), pixel.astype(np.uint16))


def correspondence_agreement(scene: Scene, eps: float = 0.01, radius: float = 0.01) -> dict:
    """How far the depth check and the KD-tree method agree on ``scene``.

    Per frame and overall:
    - depth_pairs / kdtree_pixels: pairs found by the depth check; depth pixels
      matched to some point by the KD-tree method;
    - depth_points / kdtree_points: distinct points each method sees;
    - pair_agreement: fraction of depth-check pairs (point p at pixel x) for which
      the KD-tree method matched pixel x to the same point p;
    - point_iou: |seen by both| / |seen by either|; point_recall_of_kdtree:
      fraction of KD-tree points the depth check also sees.
    Overall ratios are pooled over frames (sums of counts), not averaged.
    """
    scene.validate(require_depth=True)
    coord = scene.points.coord
    depth_corr = scene_correspondences(scene, eps=eps, validate=False)
    tree = cKDTree(coord.astype(np.float64)) if scene.frames else None
    per_frame = []
    tot = dict(depth_pairs=0, kdtree_pixels=0, same_pixel_same_point=0, both_points=0, either_points=0, kdtree_points=0, depth_points=0)
    for frame, dc in zip(scene.frames, depth_corr):
        pix, pts, _ = reference_pixel_matches(coord, frame, radius, tree)
        # Pixel -> point map of the KD-tree method (-1: no match).
        pmap = np.full((frame.height, frame.width), -1, np.int64)
        pmap[pix[:, 1], pix[:, 0]] = pts
        dpix = dc.pixel.astype(np.int64)
        same = int(np.count_nonzero(pmap[dpix[:, 1], dpix[:, 0]] == dc.point_index))
        kd_points = np.unique(pts)
        d_points = dc.point_index.astype(np.int64)  # already unique and sorted
        both = int(np.intersect1d(kd_points, d_points, assume_unique=True).size)
        either = int(kd_points.size + d_points.size - both)
        row = dict(
            frame=frame.name,
            depth_pairs=len(dc),
            kdtree_pixels=int(len(pts)),
            depth_points=int(d_points.size),
            kdtree_points=int(kd_points.size),
            same_pixel_same_point=same,
            both_points=both,
            either_points=either,
        )
        row.update(_ratios(row))
        per_frame.append(row)
        for k in tot:
            tot[k] += row[k]
    overall = dict(tot)
    overall.update(_ratios(tot))
    return dict(scene=scene.key, eps=eps, radius=radius, frames=per_frame, overall=overall)


def _ratios(c: dict) -> dict:
    def div(a, b):
        return float(a) / b if b else float("nan")

    return dict(
        pair_agreement=div(c["same_pixel_same_point"], c["depth_pairs"]),
        point_iou=div(c["both_points"], c["either_points"]),
        point_recall_of_kdtree=div(c["both_points"], c["kdtree_points"]),
    )
