"""trimesh + embreex ray casting (``RayMeshIntersector.intersects_first``).

Embree reports only the first triangle hit; the hit distance is recomputed here
in float64 from that triangle's plane, so depth does not inherit Embree's
float32 rounding.
"""
from __future__ import annotations

import numpy as np
import trimesh

from preprocess.render.base import MeshRenderer, RenderedView, depth_from_hits
from preprocess.render.camera import world_rays
from preprocess.render.mesh_io import SurfaceColors, barycentric


class EmbreeRenderer(MeshRenderer):
    name = "embree"

    def __init__(self, mesh: trimesh.Trimesh, with_color: bool = True):
        super().__init__(mesh, with_color)
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        self._intersector = RayMeshIntersector(mesh)
        self._faces = np.asarray(mesh.faces, dtype=np.int64)
        tris = np.asarray(mesh.vertices, dtype=np.float64)[self._faces]
        self._v0 = tris[:, 0]
        self._e1 = tris[:, 1] - tris[:, 0]
        self._e2 = tris[:, 2] - tris[:, 0]
        self._normal = np.cross(self._e1, self._e2)  # unnormalised
        self._colors = SurfaceColors.of(mesh) if with_color else None

    def _render(self, K, pose, width, height) -> RenderedView:
        origins, directions, z_per_metre = world_rays(K, pose, width, height)
        tri = np.asarray(self._intersector.intersects_first(origins, directions), dtype=np.int64)
        hit = tri >= 0
        t = tri[hit]
        o, d = origins[hit], directions[hit]
        n = self._normal[t]
        distance = np.zeros(len(hit))
        distance[hit] = np.einsum("ij,ij->i", n, self._v0[t] - o) / np.einsum("ij,ij->i", n, d)
        depth = depth_from_hits(distance, z_per_metre, hit, height, width)
        rgb = None
        if self._colors is not None:
            rgb = np.zeros((height * width, 3), np.uint8)
            if hit.any():
                bary = barycentric(o + distance[hit, None] * d - self._v0[t], self._e1[t], self._e2[t])
                rgb[hit] = self._colors.at(self._faces, t, bary)
            rgb = rgb.reshape(height, width, 3)
        return RenderedView(depth=depth, rgb=rgb)

