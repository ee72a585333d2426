"""An HM3D house as trimesh reads it: textured parts in the GLB (Z-up) world,
surface sampling with texture colours, semantic annotations, room groups.

HM3D files of one scene (``<split>/<NNNNN>-<hash>/``):
  ``<hash>.glb``           textured mesh (JPEG/PNG textures; what trimesh reads)
  ``<hash>.basis.glb``     the same mesh with Basis-compressed textures (habitat)
  ``<hash>.basis.navmesh`` habitat's navigation mesh
  ``<hash>.semantic.glb``  optional: the mesh painted with one colour per object
  ``<hash>.semantic.txt``  optional: ``HM3D Semantic Annotations`` header, then
                           ``object_id,HEXCOLOUR,"category",region_id`` per line
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import trimesh

from preprocess.render.mesh_io import MeshLoadError

# Reference preprocessing takes rooms from GLB chunk names "<x>_group<G>_sub<S>_...".
NODE_ROOM_PATTERN = re.compile(r"group(\d+)_sub(\d+)")


@dataclass
class MeshPart:
    """One geometry of the GLB in world coordinates. Colour source, in order of
    preference: ``texture`` (uint8 [h,w,3]) at ``uv`` [V,2] (v up, trimesh's
    convention), ``vertex_colors`` uint8 [V,3], ``face_colors`` uint8 [F,3]."""

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    uv: Optional[np.ndarray] = None
    texture: Optional[np.ndarray] = None
    vertex_colors: Optional[np.ndarray] = None
    face_colors: Optional[np.ndarray] = None


@dataclass
class SurfaceSamples:
    """Points on a HouseMesh: point float64 [N,3] (GLB world, m), normal float32
    [N,3] (face normal), face int64 [N] (merged face index), bary float64 [N,3]."""

    point: np.ndarray
    normal: np.ndarray
    face: np.ndarray
    bary: np.ndarray


@dataclass
class HouseMesh:
    """All parts merged: ``vertices`` float64 [V,3], ``faces`` int64 [F,3],
    ``face_part`` int32 [F] and the parts themselves for colour lookups."""

    parts: list[MeshPart]
    vertices: np.ndarray = field(init=False)
    faces: np.ndarray = field(init=False)
    face_part: np.ndarray = field(init=False)

    def __post_init__(self):
        if not self.parts:
            raise ValueError("house mesh has no triangle geometry")
        v_off = np.cumsum([0] + [len(p.vertices) for p in self.parts])
        self.vertices = np.concatenate([p.vertices for p in self.parts]).astype(np.float64)
        self.faces = np.concatenate([p.faces + o for p, o in zip(self.parts, v_off)]).astype(np.int64)
        self.face_part = np.concatenate([np.full(len(p.faces), i, np.int32) for i, p in enumerate(self.parts)])
        self._face_start = np.cumsum([0] + [len(p.faces) for p in self.parts])
        tri = self.vertices[self.faces]
        cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        self.face_area = 0.5 * np.linalg.norm(cross, axis=1)
        self.face_normal = (cross / np.maximum(2.0 * self.face_area, 1e-20)[:, None]).astype(np.float32)

    @property
    def has_texture(self) -> bool:
        return any(p.texture is not None and p.uv is not None for p in self.parts)

    @property
    def face_centroid(self) -> np.ndarray:
        return self.vertices[self.faces].mean(axis=1)

    def colors_at(self, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """uint8 [N,3] surface colour at merged faces ``face`` [N] with barycentric
        weights ``bary`` [N,3]: texture (nearest texel), else interpolated vertex
        colour, else face colour, else grey."""
        face = np.asarray(face, dtype=np.int64)
        out = np.full((len(face), 3), 128, np.uint8)
        part_of = self.face_part[face]
        for pi in np.unique(part_of):
            sel = np.nonzero(part_of == pi)[0]
            part = self.parts[pi]
            local = face[sel] - self._face_start[pi]
            corners = part.faces[local]  # [n,3] local vertex ids
            w = bary[sel]
            if part.texture is not None and part.uv is not None:
                uv = np.einsum("nk,nkc->nc", w, part.uv[corners])
                out[sel] = texture_lookup(part.texture, uv)
            elif part.vertex_colors is not None:
                rgb = np.einsum("nk,nkc->nc", w, part.vertex_colors[corners].astype(np.float64))
                out[sel] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
            elif part.face_colors is not None:
                out[sel] = part.face_colors[local]
        return out

    def vertex_colored_trimesh(self) -> trimesh.Trimesh:
        """The merged mesh with one colour per vertex (texture read at the
        vertices' uv) for the project's renderers, which colour by vertex or face."""
        cols = np.full((len(self.vertices), 3), 128, np.uint8)
        start = 0
        for part in self.parts:
            n = len(part.vertices)
            if part.texture is not None and part.uv is not None:
                cols[start : start + n] = texture_lookup(part.texture, part.uv)
            elif part.vertex_colors is not None:
                cols[start : start + n] = part.vertex_colors
            elif part.face_colors is not None:
                # a vertex takes the colour of (one of) its faces
                cols[start + part.faces.reshape(-1)] = np.repeat(part.face_colors, 3, axis=0)
            start += n
        rgba = np.concatenate([cols, np.full((len(cols), 1), 255, np.uint8)], axis=1)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=rgba, process=False)

    def sample_surface(self, spacing: float, rng: np.random.Generator, face_mask: Optional[np.ndarray] = None,
                       oversample: float = 2.0, thin: bool = True) -> SurfaceSamples:
        """Area-uniform random points on the faces in ``face_mask`` (all if None):
        ``oversample * area / spacing^2`` of them, then (``thin``) one point kept
        per cube of side ``spacing`` so the cloud has the grid density of a 0.02 m
        GridSample. Without ``thin`` each sample stands for spacing^2 / oversample m^2."""
        faces = np.arange(len(self.faces)) if face_mask is None else np.nonzero(face_mask)[0]
        area = self.face_area[faces]
        total = float(area.sum())
        n = int(np.ceil(oversample * total / spacing**2)) if total > 0 else 0
        if n == 0:
            return SurfaceSamples(np.zeros((0, 3)), np.zeros((0, 3), np.float32), np.zeros(0, np.int64), np.zeros((0, 3)))
        face = faces[np.searchsorted(np.cumsum(area) / total, rng.random(n), side="right").clip(0, len(faces) - 1)]
        r1, r2 = rng.random(n), rng.random(n)
        s = np.sqrt(r1)
        bary = np.stack([1.0 - s, s * (1.0 - r2), s * r2], axis=1)
        point = np.einsum("nk,nkc->nc", bary, self.vertices[self.faces[face]])
        if thin:
            keep = first_per_voxel(point, spacing)
            point, face, bary = point[keep], face[keep], bary[keep]
        return SurfaceSamples(point, self.face_normal[face], face.astype(np.int64), bary)


def first_per_voxel(points: np.ndarray, size: float) -> np.ndarray:
    """Sorted indices of the first point in each cube of side ``size``."""
    if len(points) == 0:
        return np.zeros(0, np.int64)
    keys = np.floor(points / size).astype(np.int64)
    keys -= keys.min(axis=0)
    # one int64 per cube (a 1D unique is far faster than unique over rows)
    linear = np.ravel_multi_index(keys.T, tuple(keys.max(axis=0) + 1))
    _, first = np.unique(linear, return_index=True)
    return np.sort(first)


def texture_lookup(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel uint8 [N,3] of ``texture`` [h,w,3] at ``uv`` [N,2]
    (u right, v up from the bottom row, wrapping like GL_REPEAT)."""
    h, w = texture.shape[:2]
    uv = np.nan_to_num(np.asarray(uv, dtype=np.float64))
    col = np.rint(np.mod(uv[:, 0], 1.0) * (w - 1)).astype(np.int64)
    row = np.rint((1.0 - np.mod(uv[:, 1], 1.0)) * (h - 1)).astype(np.int64)
    return texture[row.clip(0, h - 1), col.clip(0, w - 1), :3]


def load_house(path: str | Path) -> HouseMesh:
    """Read a GLB (or any trimesh scene) into parts in world coordinates, keeping
    each part's texture / colours. Raises MeshLoadError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MeshLoadError(path, "file does not exist")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as exc:  # trimesh raises many types for bad files
        raise MeshLoadError(path, f"cannot read ({type(exc).__name__}: {exc})") from exc
    scene = loaded if isinstance(loaded, trimesh.Scene) else trimesh.Scene(loaded)
    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        vertices = trimesh.transform_points(np.asarray(geom.vertices, dtype=np.float64), transform)
        if not np.isfinite(vertices).all():
            raise MeshLoadError(path, f"part '{node}' has NaN/inf vertices")
        faces = np.asarray(geom.faces, dtype=np.int64)
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise MeshLoadError(path, f"part '{node}' has face indices out of range")
        parts.append(MeshPart(name=f"{node}|{geom_name}", vertices=vertices, faces=faces, **_colour_source(geom)))
    if not parts:
        raise MeshLoadError(path, "contains no triangle geometry")
    return HouseMesh(parts)


def _colour_source(geom: trimesh.Trimesh) -> dict:
    visual = geom.visual
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        material = visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        if image is not None and visual.uv is not None:
            tex = np.asarray(image.convert("RGB"), dtype=np.uint8)
            return {"uv": np.asarray(visual.uv, dtype=np.float64), "texture": tex}
        main = np.asarray(getattr(material, "main_color", [128, 128, 128, 255]))[:3].astype(np.uint8)
        return {"face_colors": np.tile(main, (len(geom.faces), 1))}
    if kind == "vertex":
        return {"vertex_colors": np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8)}
    if kind == "face":
        return {"face_colors": np.asarray(visual.face_colors)[:, :3].astype(np.uint8)}
    return {}


# --------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class SemanticObject:
    object_id: int
    color: str  # "RRGGBB", upper case
    category: str
    region: int


def read_semantic_txt(path: str | Path) -> list[SemanticObject]:
    """Parse ``<hash>.semantic.txt``. Raises ValueError naming the line."""
    path = Path(path)
    lines = path.read_text().splitlines()
    objects = []
    for lineno, row in enumerate(csv.reader(lines), start=1):
        if not row or (lineno == 1 and row[0].strip().startswith("HM3D")):
            continue
        if len(row) < 4:
            raise ValueError(f"'{path}' line {lineno}: expected 'id,HEX,\"category\",region', got {row}")
        try:
            color = row[1].strip().upper().lstrip("#")
            if len(color) != 6:
                raise ValueError(f"colour must be 6 hex digits, got {row[1]!r}")
            int(color, 16)
            objects.append(SemanticObject(int(row[0]), color, row[2].strip(), int(row[3])))
        except ValueError as exc:
            raise ValueError(f"'{path}' line {lineno}: {exc}") from exc
    return objects


@dataclass
class FaceLabels:
    """Per merged face of the house mesh: ``instance`` (semantic object id),
    ``region`` (room id from the annotations), ``category`` (index into
    ``categories``); -1 = none. int32 [F] each."""

    instance: np.ndarray
    region: np.ndarray
    category: np.ndarray
    categories: list[str]


def face_color_codes(house: HouseMesh) -> np.ndarray:
    """Colour of every face at its centroid as int64 0xRRGGBB [F]."""
    bary = np.full((len(house.faces), 3), 1.0 / 3.0)
    rgb = house.colors_at(np.arange(len(house.faces)), bary).astype(np.int64)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def semantic_face_labels(house: HouseMesh, semantic: HouseMesh, objects: list[SemanticObject]) -> FaceLabels:
    """Labels of the house's faces from the semantic mesh (one colour per object)
    and its objects. When both meshes have the same faces (HM3D ships them so)
    face i takes semantic face i; otherwise the semantic face with the nearest
    centroid. A face's colour is read at its centroid; colours not in ``objects``
    stay unlabelled."""
    codes = face_color_codes(semantic)
    same = len(semantic.faces) == len(house.faces) and np.allclose(semantic.face_centroid, house.face_centroid, atol=1e-4)
    if not same:
        from scipy.spatial import cKDTree

        _, match = cKDTree(semantic.face_centroid).query(house.face_centroid)
        codes = codes[match]
    categories = sorted({o.category for o in objects})
    cat_index = {c: i for i, c in enumerate(categories)}
    by_code = {int(o.color, 16): o for o in objects}
    uniq, inverse = np.unique(codes, return_inverse=True)
    table = np.full((len(uniq), 3), -1, np.int32)  # instance, region, category per distinct colour
    for i, code in enumerate(uniq.tolist()):
        obj = by_code.get(code)
        if obj is not None:
            table[i] = (obj.object_id, obj.region, cat_index[obj.category])
    per_face = table[inverse.reshape(-1)]
    return FaceLabels(instance=per_face[:, 0].copy(), region=per_face[:, 1].copy(), category=per_face[:, 2].copy(),
                      categories=categories)


def node_room_ids(house: HouseMesh) -> np.ndarray:
    """Room group per merged face from part names "..group<G>_sub<S>.." as
    int32 [F] (G * 1000 + S), -1 where the name carries no group."""
    ids = np.full(len(house.parts), -1, np.int32)
    for i, part in enumerate(house.parts):
        m = NODE_ROOM_PATTERN.search(part.name)
        if m:
            ids[i] = int(m.group(1)) * 1000 + int(m.group(2))
    return ids[house.face_part]


def barycentric(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Weights float64 [N,3] of the corners of ``triangles`` [N,3,3] for
    ``points`` [N,3] (projected onto each triangle's plane; clipped to [0,1])."""
    v0 = triangles[:, 0]
    e1, e2, p = triangles[:, 1] - v0, triangles[:, 2] - v0, points - v0
    d11, d12, d22 = (np.einsum("ij,ij->i", a, b) for a, b in ((e1, e1), (e1, e2), (e2, e2)))
    p1, p2 = np.einsum("ij,ij->i", p, e1), np.einsum("ij,ij->i", p, e2)
    den = d11 * d22 - d12 * d12
    den = np.where(np.abs(den) < 1e-30, 1.0, den)
    u = (d22 * p1 - d12 * p2) / den
    v = (d11 * p2 - d12 * p1) / den
    return np.clip(np.stack([1.0 - u - v, u, v], axis=1), 0.0, 1.0)
