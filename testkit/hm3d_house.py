"""A tiny HM3D-like house written as real GLB files: three box rooms (A, B, C)
joined by doorways, with a table, a cabinet and a bed, every part one
vertex colour. Z-up, metres, like HM3D's GLBs.

    A: x 0..4, y 0..3.5     B: x 4..8, y 0..3.5     C: x 0..4, y 3.5..7
    doorway A|B in the wall x = 4 at y 1.5..2.4; doorway A|C in y = 3.5 at x 1.0..1.9
    ceiling height 2.6, door lintels from 2.1

Variants: plain (no annotations), ``regions`` (``.semantic.glb`` + ``.semantic.txt``
with one object per part, region = room), ``nodes`` (part names carry
``_group<room>_sub0`` like HM3D's chunk names).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import trimesh

HEIGHT = 2.6
ROOMS = {0: ((0.0, 0.0), (4.0, 3.5)), 1: ((4.0, 0.0), (8.0, 3.5)), 2: ((0.0, 3.5), (4.0, 7.0))}


def box(lo, hi, color) -> trimesh.Trimesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    m = trimesh.creation.box(extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2))
    rgba = np.tile(np.r_[color, 255], (len(m.vertices), 1)).astype(np.uint8)
    m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=rgba)
    return m


# Room B's floor is textured: 2x2 tiles, colour = QUADRANTS[x >= 6][y >= 1.75]
QUADRANTS = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], np.uint8)


def textured_floor_b() -> trimesh.Trimesh:
    from PIL import Image

    m = box((4.0, 0.0, -0.1), (8.0, 3.5, 0.0), (0, 0, 0))
    uv = np.stack([(m.vertices[:, 0] - 4.0) / 4.0, m.vertices[:, 1] / 3.5], axis=1)
    n = 64
    rows, cols = np.mgrid[0:n, 0:n]
    u, v = cols / (n - 1), 1.0 - rows / (n - 1)  # image row 0 is v = 1
    img = QUADRANTS[(u >= 0.5).astype(int), (v >= 0.5).astype(int)]
    m.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(img))
    return m


def house_parts() -> list[tuple[str, int, trimesh.Trimesh]]:
    """(part name, room index, box) of every part."""
    H = HEIGHT
    P = []
    for r, ((x0, y0), (x1, y1)) in ROOMS.items():
        floor = textured_floor_b() if r == 1 else box((x0, y0, -0.1), (x1, y1, 0.0), (200, 180 - 40 * r, 140))
        P.append((f"floor{r}", r, floor))
        P.append((f"ceiling{r}", r, box((x0, y0, H), (x1, y1, H + 0.1), (240, 240, 240))))
    P += [
        ("wallS", 0, box((-0.1, -0.1, 0), (8.1, 0.0, H), (150, 60, 60))),
        ("wallE", 1, box((8.0, -0.1, 0), (8.1, 3.6, H), (60, 150, 60))),
        ("wallNB", 1, box((4.0, 3.5, 0), (8.1, 3.6, H), (60, 60, 150))),
        ("wallW", 0, box((-0.1, -0.1, 0), (0.0, 7.1, H), (150, 150, 60))),
        ("wallNC", 2, box((-0.1, 7.0, 0), (4.1, 7.1, H), (150, 60, 150))),
        ("wallEC", 2, box((4.0, 3.5, 0), (4.1, 7.1, H), (60, 150, 150))),
        ("wallAB", 0, box((3.95, 0, 0), (4.05, 1.5, H), (100, 100, 100))),
        ("wallAB", 0, box((3.95, 2.4, 0), (4.05, 3.5, H), (100, 100, 100))),
        ("lintelAB", 0, box((3.95, 1.5, 2.1), (4.05, 2.4, H), (100, 100, 100))),
        ("wallAC", 2, box((0, 3.45, 0), (1.0, 3.55, H), (90, 90, 120))),
        ("wallAC", 2, box((1.9, 3.45, 0), (4.0, 3.55, H), (90, 90, 120))),
        ("lintelAC", 2, box((1.0, 3.45, 2.1), (1.9, 3.55, H), (90, 90, 120))),
        ("table", 0, box((0.6, 0.6, 0), (1.4, 1.4, 0.75), (120, 80, 30))),
        ("cabinet", 1, box((7.2, 2.9, 0), (7.8, 3.4, 1.8), (30, 80, 120))),
        ("bed", 2, box((2.2, 5.0, 0), (3.8, 6.9, 0.5), (200, 50, 50))),
    ]
    return P


def part_colors() -> np.ndarray:
    """Every colour on the house's surface, uint8 [C,3]."""
    cols = [np.asarray(m.visual.vertex_colors)[0, :3] for _, _, m in house_parts() if m.visual.kind == "vertex"]
    return np.unique(np.concatenate([np.stack(cols), QUADRANTS.reshape(-1, 3)]), axis=0)


