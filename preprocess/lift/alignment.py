"""Lift-specific geometry: what turns VGGT predictions into a scene record.

VGGT's pose encoding <-> cameras, the confidence mask, the world alignment of a
walk-through (first camera z-up, height scale, RANSAC floor fit and floor
alignment), and cloud post-processing (normals, voxel subsample). numpy,
float64 inside. Generic camera geometry (projection, poses, rotations, the
depth-checked visibility test, PCA normals) is ``preprocess.geometry``; its conventions
apply here. VGGT quaternions are (x, y, z, w), scalar last.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from preprocess.geometry import matrix_to_quaternion, pca_normals, quaternion_to_matrix, rotate, rotation_between, similarity


# --- VGGT cameras ------------------------------------------------------------

def pose_encoding_to_cameras(pose_enc: np.ndarray, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """VGGT pose encoding [S, 9] (t 3, quat xyzw 4, fov_h, fov_w) of images of
    size (H, W) -> (extrinsics [S,3,4] camera-from-world, intrinsics [S,3,3]).

    fx = (W/2) / tan(fov_w/2), fy = (H/2) / tan(fov_h/2); principal point at the
    image centre (W/2, H/2), as in VGGT."""
    pose_enc = np.asarray(pose_enc, dtype=np.float64)
    if pose_enc.ndim != 2 or pose_enc.shape[1] != 9:
        raise ValueError(f"pose encoding must be [S, 9], got {list(pose_enc.shape)}")
    H, W = image_hw
    R = quaternion_to_matrix(pose_enc[:, 3:7], scalar_first=False)
    extr = np.concatenate([R, pose_enc[:, :3, None]], axis=2)
    fov_h, fov_w = pose_enc[:, 7], pose_enc[:, 8]
    K = np.zeros((len(pose_enc), 3, 3))
    K[:, 0, 0] = (W / 2.0) / np.tan(fov_w / 2.0)
    K[:, 1, 1] = (H / 2.0) / np.tan(fov_h / 2.0)
    K[:, 0, 2] = W / 2.0
    K[:, 1, 2] = H / 2.0
    K[:, 2, 2] = 1.0
    return extr, K


def cameras_to_pose_encoding(extrinsics: np.ndarray, intrinsics: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of ``pose_encoding_to_cameras`` (principal point is dropped)."""
    extrinsics = np.asarray(extrinsics, np.float64)
    intrinsics = np.asarray(intrinsics, np.float64)
    H, W = image_hw
    q = matrix_to_quaternion(extrinsics[:, :3, :3], scalar_first=False)
    fov_h = 2 * np.arctan((H / 2.0) / intrinsics[:, 1, 1])
    fov_w = 2 * np.arctan((W / 2.0) / intrinsics[:, 0, 0])
    return np.concatenate([extrinsics[:, :3, 3], q, fov_h[:, None], fov_w[:, None]], axis=1)


def confidence_mask(conf: np.ndarray, threshold: Optional[float] = None,
                    percentile: Optional[float] = None) -> np.ndarray:
    """Pixels to keep: conf >= ``threshold`` (absolute; VGGT confidences are
    >= 1) and/or conf >= the ``percentile``-th percentile of this batch (the
    VGGT demo keeps the top 50 %). NaN/inf confidences are dropped."""
    conf = np.asarray(conf)
    keep = np.isfinite(conf)
    if threshold is not None:
        keep &= conf >= threshold
    if percentile is not None and keep.any():
        keep &= conf >= np.percentile(conf[np.isfinite(conf)], percentile)
    return keep


# --- scale and floor ---------------------------------------------------------

# OpenCV camera (y down, z forward) -> z-up world: x stays, forward becomes +y,
# down becomes -z. A rotation of -90 degrees about x.
OPENCV_TO_ZUP = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])


