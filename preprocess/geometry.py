"""Camera geometry of the whole project (numpy, float64 inside): the one place
for projection, unprojection, camera poses, rotations, the depth-checked
visibility test and point-cloud normal estimation.

Conventions (those of ``preprocess.scene``):

- metres; world frame z up where a stage needs an up direction;
- OpenCV camera axes: x right, y down, z forward;
- ``pose`` = camera-to-world [4,4]; ``extrinsic`` = world-to-camera [3|4,4];
- K [3,3] with last row [0, 0, 1] (skew allowed), so the homogeneous image
  coordinate is the camera-space z-depth;
- pixel centres at integer coordinates: (u, v) = (column, row) falls in pixel
  (floor(u + 0.5), floor(v + 0.5));
- depth maps hold z-depth, NaN (or <= 0) = invalid;
- quaternions are Hamilton, (w, x, y, z) scalar first by default;
  ``scalar_first=False`` reads/writes (x, y, z, w) as VGGT and scipy do.

The visibility test is Concerto's (appendix A.2): a point is seen by a frame
when it is in front of the camera, its pixel is inside the image, the stored
depth D there is valid and |D - z| < eps, with one default eps
(``DEPTH_EPS``) for every stage.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

# Depth agreement of the visibility test, metres (Concerto A.2: |D(x, y) - z| < eps).
DEPTH_EPS = 0.01


def rotate(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """[..., 3] rows times M^T -> [..., 3]. einsum, not ``@``: numpy's matmul
    with an inner size of 3 is about 10x slower on large point arrays."""
    return np.einsum("...j,ij->...i", points, M)


# --- rotations ---------------------------------------------------------------

def quaternion_to_matrix(q, scalar_first: bool = True) -> np.ndarray:
    """[..., 4] quaternion, any non-zero norm -> [..., 3, 3] rotation.
    (w, x, y, z) when ``scalar_first`` (COLMAP, habitat), else (x, y, z, w)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    if scalar_first:
        w, x, y, z = np.moveaxis(q, -1, 0)
    else:
        x, y, z, w = np.moveaxis(q, -1, 0)
    R = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], axis=-1)
    return R.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R: np.ndarray, scalar_first: bool = True) -> np.ndarray:
    """[..., 3, 3] rotation -> [..., 4] unit quaternion with w >= 0, order as
    in ``quaternion_to_matrix``."""
    from scipy.spatial.transform import Rotation

    R = np.asarray(R, dtype=np.float64)
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat()  # scipy: (x, y, z, w)
    q = np.where(q[:, 3:4] < 0, -q, q)
    if scalar_first:
        q = q[:, [3, 0, 1, 2]]
    return q.reshape(R.shape[:-2] + (4,))


def axis_angle_to_matrix(axis, angle: float) -> np.ndarray:
    """[3,3] rotation by ``angle`` radians about ``axis`` (any norm; Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * (K @ K)


def rotvec_to_matrix(rotvec) -> np.ndarray:
    """Rotation vector [3] (unit axis * angle, radians) -> [3,3]."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    theta = float(np.linalg.norm(rotvec))
    if theta < 1e-12:
        return np.eye(3)
    return axis_angle_to_matrix(rotvec, theta)


def orthonormalize(R: np.ndarray) -> np.ndarray:
    """Nearest rotation (SVD, det +1) to [..., 3, 3]; removes float32 round-off drift."""
    U, _, Vt = np.linalg.svd(np.asarray(R, dtype=np.float64))
    D = np.ones(U.shape[:-1])
    D[..., -1] = np.sign(np.linalg.det(U @ Vt))
    return (U * D[..., None, :]) @ Vt


def rotation_between(a, b) -> np.ndarray:
    """[3,3] smallest rotation taking direction ``a`` onto ``b`` (any norms)."""
    a = np.asarray(a, np.float64) / np.linalg.norm(a)
    b = np.asarray(b, np.float64) / np.linalg.norm(b)
    axis = np.cross(a, b)
    s = np.linalg.norm(axis)
    c = float(np.clip(a @ b, -1.0, 1.0))
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        # opposite: rotate pi about any axis perpendicular to a
        perp = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        return axis_angle_to_matrix(perp, np.pi)
    return axis_angle_to_matrix(axis / s, np.arctan2(s, c))


