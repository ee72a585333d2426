"""The interface every render backend implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import trimesh

from preprocess.render.camera import check_camera
from preprocess.render.mesh_io import check_mesh


@dataclass
class RenderedView:
    """depth float32 [H, W]: z-depth in metres, NaN where the ray hits nothing;
    rgb uint8 [H, W, 3] surface colour (black where nothing is hit) or None when
    colour was not requested."""

    depth: np.ndarray
    rgb: Optional[np.ndarray] = None


class MeshRenderer:
    """Loads one mesh once and renders it from many cameras.

    Subclasses implement ``_render(K, pose, width, height)`` with K float64
    [3,3] and pose float64 [4,4] camera-to-world in OpenCV axes, already
    validated. Use as a context manager (or call ``close``) to free backend
    resources such as an OpenGL context.
    """

    name: str = "?"

    def __init__(self, mesh: trimesh.Trimesh, with_color: bool = True):
        check_mesh(mesh)
        self.mesh = mesh
        self.with_color = with_color

    def render(self, K: np.ndarray, pose: np.ndarray, width: int, height: int) -> RenderedView:
        K, pose = check_camera(K, pose, width, height)
        return self._render(K, pose, int(width), int(height))

    def render_many(self, K, poses: Iterable[np.ndarray], width: int, height: int) -> Iterator[RenderedView]:
        """K is one [3,3] shared by all views or a sequence of [3,3], one per pose."""
        poses = list(poses)
        Ks = _per_view_intrinsics(K, len(poses))
        for k, pose in zip(Ks, poses):
            yield self.render(k, pose, width, height)

    def _render(self, K: np.ndarray, pose: np.ndarray, width: int, height: int) -> RenderedView:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _per_view_intrinsics(K, n: int) -> list[np.ndarray]:
    K = np.asarray(K, dtype=np.float64)
    if K.shape == (3, 3):
        return [K] * n
    if K.ndim == 3 and K.shape[1:] == (3, 3) and K.shape[0] == n:
        return list(K)
    raise ValueError(f"K must be [3,3] or [{n},3,3] (one per pose), got {list(K.shape)}")


def depth_from_hits(distance: np.ndarray, z_per_metre: np.ndarray, hit: np.ndarray, height: int, width: int) -> np.ndarray:
    """Ray distances -> z-depth image float32 [H, W], NaN where ``hit`` is False."""
    depth = np.full(hit.shape, np.nan, dtype=np.float64)
    depth[hit] = distance[hit] * z_per_metre[hit]
    return depth.astype(np.float32).reshape(height, width)