def floor_b_color(xy: np.ndarray) -> np.ndarray:
    """Texture colour uint8 [N,3] of room B's floor at world xy [N,2]."""
    xy = np.asarray(xy)
    return QUADRANTS[(xy[:, 0] >= 6.0).astype(int), (xy[:, 1] >= 1.75).astype(int)]


def semantic_color(i: int) -> np.ndarray:
    return np.array([(i * 37) % 256, (i * 91 + 10) % 256, (i * 53 + 200) % 256], np.uint8)


def write_house(folder: Path, variant: str = "plain") -> Path:
    """Write ``<folder>/<hash>.glb`` (+ semantic files for ``regions``); the
    folder name must look like HM3D's ``NNNNN-<hash>``."""
    assert variant in ("plain", "regions", "nodes")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hsh = folder.name.split("-", 1)[1]
    parts = house_parts()
    scene = trimesh.Scene()
    for i, (name, r, m) in enumerate(parts):
        node = f"{name}{i}_group{r}_sub0" if variant == "nodes" else f"{name}{i}"
        scene.add_geometry(m, geom_name=node, node_name=node)
    scene.export(folder / f"{hsh}.glb")
    if variant == "regions":
        sem = trimesh.Scene()
        lines = ["HM3D Semantic Annotations"]
        for i, (name, r, m) in enumerate(parts):
            col = semantic_color(i)
            mm = m.copy()
            mm.visual = trimesh.visual.ColorVisuals(mm, vertex_colors=np.tile(np.r_[col, 255], (len(mm.vertices), 1)).astype(np.uint8))
            sem.add_geometry(mm, geom_name=f"{name}{i}", node_name=f"{name}{i}")
            category = re.match(r"[a-z]+", name).group(0)  # "wallNC" -> "wall"
            lines.append(f'{i + 1},{col[0]:02X}{col[1]:02X}{col[2]:02X},"{category}",{r}')
        sem.export(folder / f"{hsh}.semantic.glb")
        (folder / f"{hsh}.semantic.txt").write_text("\n".join(lines) + "\n")
    return folder


def room_of(xy) -> int:
    """Index of the room containing the floor point xy, -1 if none."""
    for r, ((x0, y0), (x1, y1)) in ROOMS.items():
        if x0 < xy[0] < x1 and y0 < xy[1] < y1:
            return r
    return -1


def distance_to_surface(points: np.ndarray) -> np.ndarray:
    """Exact distance float64 [N] from points [N,3] to the house's surface (the
    union of the parts' box surfaces), computed from the boxes analytically."""
    points = np.asarray(points, dtype=np.float64)
    best = np.full(len(points), np.inf)
    for _, _, m in house_parts():
        lo, hi = m.bounds
        outside = np.maximum(np.maximum(lo - points, points - hi), 0.0)
        d_out = np.linalg.norm(outside, axis=1)
        inside = (d_out == 0)
        d_in = np.minimum(points - lo, hi - points).min(axis=1)
        best = np.minimum(best, np.where(inside, d_in, d_out))
    return best


def ray_cast(vertices: np.ndarray, faces: np.ndarray, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance along each unit ray [N] to the first triangle hit (inf if none);
    brute-force Moller-Trumbore in float64, independent of the renderers."""
    tri = vertices[faces]  # [F,3,3]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    out = np.full(len(origins), np.inf)
    for i, (o, d) in enumerate(zip(origins, dirs)):
        p = np.cross(d, e2)
        det = np.einsum("fk,fk->f", e1, p)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        s = o - tri[:, 0]
        u = np.einsum("fk,fk->f", s, p) * inv
        q = np.cross(s, e1)
        v = (q @ d) * inv
        t = np.einsum("fk,fk->f", e2, q) * inv
        hit = ok & (u >= -1e-9) & (v >= -1e-9) & (u + v <= 1 + 1e-9) & (t > 1e-9)
        if hit.any():
            out[i] = t[hit].min()
    return out
