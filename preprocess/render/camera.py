"""Camera maths shared by every render backend (pure numpy).

Conventions (see ``preprocess.scene``): K [3,3] pinhole intrinsics in pixels with
pixel centres at integer coordinates, so the ray of pixel (row r, col c) goes
through K^-1 [c, r, 1]; pose [4,4] camera-to-world in OpenCV axes (x right,
y down, z forward); depth is z-depth (along the optical axis) in metres.
"""
from __future__ import annotations

import functools

import numpy as np

# OpenCV camera (x right, y down, z forward) -> OpenGL camera (x right, y up, z back).
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


class CameraError(ValueError):
    """Bad camera input (intrinsics, pose or image size)."""


def check_camera(K: np.ndarray, pose: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one camera; return (K, pose) as float64 [3,3] and [4,4]."""
    K = np.asarray(K, dtype=np.float64)
    pose = np.asarray(pose, dtype=np.float64)
    if K.shape != (3, 3):
        raise CameraError(f"K must be [3,3], got {list(K.shape)}")
    if pose.shape != (4, 4):
        raise CameraError(f"pose must be [4,4], got {list(pose.shape)}")
    if not (np.isfinite(K).all() and np.isfinite(pose).all()):
        raise CameraError("K and pose must be finite")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CameraError(f"focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise CameraError(f"K's last row must be [0, 0, 1], got {K[2].tolist()}")
    R = pose[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-3 or np.linalg.det(R) < 0:
        raise CameraError("pose rotation is not a proper rotation matrix")
    if int(width) <= 0 or int(height) <= 0:
        raise CameraError(f"image size must be positive, got {width}x{height}")
    return K, pose


def camera_ray_directions(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unnormalised ray directions in the camera frame, float64 [H, W, 3]:
    d(r, c) = K^-1 [c, r, 1] (so d_z = 1 for a K with last row [0, 0, 1])."""
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([cols, rows, np.ones_like(cols)], axis=-1)
    return pix @ np.linalg.inv(K).T


def world_rays(K: np.ndarray, pose: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rays of every pixel in world coordinates.

    Returns origins float64 [H*W, 3], unit directions float64 [H*W, 3] and
    ``z_per_metre`` float64 [H*W]: the z-depth gained per metre travelled along
    the ray, so ``z_depth = ray_distance * z_per_metre``.
    """
    d_cam, z_per_metre = _unit_camera_rays(np.asarray(K, np.float64).tobytes(), int(width), int(height))
    directions = d_cam @ np.asarray(pose[:3, :3], np.float64).T
    origins = np.broadcast_to(np.asarray(pose[:3, 3], np.float64), directions.shape)
    return origins, directions, z_per_metre


@functools.lru_cache(maxsize=8)
def _unit_camera_rays(K_bytes: bytes, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Cached per camera model: unit directions [H*W,3] and their z components
    (a video's frames share one K, so this is computed once, not per frame)."""
    K = np.frombuffer(K_bytes, np.float64).reshape(3, 3)
    d_cam = camera_ray_directions(K, width, height).reshape(-1, 3)
    d_cam /= np.linalg.norm(d_cam, axis=1)[:, None]
    d_cam.setflags(write=False)
    z = d_cam[:, 2].copy()
    z.setflags(write=False)
    return d_cam, z


def opencv_to_opengl_pose(pose: np.ndarray) -> np.ndarray:
    """Camera-to-world pose with OpenCV camera axes -> the same camera with
    OpenGL axes (looking down -z, y up), as pyrender expects."""
    return np.asarray(pose, dtype=np.float64) @ CV_TO_GL