# --- rigid / similarity transforms -------------------------------------------

def rigid_inverse(T: np.ndarray) -> np.ndarray:
    """[..., 3|4, 4] rigid transform -> [..., 4, 4] inverse (R^T, -R^T t).
    camera-to-world pose <-> world-to-camera extrinsic."""
    T = np.asarray(T, np.float64)
    R, t = T[..., :3, :3], T[..., :3, 3]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros(T.shape[:-2] + (4, 4))
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def extrinsic_to_pose(extrinsic: np.ndarray) -> np.ndarray:
    """world-to-camera [..., 3|4, 4] -> camera-to-world [..., 4, 4]."""
    return rigid_inverse(extrinsic)


def pose_to_extrinsic(pose: np.ndarray) -> np.ndarray:
    """camera-to-world [..., 4, 4] -> world-to-camera [..., 3, 4]."""
    return rigid_inverse(pose)[..., :3, :]


def similarity(R: np.ndarray = np.eye(3), t=(0.0, 0.0, 0.0), scale: float = 1.0) -> np.ndarray:
    """[4,4] x -> scale * (R x) + t."""
    T = np.eye(4)
    T[:3, :3] = scale * np.asarray(R, np.float64)
    T[:3, 3] = t
    return T


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a [4,4] similarity/rigid T to [N, 3] points."""
    T = np.asarray(T, np.float64)
    return rotate(np.asarray(points, np.float64), T[:3, :3]) + T[:3, 3]


def transform_poses(T: np.ndarray, poses: np.ndarray) -> np.ndarray:
    """Camera-to-world poses [S,4,4] after the world moves by similarity T
    (x -> s R x + t): rotation R @ R_c, centre T(c). Depth then scales by s."""
    T = np.asarray(T, np.float64)
    s = np.cbrt(np.linalg.det(T[:3, :3]))
    R = T[:3, :3] / s
    out = np.array(poses, dtype=np.float64, copy=True)
    out[:, :3, :3] = R @ out[:, :3, :3]
    out[:, :3, 3] = transform_points(T, out[:, :3, 3])
    return out


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """float64 [4,4] camera-to-world pose (OpenCV axes) of a camera at ``eye``
    looking at ``target``: z towards the target, x = z cross up (image 'down'
    follows -up). Looking along ``up``, x = z cross world +x instead."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-8:
        x = np.cross(z, [1.0, 0.0, 0.0])
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


# --- projection --------------------------------------------------------------

