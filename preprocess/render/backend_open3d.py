"""Open3D ray casting (``o3d.t.geometry.RaycastingScene``, Embree inside, CPU)."""
from __future__ import annotations

import numpy as np
import trimesh

from preprocess.render.base import MeshRenderer, RenderedView, depth_from_hits
from preprocess.render.camera import world_rays
from preprocess.render.mesh_io import SurfaceColors


class Open3DRenderer(MeshRenderer):
    name = "open3d"

    def __init__(self, mesh: trimesh.Trimesh, with_color: bool = True, nthreads: int = 0):
        super().__init__(mesh, with_color)
        import open3d as o3d

        self._o3d = o3d
        self._nthreads = nthreads  # 0 = all cores
        self._faces = np.asarray(mesh.faces, dtype=np.int64)
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(
            o3d.core.Tensor(np.ascontiguousarray(mesh.vertices, dtype=np.float32)),
            o3d.core.Tensor(np.ascontiguousarray(mesh.faces, dtype=np.uint32)),
        )
        self._colors = SurfaceColors.of(mesh) if with_color else None

    def _render(self, K, pose, width, height) -> RenderedView:
        o3d = self._o3d
        origins, directions, z_per_metre = world_rays(K, pose, width, height)
        rays = np.concatenate([origins, directions], axis=1).astype(np.float32)
        out = self._scene.cast_rays(o3d.core.Tensor(rays), nthreads=self._nthreads)
        distance = out["t_hit"].numpy().astype(np.float64)
        hit = np.isfinite(distance)
        depth = depth_from_hits(distance, z_per_metre, hit, height, width)
        rgb = None
        if self._colors is not None:
            tri = out["primitive_ids"].numpy()[hit].astype(np.int64)
            uv = out["primitive_uvs"].numpy()[hit].astype(np.float64)
            bary = np.stack([1.0 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)
            rgb = np.zeros((height * width, 3), np.uint8)
            rgb[hit] = self._colors.at(self._faces, tri, bary)
            rgb = rgb.reshape(height, width, 3)
        return RenderedView(depth=depth, rgb=rgb)
