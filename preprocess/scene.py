"""The scene record: the one structure every dataset adapter produces.

Conventions (every adapter converts to these; nothing downstream knows the source):

- Units are metres.
- ``PointCloud.coord`` float32 [N, 3] in the scene's world frame.
- ``Frame.pose`` float32 [4, 4] is **camera-to-world** in **OpenCV axes**
  (x right, y down, z forward). ``world_to_camera = inv(pose)``.
- ``Frame.K`` float32 [3, 3] pinhole intrinsics in pixels. Pixel centres sit at
  integer coordinates (OpenCV): pixel (row r, col c) is centred at (u=c, v=r),
  so a projected point (u, v) falls in pixel ``(floor(v + 0.5), floor(u + 0.5))``
  and renderers cast the ray of pixel (r, c) through K^-1 [c, r, 1].
- ``Frame.depth`` float32 [H, W] is z-depth (distance along the optical axis,
  not along the ray) in metres; pixels without a measurement are ``NaN``, never 0.
  ``None`` means "not yet produced": the renderer fills it from the scene's mesh.
- Labels: ``segment`` / ``instance`` int32 [N], ``-1`` = unlabelled.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from preprocess.geometry import rigid_inverse

ORTHONORMAL_TOL = 1e-3


class SceneError(RuntimeError):
    """A stage could not produce a scene from its inputs (a dataset file missing
    or malformed, a mesh that does not render). Names the scene and what failed;
    each stage raises its own subclass (``preprocess.sources.SourceError``,
    ``preprocess.render.complete_depth.SceneRenderError``)."""

    def __init__(self, scene: str, what: str, message: str):
        self.scene = scene
        self.what = what
        super().__init__(f"scene '{scene}': {what}: {message}")


class SceneValidationError(ValueError):
    """Bad input in a scene record. Always names the scene and the field."""

    def __init__(self, scene: str, field: str, message: str):
        self.scene = scene
        self.field = field
        self.message = message
        super().__init__(f"scene '{scene}': field '{field}': {message}")


@dataclass
class PointCloud:
    """coord float32 [N,3] m; color uint8 [N,3]; normal float32 [N,3] unit;
    segment / instance int32 [N] (-1 unlabelled) or None."""

    coord: np.ndarray
    color: np.ndarray
    normal: np.ndarray
    segment: Optional[np.ndarray] = None
    instance: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.coord.shape[0])


@dataclass
class Frame:
    """One posed image. rgb uint8 [H,W,3]; depth float32 [H,W] z-depth in m, NaN
    invalid (None until rendered); K float32 [3,3]; pose float32 [4,4]
    camera-to-world, OpenCV axes."""

    name: str
    rgb: np.ndarray
    K: np.ndarray
    pose: np.ndarray
    depth: Optional[np.ndarray] = None

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def world_to_camera(self) -> np.ndarray:
        """[4,4] float64 rigid inverse of ``pose``."""
        return rigid_inverse(self.pose)


@dataclass
class Scene:
    """A scene: one point cloud and its posed frames.

    ``scene_id`` is unique within its ``source`` (e.g. source "scannet", id
    "scene0000_00"); ``key`` = "source/scene_id" is unique in a store.
    ``mesh_path`` is the ground-truth mesh used to render missing depth.
    ``content_hash`` identifies the raw inputs (see ``preprocess.sources.base``).
    """

    scene_id: str
    source: str
    points: PointCloud
    frames: list[Frame] = field(default_factory=list)
    mesh_path: Optional[Path] = None
    content_hash: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.source}/{self.scene_id}"

    def replace(self, **changes) -> "Scene":
        return dataclasses.replace(self, **changes)

    def validate(self, require_depth: bool = False) -> "Scene":
        """Check shapes, dtypes and values; raise SceneValidationError naming the
        scene and the field. Returns self so calls can be chained."""
        validate_points(self.key, self.points)
        for i, frame in enumerate(self.frames):
            validate_frame(self.key, i, frame, require_depth=require_depth)
        return self


def _fail(scene: str, field_name: str, message: str):
    raise SceneValidationError(scene, field_name, message)


def _check_array(scene, name, arr, dtype, shape):
    """shape: tuple with None for free dims; ints must match."""
    if not isinstance(arr, np.ndarray):
        _fail(scene, name, f"expected a numpy array, got {type(arr).__name__}")
    if arr.dtype != dtype:
        _fail(scene, name, f"expected dtype {np.dtype(dtype)}, got {arr.dtype}")
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        _fail(scene, name, f"expected shape {want}, got {list(arr.shape)}")


def validate_points(scene: str, pc: PointCloud) -> None:
    _check_array(scene, "points.coord", pc.coord, np.float32, (None, 3))
    n = pc.coord.shape[0]
    if n == 0:
        _fail(scene, "points.coord", "empty point cloud")
    bad = ~np.isfinite(pc.coord).all(axis=1)
    if bad.any():
        _fail(scene, "points.coord", f"{int(bad.sum())} points have NaN/inf coordinates (first at index {int(np.argmax(bad))})")
    _check_array(scene, "points.color", pc.color, np.uint8, (n, 3))
    _check_array(scene, "points.normal", pc.normal, np.float32, (n, 3))
    if not np.isfinite(pc.normal).all():
        _fail(scene, "points.normal", "NaN/inf normals")
    for name in ("segment", "instance"):
        arr = getattr(pc, name)
        if arr is not None:
            _check_array(scene, f"points.{name}", arr, np.int32, (n,))


def validate_frame(scene: str, index: int, frame: Frame, require_depth: bool = False) -> None:
    p = f"frames[{index}:{frame.name}]"
    _check_array(scene, f"{p}.rgb", frame.rgb, np.uint8, (None, None, 3))
    h, w = frame.rgb.shape[:2]
    if h == 0 or w == 0:
        _fail(scene, f"{p}.rgb", "empty image")
    _check_array(scene, f"{p}.K", frame.K, np.float32, (3, 3))
    if not np.isfinite(frame.K).all():
        _fail(scene, f"{p}.K", "NaN/inf intrinsics")
    if frame.K[0, 0] <= 0 or frame.K[1, 1] <= 0:
        _fail(scene, f"{p}.K", f"focal lengths must be positive, got fx={frame.K[0, 0]}, fy={frame.K[1, 1]}")
    if not np.allclose(frame.K[2], [0, 0, 1]):
        _fail(scene, f"{p}.K", f"last row must be [0, 0, 1], got {frame.K[2].tolist()}")
    _check_array(scene, f"{p}.pose", frame.pose, np.float32, (4, 4))
    if not np.isfinite(frame.pose).all():
        _fail(scene, f"{p}.pose", "NaN/inf in camera-to-world pose")
    if not np.allclose(frame.pose[3], [0, 0, 0, 1], atol=1e-6):
        _fail(scene, f"{p}.pose", f"last row must be [0, 0, 0, 1], got {frame.pose[3].tolist()}")
    R = frame.pose[:3, :3].astype(np.float64)
    err = np.abs(R @ R.T - np.eye(3)).max()
    if err > ORTHONORMAL_TOL:
        _fail(scene, f"{p}.pose", f"rotation is not orthonormal (max |R R^T - I| = {err:.3g})")
    if np.linalg.det(R) < 0:
        _fail(scene, f"{p}.pose", "rotation has determinant -1 (a reflection, not a rotation)")
    if frame.depth is None:
        if require_depth:
            _fail(scene, f"{p}.depth", "depth missing (not rendered)")
        return
    _check_array(scene, f"{p}.depth", frame.depth, np.float32, (h, w))
    d = frame.depth
    if np.isinf(d).any():
        _fail(scene, f"{p}.depth", "inf depth values (mark invalid pixels with NaN)")
    valid = d[~np.isnan(d)]
    if (valid <= 0).any():
        _fail(scene, f"{p}.depth", "non-positive depth values (mark invalid pixels with NaN, never 0)")
