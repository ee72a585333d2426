"""Where the four cameras of a room go: intrinsics, yaws, position jitter (pure).

Reference setting (Concerto's HM3D preprocessing): HFOV 90 deg, 720x720, f = 360,
four views 90 deg apart from a random initial yaw, camera at a room cell centre
jittered by up to 0.25 m.
"""
from __future__ import annotations

import numpy as np

from preprocess.habitat.poses import opencv_pose_from_yaw


def intrinsics_from_hfov(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """K float32 [3,3] of a pinhole camera with horizontal FOV ``hfov_deg`` and
    square pixels (habitat's sensor model): fx = fy = (W/2) / tan(hfov/2).

    The principal point is the image centre in this project's convention (pixel
    centres at integer coordinates), ((W-1)/2, (H-1)/2): the ray of the image's
    middle is the optical axis of habitat's symmetric frustum. (The reference
    script writes (W/2, H/2), half a pixel off under this convention.)
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"hfov must be in (0, 180) degrees, got {hfov_deg}")
    f = (width / 2.0) / np.tan(np.deg2rad(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]], dtype=np.float32)


def view_yaws(rng: np.random.Generator, num_views: int = 4) -> np.ndarray:
    """``num_views`` yaws (radians, float64) evenly spaced around the circle,
    starting at a uniform random yaw in [0, 2 pi / num_views)."""
    if num_views < 1:
        raise ValueError(f"num_views must be >= 1, got {num_views}")
    step = 2.0 * np.pi / num_views
    return rng.uniform(0.0, step) + step * np.arange(num_views)


def jitter_offsets(rng: np.random.Generator, max_jitter: float, count: int) -> np.ndarray:
    """``count`` horizontal offsets float64 [count, 2], each coordinate uniform in
    [-max_jitter, max_jitter] metres (tried in order until one is navigable)."""
    return rng.uniform(-max_jitter, max_jitter, size=(count, 2))


def room_camera_poses(position_glb, yaws) -> np.ndarray:
    """float32 [N,4,4] camera-to-world poses (OpenCV axes, GLB Z-up world) of
    level cameras at ``position_glb`` [3] turned to each yaw."""
    return np.stack([opencv_pose_from_yaw(position_glb, y) for y in np.asarray(yaws, dtype=np.float64)]).astype(np.float32)
