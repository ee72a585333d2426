"""Helpers shared by the dataset adapters: options, content hashes, image and
depth files, meshes and point clouds, camera conventions.

Every reader raises ``SourceError(scene, file, message)`` so a bad file names the
scene and the file. Conventions are those of ``preprocess.scene``: metres, OpenCV
camera axes (x right, y down, z forward), camera-to-world poses, NaN = no depth.
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from preprocess.geometry import pca_normals, rigid_inverse
from preprocess.scene import PointCloud
from preprocess.sources.base import SceneRef, SourceError, hash_files

log = logging.getLogger(__name__)

HASH_MODES = ("stat", "content")

# The frame-gap option was called ``frame_skip``. That name stays where it is
# recorded: in every content hash (``options_key``), in the ``meta`` that some
# adapters store with a scene, and in the source options that manifests of
# older stores record (accepted as a deprecated alias of ``frame_gap``).
LEGACY_FRAME_GAP = "frame_skip"
# option name -> the name ``options_key`` hashes it under
_HASHED_NAME = {"frame_gap": LEGACY_FRAME_GAP}


def hashed_options(options: dict) -> dict:
    """``options`` under the names content hashes use (``frame_gap`` as
    ``frame_skip``), for ``options_key``."""
    return {_HASHED_NAME.get(k, k): v for k, v in options.items()}


def resolve_frame_gap_alias(options: dict, where: str) -> dict:
    """``options`` with a deprecated ``frame_skip`` renamed ``frame_gap``
    (DeprecationWarning); both given with different values is an error."""
    if LEGACY_FRAME_GAP not in options:
        return options
    options = dict(options)
    legacy = options.pop(LEGACY_FRAME_GAP)
    if "frame_gap" in options and options["frame_gap"] != legacy:
        raise ValueError(f"{where}: options frame_gap={options['frame_gap']!r} and frame_skip={legacy!r} disagree "
                         "(frame_skip is the old name of frame_gap; give frame_gap only)")
    warnings.warn(f"{where}: option 'frame_skip' is deprecated, read as 'frame_gap'", DeprecationWarning, stacklevel=3)
    options["frame_gap"] = legacy
    return options


# --------------------------------------------------------------------------- adapters


class AdapterBase:
    """Common constructor ``Adapter(path, name=None, **options)``.

    Subclasses set ``OPTIONS`` (name -> default). Unknown options are a clear
    error (a typo in a build config must not be silently ignored). Every
    adapter accepts ``frame_gap`` (read every Nth frame, >= 1; ``frame_skip``
    is its deprecated alias) and
    ``hash_mode`` ("stat": names + sizes + mtimes of the scene's files, cheap
    for GB-sized raw files; "content": sha1 of their bytes via ``hash_files``).
    """

    kind: str = ""
    OPTIONS: dict[str, Any] = {}
    _COMMON_OPTIONS: dict[str, Any] = {"frame_gap": 1, "hash_mode": "stat"}

    def __init__(self, path, name: Optional[str] = None, **options):
        self.path = Path(path)
        self.name = name or self.kind
        defaults = {**self._COMMON_OPTIONS, **self.OPTIONS}
        options = resolve_frame_gap_alias(options, f"source '{self.name}' ({self.kind})")
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ValueError(
                f"source '{self.name}' ({self.kind}): unknown option(s) {unknown}; "
                f"known options: {sorted(defaults)}"
            )
        self.options = {**defaults, **options}
        gap = self.options["frame_gap"]
        if not isinstance(gap, int) or isinstance(gap, bool) or gap < 1:
            raise ValueError(f"source '{self.name}' ({self.kind}): option frame_gap must be an integer >= 1, got {gap!r}")
        if self.options["hash_mode"] not in HASH_MODES:
            raise ValueError(
                f"source '{self.name}' ({self.kind}): option hash_mode must be one of {HASH_MODES}, "
                f"got {self.options['hash_mode']!r}"
            )
        if not self.path.is_dir():
            raise ValueError(f"source '{self.name}' ({self.kind}): dataset path '{self.path}' is not a directory")

    def cache(self) -> dict:
        """Per-process scratch space (open archives, loaded meshes). Dropped when
        the adapter is pickled to a worker, so it is rebuilt there lazily."""
        return self.__dict__.setdefault("_cache", {})

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_cache", None)
        return state

    @property
    def frame_gap(self) -> int:
        return int(self.options["frame_gap"])

    def options_key(self) -> str:
        """The options as a stable string: part of every content hash, because
        they change what ``load`` produces. ``frame_gap`` is hashed under its
        old name (``LEGACY_FRAME_GAP``), so stores built before the rename keep
        their content hashes."""
        def show(v):
            return repr(str(v)) if isinstance(v, Path) else repr(v)  # Path("x") and "x" are one config

        named = hashed_options(self.options)
        return f"{self.kind}|" + "|".join(f"{k}={show(named[k])}" for k in sorted(named))

    def ref(self, scene_id: str, files: Iterable[Path]) -> SceneRef:
        return SceneRef(self.name, scene_id, scene_hash(files, self.options_key(), self.options["hash_mode"]))

    def key(self, scene_id: str) -> str:
        return f"{self.name}/{scene_id}"


def scene_hash(files: Iterable[str | Path], extra: str, mode: str = "stat") -> str:
    """Content hash of a scene's raw files (sorted by path so listing order
    does not matter). mode "stat": sha1 over (relative name, size, mtime_ns) of
    each file; "content": ``hash_files`` over the bytes."""
    files = sorted(Path(f) for f in files)
    if mode == "content":
        return hash_files(files, extra=extra)
    h = hashlib.sha1(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def require_file(scene: str, path: Path, what: str = "") -> Path:
    """Return ``path`` if it is a file, else raise SourceError naming it."""
    if not Path(path).is_file():
        raise SourceError(scene, str(path), f"missing file{' (' + what + ')' if what else ''}")
    return Path(path)


def require_dir(scene: str, path: Path, what: str = "") -> Path:
    if not Path(path).is_dir():
        raise SourceError(scene, str(path), f"missing directory{' (' + what + ')' if what else ''}")
    return Path(path)


def every_nth(items: list, n: int) -> list:
    return list(items)[:: max(1, int(n))]


# --------------------------------------------------------------------------- images


def decode_rgb(data: bytes, scene: str, what: str) -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 [H,W,3] RGB."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except Exception as exc:
        raise SourceError(scene, what, f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def read_rgb(path: Path, scene: str) -> np.ndarray:
    """uint8 [H,W,3] RGB from an image file (PNG/JPEG; alpha dropped)."""
    require_file(scene, path, "colour image")
    return decode_rgb(Path(path).read_bytes(), scene, str(path))


def read_gray(path: Path, scene: str) -> np.ndarray:
    """uint8 [H,W] from a one-channel image file (e.g. a mask PNG)."""
    from PIL import Image

    require_file(scene, path, "mask image")
    try:
        with Image.open(path) as im:
            return np.ascontiguousarray(np.asarray(im.convert("L"), dtype=np.uint8))
    except Exception as exc:
        raise SourceError(scene, str(path), f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def read_uint16_png(path: Path, scene: str) -> np.ndarray:
    """Raw values of a single-channel 16-bit PNG as uint16 [H,W]."""
    from PIL import Image

    require_file(scene, path, "16-bit depth image")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as exc:
        raise SourceError(scene, str(path), f"cannot decode depth image ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2:
        raise SourceError(scene, str(path), f"depth image must have one channel, got shape {list(arr.shape)}")
    if arr.dtype not in (np.uint16, np.int32, np.uint8):
        raise SourceError(scene, str(path), f"depth image must be 16-bit, got dtype {arr.dtype}")
    return arr.astype(np.uint16)


def depth_from_raw(raw: np.ndarray, units_per_metre: float, invalid: Iterable[int] = (0,)) -> np.ndarray:
    """float32 metres from integer depth (e.g. 1000 units per metre = mm);
    the ``invalid`` codes become NaN (never 0)."""
    depth = raw.astype(np.float32) / np.float32(units_per_metre)
    bad = np.zeros(raw.shape, bool)
    for code in invalid:
        bad |= raw == code
    depth[bad] = np.nan
    return depth


def write_uint16_png(path: Path, values: np.ndarray) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(values.astype(np.uint16))).save(path)


def write_rgb(path: Path, rgb: np.ndarray, **save_kwargs) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8))).save(path, **save_kwargs)


# --------------------------------------------------------------------------- geometry


def vertex_normals(coord: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals float32 [N,3] (unit; vertices on no face get
    (0,0,1) so the record stays finite)."""
    coord = coord.astype(np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    n = np.zeros_like(coord)
    if len(faces):
        fn = np.cross(coord[faces[:, 1]] - coord[faces[:, 0]], coord[faces[:, 2]] - coord[faces[:, 0]])
        for k in range(3):  # cross product length = 2 * area, so this is area-weighted
            np.add.at(n, faces[:, k], fn)
    return _unit_or_up(n)


def estimate_normals(coord: np.ndarray, k: int = 16) -> np.ndarray:
    """Normals of a bare point cloud: smallest-eigenvalue direction of the k
    nearest neighbours' covariance. float32 [N,3] unit; the sign is arbitrary
    (flipped to point up-ish, +z) because a point cloud has no inside."""
    coord = coord.astype(np.float64)
    n = len(coord)
    if n < 3:
        return np.tile(np.array([0, 0, 1], np.float32), (n, 1))
    normal = pca_normals(coord, min(k, n))
    normal[normal[:, 2] < 0] *= -1
    return _unit_or_up(normal)


def _unit_or_up(n: np.ndarray) -> np.ndarray:
    length = np.linalg.norm(n, axis=1, keepdims=True)
    out = np.where(length > 1e-12, n / np.maximum(length, 1e-12), np.array([0.0, 0.0, 1.0]))
    return out.astype(np.float32)


def read_ply(path: Path, scene: str) -> dict:
    """Vertices, faces and every per-vertex property of a PLY file.

    Returns {"coord": float32 [N,3], "color": uint8 [N,3] or None,
    "normal": float32 [N,3] or None, "faces": int64 [F,3] (maybe empty),
    "vertex": {property name: array [N]}}."""
    import trimesh

    require_file(scene, path, "PLY")
    try:
        loaded = trimesh.load(path, process=False, file_type="ply")
    except Exception as exc:
        raise SourceError(scene, str(path), f"cannot read PLY ({type(exc).__name__}: {exc})") from exc
    raw = (loaded.metadata or {}).get("_ply_raw", {})
    vert = raw.get("vertex", {}).get("data")
    # trimesh keeps binary vertex data as a structured array, ascii as a dict
    if isinstance(vert, dict):
        props = {name: np.asarray(arr).reshape(-1) for name, arr in vert.items()}
    elif vert is not None and getattr(vert.dtype, "names", None):
        props = {name: np.asarray(vert[name]) for name in vert.dtype.names}
    else:
        props = {}
    coord = np.asarray(loaded.vertices, dtype=np.float64)
    if coord.ndim != 2 or coord.shape[0] == 0:
        raise SourceError(scene, str(path), "PLY has no vertices")
    if not np.isfinite(coord).all():
        raise SourceError(scene, str(path), "PLY vertices contain NaN/inf")
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    color = None
    if all(c in props for c in ("red", "green", "blue")):
        color = np.stack([props[c] for c in ("red", "green", "blue")], axis=1)
        if color.dtype.kind == "f":  # some writers store colours as floats in [0,1]
            color = np.round(np.clip(color, 0, 1) * 255)
        color = color.astype(np.uint8)
    normal = None
    if all(c in props for c in ("nx", "ny", "nz")):
        normal = np.stack([props[c] for c in ("nx", "ny", "nz")], axis=1).astype(np.float32)
    return {"coord": coord.astype(np.float32), "color": color, "normal": normal, "faces": faces, "vertex": props}


def point_cloud_from_ply(path: Path, scene: str) -> tuple[PointCloud, dict]:
    """PointCloud from a mesh/point PLY: vertices, vertex colours (grey if none),
    normals from the file, else from the faces, else estimated from neighbours."""
    ply = read_ply(path, scene)
    coord = ply["coord"]
    color = ply["color"] if ply["color"] is not None else np.full((len(coord), 3), 128, np.uint8)
    if ply["normal"] is not None and np.isfinite(ply["normal"]).all():
        normal = _unit_or_up(ply["normal"].astype(np.float64))
    elif len(ply["faces"]):
        normal = vertex_normals(coord, ply["faces"])
    else:
        normal = estimate_normals(coord)
    return PointCloud(coord=coord, color=color, normal=normal), ply


def rotation_is_valid(R: np.ndarray, tol: float = 1e-3) -> bool:
    R = np.asarray(R, dtype=np.float64)
    return bool(np.isfinite(R).all() and np.abs(R @ R.T - np.eye(3)).max() < tol and np.linalg.det(R) > 0)


def pose_is_valid(pose: np.ndarray) -> bool:
    """A finite rigid camera-to-world transform (ScanNet marks lost tracking
    with -inf poses: those frames are skipped)."""
    pose = np.asarray(pose, dtype=np.float64)
    return bool(
        pose.shape == (4, 4) and np.isfinite(pose).all() and np.allclose(pose[3], [0, 0, 0, 1], atol=1e-6)
        and rotation_is_valid(pose[:3, :3])
    )


def pose_from_world_to_camera(R_wc: np.ndarray, t_wc: np.ndarray) -> np.ndarray:
    """camera-to-world float32 [4,4] from x_cam = R_wc x_world + t_wc."""
    T = np.eye(4)
    T[:3, :3] = R_wc
    T[:3, 3] = t_wc
    return rigid_inverse(T).astype(np.float32)


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float32)


