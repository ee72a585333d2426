"""A binary PLY with per-face colour, semantic label and instance id.

Layout (little endian), readable by any PLY reader (trimesh reads the colours):
vertex: float x, y, z; face: list uchar int vertex_indices, uchar red, green,
blue, int label, int instance. Writing is byte-for-byte deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

_HEADER = (
    "ply\n"
    "format binary_little_endian 1.0\n"
    "comment concerto procedural room\n"
    "element vertex {nv}\n"
    "property float x\n"
    "property float y\n"
    "property float z\n"
    "element face {nf}\n"
    "property list uchar int vertex_indices\n"
    "property uchar red\n"
    "property uchar green\n"
    "property uchar blue\n"
    "property int label\n"
    "property int instance\n"
    "end_header\n"
)
_VERTEX = np.dtype([("xyz", "<f4", (3,))])
_FACE = np.dtype([("n", "u1"), ("v", "<i4", (3,)), ("rgb", "u1", (3,)), ("label", "<i4"), ("instance", "<i4")])


class LabeledPlyError(ValueError):
    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"mesh file '{path}': {message}")


@dataclass
class LabeledMesh:
    """vertices float32 [V,3] m; faces int32 [F,3]; face_colors uint8 [F,3];
    face_labels / face_instances int32 [F] (-1 = none)."""

    vertices: np.ndarray
    faces: np.ndarray
    face_colors: np.ndarray
    face_labels: np.ndarray
    face_instances: np.ndarray

    def to_trimesh(self) -> trimesh.Trimesh:
        return trimesh.Trimesh(
            vertices=self.vertices.astype(np.float64), faces=self.faces, face_colors=self.face_colors, process=False
        )


def write_labeled_ply(path: str | Path, mesh: LabeledMesh) -> None:
    nv, nf = len(mesh.vertices), len(mesh.faces)
    verts = np.zeros(nv, _VERTEX)
    verts["xyz"] = mesh.vertices
    faces = np.zeros(nf, _FACE)
    faces["n"] = 3
    faces["v"] = mesh.faces
    faces["rgb"] = mesh.face_colors
    faces["label"] = mesh.face_labels
    faces["instance"] = mesh.face_instances
    with open(path, "wb") as f:
        f.write(_HEADER.format(nv=nv, nf=nf).encode("ascii"))
        f.write(verts.tobytes())
        f.write(faces.tobytes())


def read_labeled_ply(path: str | Path) -> LabeledMesh:
    """Read a file written by ``write_labeled_ply``; LabeledPlyError names the
    file on any mismatch (other layout, truncation, bad indices)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LabeledPlyError(path, f"cannot read ({exc})") from exc
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise LabeledPlyError(path, "not a PLY file (no 'ply' magic or 'end_header')")
    header = data[: end + len(b"end_header\n")].decode("ascii", errors="replace")
    try:
        counts = {line.split()[1]: int(line.split()[2]) for line in header.splitlines() if line.startswith("element")}
        nv, nf = counts["vertex"], counts["face"]
    except (KeyError, IndexError, ValueError) as exc:
        raise LabeledPlyError(path, f"malformed header ({exc})") from exc
    if header != _HEADER.format(nv=nv, nf=nf):
        raise LabeledPlyError(path, "PLY layout is not the labelled-room layout (x,y,z / indices, rgb, label, instance)")
    body = data[len(header):]
    want = nv * _VERTEX.itemsize + nf * _FACE.itemsize
    if len(body) != want:
        raise LabeledPlyError(path, f"truncated or padded body: {len(body)} bytes, expected {want}")
    verts = np.frombuffer(body, _VERTEX, count=nv)
    faces = np.frombuffer(body, _FACE, count=nf, offset=nv * _VERTEX.itemsize)
    if nf == 0 or nv == 0:
        raise LabeledPlyError(path, "empty mesh")
    if (faces["n"] != 3).any():
        raise LabeledPlyError(path, "non-triangular faces")
    idx = faces["v"]
    if idx.min() < 0 or idx.max() >= nv:
        raise LabeledPlyError(path, "face vertex indices out of range")
    xyz = verts["xyz"].copy()
    if not np.isfinite(xyz).all():
        raise LabeledPlyError(path, "vertices contain NaN/inf")
    return LabeledMesh(
        vertices=xyz,
        faces=idx.astype(np.int32),
        face_colors=faces["rgb"].copy(),
        face_labels=faces["label"].astype(np.int32),
        face_instances=faces["instance"].astype(np.int32),
    )
