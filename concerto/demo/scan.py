"""A user's scan read from disk: coord, optional colour and normal, checked field by field.

Formats (``read_scan``):

- ``.ply``: a point cloud or a mesh (read with trimesh). Vertex properties
  ``x y z``, ``red green blue`` (uchar 0..255, or float 0..1), ``nx ny nz``.
  A mesh gives its vertices, with area-weighted vertex normals when the file
  has none; ``mesh_samples=N`` samples N points on its faces instead (face
  normals, colours interpolated), for meshes with large triangles.
- ``.npy``: an [N, 3] (coord), [N, 6] (coord, color) or [N, 9] (coord, color,
  normal) array, or a pickled dict as below.
- ``.npz`` / ``.pth``: a dict with ``coord`` and optionally ``color`` /
  ``normal`` (Pointcept's scene files, ``torch.save`` or ``np.savez``).
- a folder holding ``coord.npy`` (and ``color.npy``, ``normal.npy``): the
  Pointcept preprocessed layout.

Conventions: coord float32 [N, 3] metres, z up (as the scene record);
color uint8 [N, 3] 0..255 or None; normal float32 [N, 3] or None. Every bad
input raises :class:`ScanError` naming the file and the field.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

SUFFIXES = (".ply", ".npy", ".npz", ".pth")


class ScanError(ValueError):
    """A scan that cannot be used; the message names the file and the field."""


@dataclass
class Scan:
    """One point cloud: coord float32 [N, 3] m, color uint8 [N, 3] or None, normal float32 [N, 3] or None."""

    path: Path
    coord: np.ndarray
    color: Optional[np.ndarray] = None
    normal: Optional[np.ndarray] = None
    notes: list[str] = field(default_factory=list)  # what was assumed while reading, for the user

    @property
    def name(self) -> str:
        """File name without its suffix (a Pointcept folder: the folder's name)."""
        return self.path.name if self.path.is_dir() else self.path.stem

    def __len__(self) -> int:
        return len(self.coord)


# ----------------------------------------------------------------------------- checks


def _check_coord(path: Path, coord) -> np.ndarray:
    try:
        coord = np.asarray(coord, np.float64)
    except (TypeError, ValueError) as exc:
        raise ScanError(f"{path}: field 'coord' is not numeric ({exc})") from exc
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise ScanError(f"{path}: field 'coord' must be [N, 3] with N > 0, got shape {list(coord.shape)}")
    bad = ~np.isfinite(coord).all(1)
    if bad.any():
        raise ScanError(f"{path}: field 'coord' has {int(bad.sum())} points with NaN or infinite values "
                        f"(first at point {int(np.nonzero(bad)[0][0])})")
    return coord.astype(np.float32)


def _check_color(path: Path, color, n: int, notes: list[str]) -> Optional[np.ndarray]:
    if color is None:
        return None
    try:
        arr = np.asarray(color)
        arr = arr.astype(np.float64) if arr.dtype != np.uint8 else arr
    except (TypeError, ValueError) as exc:
        raise ScanError(f"{path}: field 'color' is not numeric ({exc})") from exc
    if arr.ndim != 2 or arr.shape[1] not in (3, 4) or len(arr) != n:
        raise ScanError(f"{path}: field 'color' has shape {list(arr.shape)}, expected [{n}, 3]")
    arr = arr[:, :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if not np.isfinite(arr).all():
        raise ScanError(f"{path}: field 'color' has NaN or infinite values")
    if arr.min() < 0 or arr.max() > 255:
        raise ScanError(f"{path}: field 'color' has values in [{arr.min():g}, {arr.max():g}], "
                        f"expected 0..255 (or 0..1)")
    if arr.max() <= 1.0:
        notes.append(f"{path.name}: colour values are in 0..1; scaled to 0..255")
        arr = arr * 255.0
    return np.round(arr).astype(np.uint8)


def _check_normal(path: Path, normal, n: int) -> Optional[np.ndarray]:
    if normal is None:
        return None
    try:
        arr = np.asarray(normal, np.float32)
    except (TypeError, ValueError) as exc:
        raise ScanError(f"{path}: field 'normal' is not numeric ({exc})") from exc
    if arr.shape != (n, 3):
        raise ScanError(f"{path}: field 'normal' has shape {list(arr.shape)}, expected [{n}, 3]")
    if not np.isfinite(arr).all():
        raise ScanError(f"{path}: field 'normal' has NaN or infinite values")
    return arr


def make_scan(path: Union[str, os.PathLike], coord, color=None, normal=None, notes: Optional[list] = None) -> Scan:
    """A checked :class:`Scan` from arrays (colours 0..1 are scaled to 0..255)."""
    path = Path(path)
    notes = list(notes or [])
    coord = _check_coord(path, coord)
    return Scan(path, coord, _check_color(path, color, len(coord), notes), _check_normal(path, normal, len(coord)),
                notes)


# ----------------------------------------------------------------------------- formats


def _read_ply(path: Path, mesh_samples: Optional[int], seed: int) -> Scan:
    import trimesh

    try:
        geom = trimesh.load(str(path), file_type="ply", process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many types for a bad file
        raise ScanError(f"{path}: not a readable PLY file ({type(exc).__name__}: {exc})") from exc
    raw = (geom.metadata.get("_ply_raw") or {}).get("vertex", {}).get("data")
    props = raw.dtype.names if raw is not None and raw.dtype.names else ()
    if not {"x", "y", "z"} <= set(props):
        raise ScanError(f"{path}: field 'coord': the PLY has no vertex x, y, z properties (has {list(props)})")
    faces = np.asarray(getattr(geom, "faces", np.zeros((0, 3))), np.int64)
    notes: list[str] = []
    color = None
    for names in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if set(names) <= set(props):
            color = np.stack([raw[k] for k in names], 1)
            break
    normal = np.stack([raw[k] for k in ("nx", "ny", "nz")], 1) if {"nx", "ny", "nz"} <= set(props) else None
    coord = np.stack([raw[k] for k in ("x", "y", "z")], 1)
    if mesh_samples:
        if not len(faces):
            raise ScanError(f"{path}: --mesh-samples needs a mesh, but the PLY has no faces")
        mesh = trimesh.Trimesh(coord, faces, process=False)
        pts, face_idx, bary = _sample_faces(mesh, int(mesh_samples), seed)
        if color is not None:
            color = np.einsum("nk,nkc->nc", bary, np.asarray(color, np.float64)[faces[face_idx]])
            color = np.clip(np.round(color * (255.0 if color.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        notes.append(f"{path.name}: sampled {len(pts)} points on {len(faces)} faces (face normals)")
        return make_scan(path, pts, color, mesh.face_normals[face_idx], notes)
    if len(faces) and normal is None:
        normal = trimesh.Trimesh(coord, faces, process=False).vertex_normals
        notes.append(f"{path.name}: a mesh without vertex normals; using its area-weighted face normals")
    return make_scan(path, coord, color, normal, notes)


def _sample_faces(mesh, count: int, seed: int):
    """(points [count, 3], face index [count], barycentric weights [count, 3]): area-uniform, seeded."""
    rng = np.random.default_rng(seed)
    area = mesh.area_faces
    face = rng.choice(len(area), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    bary = np.stack([1 - u - v, u, v], 1)
    tri = mesh.vertices[mesh.faces[face]]  # [count, 3, 3]
    return np.einsum("nk,nkc->nc", bary, tri), face, bary


def _from_dict(path: Path, obj) -> Scan:
    if not hasattr(obj, "keys"):
        raise ScanError(f"{path}: expected a dict with 'coord' (and 'color', 'normal'), got {type(obj).__name__}")
    keys = list(obj.keys())
    if "coord" not in keys:
        raise ScanError(f"{path}: field 'coord' is missing (keys: {sorted(map(str, keys))[:10]})")

    def get(name):
        v = obj[name] if name in keys else None
        if v is not None and hasattr(v, "detach"):
            v = v.detach().cpu().numpy()
        return v

    return make_scan(path, get("coord"), get("color"), get("normal"))


def _from_array(path: Path, arr: np.ndarray) -> Scan:
    if arr.dtype == object and arr.shape == ():
        return _from_dict(path, arr.item())
    if arr.ndim != 2 or arr.shape[1] not in (3, 6, 9):
        raise ScanError(f"{path}: an array of shape {list(arr.shape)}; expected [N, 3] (coord), [N, 6] "
                        f"(coord, color) or [N, 9] (coord, color, normal), or a dict with 'coord'")
    color = arr[:, 3:6] if arr.shape[1] >= 6 else None
    normal = arr[:, 6:9] if arr.shape[1] == 9 else None
    return make_scan(path, arr[:, :3], color, normal)


def _read_pth(path: Path) -> Scan:
    import torch

    try:
        # numpy arrays inside (Pointcept's scene files) need their reconstructors allowed
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, or not a torch file
        raise ScanError(f"{path}: cannot be read as a torch file ({type(exc).__name__}: {exc})") from exc
    return _from_dict(path, obj)


def _numpy_globals() -> list:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    dtypes = [type(np.dtype(t)) for t in ("f2", "f4", "f8", "u1", "i1", "i2", "u2", "i4", "u4", "i8", "bool")]
    return [_reconstruct, np.ndarray, np.dtype, *dtypes]


def read_scan(path: Union[str, os.PathLike], mesh_samples: Optional[int] = None, seed: int = 0) -> Scan:
    """The :class:`Scan` in ``path`` (see module doc for the formats)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "coord.npy").is_file():
            raise ScanError(f"{path}: a folder without coord.npy "
                            f"(the Pointcept layout: coord.npy, color.npy, normal.npy)")
        parts = {k: np.load(path / f"{k}.npy") for k in ("coord", "color", "normal") if (path / f"{k}.npy").is_file()}
        return make_scan(path, parts["coord"], parts.get("color"), parts.get("normal"))
    if not path.is_file():
        raise ScanError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return _read_ply(path, mesh_samples, seed)
    if suffix == ".npy":
        try:
            try:
                arr = np.load(path, allow_pickle=False)
            except ValueError:  # a pickled dict (np.save of a dict): the user's own file
                arr = np.load(path, allow_pickle=True)
        except Exception as exc:  # noqa: BLE001 - truncated, not numpy, a broken pickle
            raise ScanError(f"{path}: not a readable .npy file ({type(exc).__name__}: {exc})") from exc
        return _from_array(path, arr)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - not a zip, truncated, pickled members
            raise ScanError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc
        return _from_dict(path, arrays)
    if suffix == ".pth":
        return _read_pth(path)
    raise ScanError(f"{path}: unknown scan format {suffix!r}; expected one of {', '.join(SUFFIXES)} "
                    f"or a Pointcept folder with coord.npy")


def find_scans(inputs: Sequence[Union[str, os.PathLike]]) -> list[Path]:
    """Scan paths of ``inputs``: files as given; a Pointcept folder as itself; another folder: the
    Pointcept sub-folders and the scan files directly in it, sorted by name."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and not (p / "coord.npy").is_file():
            found = sorted(q for q in p.iterdir() if (q.is_file() and q.suffix.lower() in SUFFIXES)
                           or (q.is_dir() and (q / "coord.npy").is_file()))
            if not found:
                raise ScanError(f"{p}: a folder with no scans ({', '.join(SUFFIXES)} files or Pointcept folders)")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise ScanError(f"{p}: no such file or folder")
    return out