def first_camera_zup(pose0: np.ndarray) -> np.ndarray:
    """[4,4] rigid transform putting the world in the first camera's frame,
    then z-up (the camera's -y becomes +z, its viewing direction +y). Cameras
    of walk-through videos are roughly level, so this is a gravity guess that
    floor alignment then refines."""
    T = np.eye(4)
    T[:3, :3] = OPENCV_TO_ZUP
    return T @ np.linalg.inv(np.asarray(pose0, np.float64))


def height_scale(z: np.ndarray, target_height: float = 3.0, percentile: float = 0.0) -> float:
    """Factor making the z extent of the points ``target_height`` metres. With
    ``percentile`` p > 0 the extent is taken between the p-th and (100-p)-th
    percentiles (robust to stray points); p = 0 is max - min (the reference)."""
    z = np.asarray(z, np.float64)
    lo, hi = (np.percentile(z, [percentile, 100 - percentile]) if percentile > 0 else (z.min(), z.max()))
    extent = hi - lo
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError(f"cannot normalise scale: z extent is {extent}")
    return float(target_height / extent)


@dataclass
class FloorFit:
    normal: np.ndarray  # [3] unit, pointing up (n_z > 0)
    offset: float  # plane n.x + offset = 0
    inliers: np.ndarray  # indices into the points given
    angle_deg: float  # angle between normal and +z


class FloorNotFound(ValueError):
    pass


def fit_plane_ransac(points: np.ndarray, threshold: float, iterations: int, rng: np.random.Generator,
                     score_points: int = 4096) -> tuple[np.ndarray, float, np.ndarray]:
    """RANSAC plane through 3 points: (unit normal, offset, inlier indices).

    Hypotheses are scored on a random subset of ``score_points`` points (the
    inlier fraction of a subset of a few thousand is within about 1 % of the
    full count), the winner is refined by least squares on its inliers among
    all points."""
    points = np.asarray(points, np.float64)
    n = len(points)
    if n < 3:
        raise FloorNotFound(f"need at least 3 points to fit a plane, got {n}")
    tri = rng.integers(0, n, size=(iterations, 3))
    a, b, c = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    normals = np.cross(b - a, c - a)
    norms = np.linalg.norm(normals, axis=1)
    valid = norms > 1e-12
    if not valid.any():
        raise FloorNotFound("all sampled point triples were degenerate")
    normals = normals[valid] / norms[valid, None]
    offsets = -np.einsum("ij,ij->i", normals, a[valid])
    sample = points if n <= score_points else points[rng.choice(n, score_points, replace=False)]
    counts = np.zeros(len(normals), np.int64)
    for s in range(0, len(normals), 256):  # bounded [256, score_points] temporaries
        d = np.einsum("kj,nj->kn", normals[s:s + 256], sample) + offsets[s:s + 256, None]
        counts[s:s + 256] = (np.abs(d) < threshold).sum(axis=1)
    k = int(np.argmax(counts))
    normal, offset = normals[k], float(offsets[k])
    inl = np.nonzero(np.abs(rotate(points, normal[None])[:, 0] + offset) < threshold)[0]
    if len(inl) >= 3:  # least-squares refinement
        centroid = points[inl].mean(axis=0)
        _, _, Vt = np.linalg.svd(points[inl] - centroid, full_matrices=False)
        refined = Vt[-1]
        if refined @ normal < 0:
            refined = -refined
        normal, offset = refined, float(-refined @ centroid)
        inl = np.nonzero(np.abs(rotate(points, normal[None])[:, 0] + offset) < threshold)[0]
    return normal, offset, inl


