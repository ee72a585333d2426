"""Loading meshes for rendering, and the colour a ray sees where it hits one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import trimesh


class MeshLoadError(ValueError):
    """A mesh file that cannot be rendered; the message names the file."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"mesh file '{path}': {message}")


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Read a triangle mesh (PLY, OBJ, GLB, ...) without reprocessing it, so vertex
    order and per-face colours survive. Multi-part files (GLB scenes) are merged
    in world coordinates. Raises MeshLoadError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MeshLoadError(path, "file does not exist")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many exception types for bad files
        raise MeshLoadError(path, f"cannot read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshLoadError(path, f"does not contain a triangle mesh (got {type(mesh).__name__})")
    try:
        check_mesh(mesh)
    except ValueError as exc:
        raise MeshLoadError(path, str(exc)) from exc
    return mesh


def check_mesh(mesh: trimesh.Trimesh) -> None:
    """Raise ValueError if the mesh cannot be rendered (no faces, bad indices,
    non-finite vertices)."""
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise ValueError(f"empty mesh ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces)")
    faces = np.asarray(mesh.faces)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be triangles [F,3], got {list(faces.shape)}")
    if faces.min() < 0 or faces.max() >= len(mesh.vertices):
        raise ValueError("face indices out of range")
    if not np.isfinite(np.asarray(mesh.vertices)).all():
        raise ValueError("vertices contain NaN/inf")


@dataclass
class SurfaceColors:
    """Colours a renderer reads at a hit: per face (flat) or per vertex
    (interpolated with barycentric weights). Exactly one of the two is set."""

    face: Optional[np.ndarray] = None  # uint8 [F, 3]
    vertex: Optional[np.ndarray] = None  # float64 [V, 3]

    @staticmethod
    def of(mesh: trimesh.Trimesh) -> "SurfaceColors":
        visual = mesh.visual
        if getattr(visual, "kind", None) == "texture":
            # Sample the texture at the vertices: coarse, but every backend then
            # sees the same per-vertex colours.
            visual = visual.to_color()
        if getattr(visual, "kind", None) == "vertex":
            return SurfaceColors(vertex=np.asarray(visual.vertex_colors)[:, :3].astype(np.float64))
        # "face", or no colours at all (trimesh then reports its default grey per face)
        return SurfaceColors(face=np.asarray(visual.face_colors)[:, :3].astype(np.uint8))

    def at(self, faces: np.ndarray, triangle: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """uint8 [N, 3] colour at hits on ``triangle`` int [N] with barycentric
        weights ``bary`` float [N, 3] of the triangle's vertices (in order)."""
        if self.face is not None:
            return self.face[triangle]
        corner = self.vertex[faces[triangle]]  # [N, 3 corners, 3 channels]
        rgb = np.einsum("nk,nkc->nc", bary, corner)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def mesh_with_color_visual(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The mesh with texture visuals replaced by per-vertex colours (what the
    ray casters use), so a rasteriser renders the same colours."""
    if getattr(mesh.visual, "kind", None) == "texture":
        mesh = mesh.copy()
        mesh.visual = mesh.visual.to_color()
    return mesh


def barycentric(p: np.ndarray, e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """Weights [N, 3] of (v0, v1, v2) for points p - v0 [N, 3] in the planes of the triangles
    with edges e1 = v1 - v0, e2 = v2 - v0 [N, 3] (clipped to [0, 1])."""
    d11 = np.einsum("ij,ij->i", e1, e1)
    d12 = np.einsum("ij,ij->i", e1, e2)
    d22 = np.einsum("ij,ij->i", e2, e2)
    p1 = np.einsum("ij,ij->i", p, e1)
    p2 = np.einsum("ij,ij->i", p, e2)
    den = d11 * d22 - d12 * d12
    den = np.where(den == 0, 1.0, den)
    u = (d22 * p1 - d12 * p2) / den
    v = (d11 * p2 - d12 * p1) / den
    return np.clip(np.stack([1.0 - u - v, u, v], axis=1), 0.0, 1.0)