def reproject_depth(
    depth: np.ndarray, K_src: np.ndarray, K_dst: np.ndarray, shape_dst: tuple[int, int],
    src_to_dst: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Move a z-depth map from one camera to another (e.g. ScanNet's 640x480
    depth sensor to its 1296x968 colour camera).

    depth float32 [h,w] metres (NaN invalid) in the source camera; K_src, K_dst
    [3,3]; src_to_dst [4,4] rigid transform from source to destination camera
    coordinates (identity if None). Each valid source pixel is unprojected,
    moved, projected and rounded to the nearest destination pixel; the nearest
    surface wins. Returns float32 [H,W] with NaN where nothing landed."""
    H, W = shape_dst
    v, u = np.nonzero(np.isfinite(depth) & (depth > 0))
    z = depth[v, u].astype(np.float64)
    pts = (np.linalg.inv(K_src.astype(np.float64)) @ np.stack([u, v, np.ones_like(u)]).astype(np.float64)) * z
    if src_to_dst is not None:
        pts = src_to_dst[:3, :3] @ pts + src_to_dst[:3, 3:4]
    front = pts[2] > 1e-9
    pts = pts[:, front]
    proj = K_dst.astype(np.float64) @ pts
    uu = np.floor(proj[0] / proj[2] + 0.5).astype(np.int64)
    vv = np.floor(proj[1] / proj[2] + 0.5).astype(np.int64)
    inside = (uu >= 0) & (uu < W) & (vv >= 0) & (vv < H)
    out = np.full(H * W, np.inf)
    np.minimum.at(out, vv[inside] * W + uu[inside], pts[2, inside])
    out[np.isinf(out)] = np.nan
    return out.reshape(H, W).astype(np.float32)


def fill_holes_min(depth: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Fill NaN pixels with the nearest (smallest) valid depth of their 3x3
    neighbourhood, ``iterations`` times. Closes the one-pixel gaps left by
    reprojecting a depth map onto a larger image; valid pixels are untouched."""
    out = depth.astype(np.float32).copy()
    H, W = out.shape
    for _ in range(iterations):
        hole = np.isnan(out)
        if not hole.any():
            break
        pad = np.pad(np.where(hole, np.inf, out), 1, constant_values=np.inf)
        best = np.full((H, W), np.inf, np.float32)
        for dy in range(3):
            for dx in range(3):
                best = np.minimum(best, pad[dy : dy + H, dx : dx + W])
        fill = hole & np.isfinite(best)
        out[fill] = best[fill]
    return out