def fit_floor(points: np.ndarray, lowest_fraction: float = 0.2, threshold: float = 0.01,
              iterations: int = 1000, max_angle_deg: float = 40.0, max_trials: int = 6,
              seed: int = 0) -> FloorFit:
    """Floor plane of a z-up cloud: RANSAC on the lowest ``lowest_fraction`` of
    points by z; a plane tilted more than ``max_angle_deg`` from horizontal is
    discarded with its inliers and the search repeated (up to ``max_trials``),
    as in the Concerto RE10K preprocessing."""
    points = np.asarray(points, np.float64)
    z = points[:, 2]
    low = np.nonzero(z <= np.percentile(z, 100 * lowest_fraction))[0]
    rng = np.random.default_rng(seed)
    remaining = low
    for _ in range(max_trials):
        if len(remaining) < 3:
            break
        normal, offset, inl = fit_plane_ransac(points[remaining], threshold, iterations, rng)
        if normal[2] < 0:
            normal, offset = -normal, -offset
        angle = float(np.degrees(np.arccos(np.clip(normal[2], -1.0, 1.0))))
        if angle <= max_angle_deg:
            return FloorFit(normal, offset, remaining[inl], angle)
        remaining = np.setdiff1d(remaining, remaining[inl])
    raise FloorNotFound(f"no plane within {max_angle_deg:g} degrees of horizontal among the lowest "
                        f"{100 * lowest_fraction:.0f}% of points after {max_trials} trials")


def floor_alignment(points: np.ndarray, fit: Optional[FloorFit] = None, **fit_kwargs) -> tuple[np.ndarray, FloorFit]:
    """[4,4] rigid transform rotating the floor normal onto +z and moving the
    floor (mean height of its inliers) to z = 0."""
    points = np.asarray(points, np.float64)
    fit = fit or fit_floor(points, **fit_kwargs)
    R = rotation_between(fit.normal, [0.0, 0.0, 1.0])
    z = rotate(points[fit.inliers], R)[:, 2]
    return similarity(R, (0.0, 0.0, -float(z.mean()))), fit


# --- normals, subsampling ----------------------------------------------------

NORMAL_BACKENDS = ("auto", "numpy", "open3d")


def estimate_normals(points: np.ndarray, k: int = 16, viewpoints: Optional[np.ndarray] = None,
                     backend: str = "auto") -> np.ndarray:
    """Unit normals [N, 3] by PCA of the k nearest neighbours; when
    ``viewpoints`` [N, 3] (the camera centre each point was seen from) is given,
    each normal is flipped to face its viewpoint.

    backend: "numpy" (scipy KD-tree + batched eigh), "open3d" (same PCA in
    open3d, about 2x faster), "auto" (open3d when installed, else numpy). Both
    compute the same normals up to sign, which the orientation step fixes."""
    if backend not in NORMAL_BACKENDS:
        raise ValueError(f"normal backend must be one of {NORMAL_BACKENDS}, got {backend!r}")
    points = np.asarray(points, np.float64)
    n = len(points)
    if n == 0:
        return np.zeros((0, 3), np.float32)
    k = max(3, min(k, n))
    normals = None
    if backend in ("auto", "open3d"):
        try:
            import open3d as o3d
        except ImportError:
            if backend == "open3d":
                raise
        else:
            pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
            pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(k))
            normals = np.asarray(pcd.normals).copy()
    if normals is None:
        normals = pca_normals(points, k)
    if viewpoints is not None:
        flip = np.einsum("ij,ij->i", normals, np.asarray(viewpoints) - points) < 0
        normals[flip] *= -1
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return normals.astype(np.float32)


def voxel_subsample(points: np.ndarray, voxel: float, priority: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices keeping one point per ``voxel``-sized cell: the one with the
    highest ``priority`` (e.g. confidence), else the first. Sorted ascending."""
    points = np.asarray(points, np.float64)
    if len(points) == 0:
        return np.zeros(0, np.int64)
    cells = np.floor((points - points.min(axis=0)) / voxel).astype(np.int64)
    dims = cells.max(axis=0) + 1
    if np.prod(dims.astype(np.float64)) < 2.0 ** 62:  # one int64 key per cell: 1D sort, fast
        keys = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
    else:  # astronomically large extent: rows as keys
        keys = np.unique(cells, axis=0, return_inverse=True)[1].reshape(-1)
    order = np.argsort(-priority, kind="stable") if priority is not None else np.arange(len(points))
    _, first = np.unique(keys[order], return_index=True)
    return np.sort(order[first])