def projection_matrix(K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """[3,4] float64 K @ world_to_camera[:3] of a camera-to-world ``pose``."""
    return np.asarray(K, np.float64) @ rigid_inverse(pose)[:3, :4]


def project(points: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points [N,3] -> (uv float64 [N,2] (u = column, v = row), z float64
    [N] camera-space depth) for a camera-to-world ``pose``. Points with z <= 0
    get uv = NaN (behind or on the camera plane: no image position)."""
    P = projection_matrix(K, pose)
    uvw = rotate(np.asarray(points, np.float64).reshape(-1, 3), P[:, :3]) + P[:, 3]
    z = uvw[:, 2].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[:, :2] / z[:, None]
    uv[~(z > 0)] = np.nan
    return uv, z


def unproject(uv: np.ndarray, z: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Pixels uv [..., 2] (u = column, v = row) at z-depth z [...] -> world
    points [..., 3] for a camera-to-world ``pose`` (inverse of ``project``)."""
    K = np.asarray(K, np.float64)
    u, v = np.asarray(uv, np.float64)[..., 0], np.asarray(uv, np.float64)[..., 1]
    z = np.asarray(z, np.float64)
    y = (v - K[1, 2]) / K[1, 1]
    x = (u - K[0, 2] - K[0, 1] * y) / K[0, 0]
    cam = np.stack([x * z, y * z, z], axis=-1)
    pose = np.asarray(pose, np.float64)
    return rotate(cam, pose[:3, :3]) + pose[:3, 3]


def unproject_depth(depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """z-depth map [H, W] -> world points [H, W, 3] (NaN where depth is NaN);
    pixel (row r, col c) is (u, v) = (c, r)."""
    H, W = np.shape(depth)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return unproject(np.stack([u, v], axis=-1), depth, K, pose)


# --- the depth-checked visibility test ----------------------------------------

def depth_check(
    points: np.ndarray,
    proj: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    depths: Sequence[np.ndarray],
    eps: float = DEPTH_EPS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which of C points each of B depth maps sees (Concerto A.2).

    points float64 [C,3] world; proj [B,3,4] (``projection_matrix`` per frame);
    heights/widths int [B]; depths: B z-depth maps [H_b, W_b] (NaN/<=0 invalid);
    eps metres. A point is seen when z > 0, its pixel (floor(u+0.5),
    floor(v+0.5)) is inside the image, D there is valid and |D - z| < eps.
    Returns (frame, point, col, row) int64 of the seen pairs, ordered by frame,
    then point. Work and memory are B x C float64: callers chunk.
    """
    proj = np.asarray(proj, np.float64)
    C = points.shape[0]
    # Homogeneous image coordinates of every point in every frame, [B, 3, C];
    # float64 so that pixel rounding and the eps test match a per-point
    # evaluation. einsum, not BLAS: a k=3 product through multithreaded BLAS
    # ran 2-8x slower than one thread on a shared 2-core machine; over a
    # contiguous [3, C] copy of the points (strided input is 25x slower).
    hom = np.einsum("brk,kc->brc", proj[:, :, :3], np.ascontiguousarray(points.T))
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
    inside &= col < np.asarray(widths)[:, None]
    inside &= row < np.asarray(heights)[:, None]
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


def depth_visibility(points: np.ndarray, K: np.ndarray, pose: np.ndarray, depth: np.ndarray,
                     eps: float = DEPTH_EPS) -> tuple[np.ndarray, np.ndarray]:
    """``depth_check`` of one camera-to-world view: (mask [N] bool, pixel
    [N, 2] int64 (u, v), -1 where not seen)."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    H, W = depth.shape
    _, idx, col, row = depth_check(points, projection_matrix(K, pose)[None], np.array([H]), np.array([W]),
                                   [depth], eps)
    vis = np.zeros(len(points), bool)
    vis[idx] = True
    pix = np.full((len(points), 2), -1, np.int64)
    pix[idx, 0], pix[idx, 1] = col, row
    return vis, pix


# --- point clouds -------------------------------------------------------------

def pca_normals(points: np.ndarray, k: int, block: Optional[int] = None,
                on_block: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """[N, 3] unit normals, sign arbitrary: the smallest-eigenvalue eigenvector of
    the covariance of each point's k nearest neighbours (points float64 [N, 3]).

    ``block``: query that many points at a time (one tree for all), so the
    [block, k, 3] neighbour array bounds the memory; the result is the same.
    ``on_block(n)`` is called after each block with the points it finished (progress)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(points, balanced_tree=False, compact_nodes=False)
    step = max(1, len(points) if block is None else int(block))
    out = np.empty((len(points), 3), np.float64)
    for s in range(0, len(points), step):
        _, nn = tree.query(points[s:s + step], k=k)
        nbrs = points[nn]  # [B, k, 3]
        centred = nbrs - nbrs.mean(axis=1, keepdims=True)
        cov = centred.transpose(0, 2, 1) @ centred  # batched 3x3: fine with matmul
        _, vecs = np.linalg.eigh(cov)
        out[s:s + step] = vecs[:, :, 0]  # eigenvector of the smallest eigenvalue
        if on_block is not None:
            on_block(len(nn))
    return out
