"""Structured3D in its published layout; one scene per room.

The dataset path holds either the published zip archives (every ``*.zip`` is
read in place, nothing extracted) or an extracted copy:

    <path>/[Structured3D/]scene_<sceneID>/2D_rendering/<roomID>/perspective/full/<positionID>/
        rgb_rawlight.png     colour
        depth.png            uint16 z-depth in mm, 0 = no reading
        semantic.png         uint8 NYU40 label ids (optional)
        camera_pose.txt      "vx vy vz tx ty tz ux uy uz xfov yfov 1": eye (mm),
                             view direction, up direction, half-angles of the
                             horizontal / vertical field of view (radians)

Conversion (the dataset's own ``misc/utils.parse_camera_info``): camera
x = towards x up (right), y = -up (down), z = towards; fx = (W/2) / tan(xfov),
fy = (H/2) / tan(yfov). The dataset's principal point (W/2, H/2) is the image
centre with pixel edges at integers; with this project's pixel centres at
integers the centre is ((W-1)/2, (H-1)/2), which is what K holds.

The dataset ships no mesh or point cloud, so the room's point cloud is the
union of its perspective depth maps unprojected to the world (as Pointcept's
Concerto preprocessing does), coloured from the images, labelled from
semantic.png mapped to the 25 Structured3D benchmark classes, with normals from
neighbouring pixels. Pixels whose semantic id is 0 (no label) give no point, as
in Concerto's preprocessing (``keep_unlabelled=True`` keeps them as -1). Depth is
taken as given (the paper uses it directly). Panoramas are not read (they are
not pinhole images). Scenes the dataset's ``metadata/errata.txt`` lists as
invalid are skipped (``skip_errata``); its room entries concern the layout
annotations, which are not read here, so those rooms are kept.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from preprocess.geometry import unproject_depth
from preprocess.scene import Frame, PointCloud, Scene
from preprocess.sources._common import AdapterBase, decode_rgb, depth_from_raw, intrinsics, require_file
from preprocess.sources.base import SceneRef, SourceError, hash_files, register_source

# Scenes listed as invalid in Structured3D's metadata/errata.txt.
ERRATA_INVALID_SCENES = frozenset({"scene_01155", "scene_01714", "scene_01816", "scene_03398", "scene_01192",
                                   "scene_01852"})

# NYU40 ids of the 25 Structured3D benchmark classes (Pointcept's order).
STRUCTURED3D_25_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 14, 15, 16, 17, 18, 19, 22, 24, 25, 32, 34, 35, 38, 39, 40)


def camera_from_structured3d(values: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """camera_pose.txt values -> (K float32 [3,3], camera-to-world float32 [4,4]
    in metres, OpenCV axes)."""
    eye = values[0:3] / 1000.0
    towards = values[3:6] / np.linalg.norm(values[3:6])
    up = values[6:9] / np.linalg.norm(values[6:9])
    right = np.cross(towards, up)
    right /= np.linalg.norm(right)
    down = np.cross(towards, right)  # = -up made orthogonal to towards
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, towards, eye
    # focal from the half-width and the half-angle; centre at (W-1)/2 for integer pixel centres
    K = intrinsics((width / 2.0) / np.tan(values[9]), (height / 2.0) / np.tan(values[10]),
                   (width - 1) / 2.0, (height - 1) / 2.0)
    return K, pose.astype(np.float32)


def nyu40_to_structured3d25(sem: np.ndarray) -> np.ndarray:
    lut = np.full(256, -1, np.int32)
    lut[list(STRUCTURED3D_25_NYU40_IDS)] = np.arange(len(STRUCTURED3D_25_NYU40_IDS), dtype=np.int32)
    return lut[np.clip(sem.astype(np.int64), 0, 255)]


def image_normals(points: np.ndarray, camera_centre: np.ndarray) -> np.ndarray:
    """Unit normals [H,W,3] from the cross product of the horizontal and
    vertical neighbour differences of a pixel grid of 3D points, turned to face
    the camera. NaN where a neighbour is missing."""
    dx = np.full_like(points, np.nan)
    dy = np.full_like(points, np.nan)
    dx[:, :-1] = points[:, 1:] - points[:, :-1]
    dy[:-1] = points[1:] - points[:-1]
    # last column / row, or a missing forward neighbour: use the backward difference
    back_x = np.full_like(points, np.nan)
    back_y = np.full_like(points, np.nan)
    back_x[:, 1:] = points[:, 1:] - points[:, :-1]
    back_y[1:] = points[1:] - points[:-1]
    dx = np.where(np.isfinite(dx), dx, back_x)
    dy = np.where(np.isfinite(dy), dy, back_y)
    n = np.cross(dx, dy)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    flip = np.einsum("hwc,hwc->hw", n, camera_centre - points) < 0
    n[flip] *= -1
    return n


_NEEDED = ("rgb_rawlight.png", "depth.png", "semantic.png", "camera_pose.txt")
_PERSPECTIVE = re.compile(r"^(?:Structured3D/)?(scene_[^/]+)/2D_rendering/([^/]+)/perspective/full/([^/]+)/([^/]+)$")


class DatasetFiles:
    """The perspective-view files of a Structured3D copy, from an extracted
    folder or straight from the published zip archives (every ``*.zip`` in the
    dataset path). Maps "scene/room/position/file" -> where to read it.

    Content signatures: folder = size + mtime (or sha1 of the bytes with
    hash_mode "content"); zip = the member's CRC-32 and size from the
    archive's directory, a content hash that costs no reading."""

    def __init__(self, root: Path):
        self.root = root
        self.zips = sorted(root.glob("*.zip"))
        # (scene, room) -> position -> file name -> zip path (str) or file path
        self.rooms: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
        self.zip_info: dict[str, tuple[str, int, int]] = {}  # member name -> (zip, crc, size)
        if self.zips:
            for z in self.zips:
                with zipfile.ZipFile(z) as zf:
                    for info in zf.infolist():
                        self._add(info.filename, str(z))
                        self.zip_info[info.filename] = (str(z), info.CRC, info.file_size)
        else:
            base = root / "Structured3D" if (root / "Structured3D").is_dir() else root
            for scene_dir in sorted(base.glob("scene_*")):
                for dirpath, _, files in os.walk(scene_dir / "2D_rendering"):
                    for f in files:
                        full = Path(dirpath) / f
                        self._add(full.relative_to(base).as_posix(), str(full))

    def _add(self, name: str, where: str) -> None:
        m = _PERSPECTIVE.match(name)
        if m and m[4] in _NEEDED:
            self.rooms.setdefault((m[1], m[2]), {}).setdefault(m[3], {})[m[4]] = name if self.zips else where

    def signature(self, ref: str, mode: str) -> str:
        if self.zips:
            z, crc, size = self.zip_info[ref]
            return f"{ref}:{Path(z).name}:{crc}:{size}"
        if mode == "content":
            return f"{ref}:{hash_files([ref])}"
        st = Path(ref).stat()
        return f"{ref}:{st.st_size}:{st.st_mtime_ns}"

    def read(self, ref: str, scene: str, zips_open: dict) -> bytes:
        if not self.zips:
            require_file(scene, Path(ref))
            return Path(ref).read_bytes()
        z = self.zip_info[ref][0]
        try:
            if z not in zips_open:
                zips_open[z] = zipfile.ZipFile(z)
            return zips_open[z].read(ref)
        except (zipfile.BadZipFile, zlib.error, OSError, KeyError) as exc:
            raise SourceError(scene, f"{z}:{ref}", f"cannot read archive member ({type(exc).__name__}: {exc})") from exc

    def describe(self, ref: str) -> str:
        return f"{self.zip_info[ref][0]}:{ref}" if self.zips else ref


@register_source("structured3d")
class Structured3DSource(AdapterBase):
    """Options: frame_gap (1), min_view_cosine (0.15: drop points seen at
    grazing angles, where depth edges smear), voxel_size (None: keep every
    pixel's point; else keep one point per voxel of this size in metres),
    keep_unlabelled (False: semantic 0 pixels give no point), skip_errata (True),
    hash_mode ("stat"; ignored for zips, whose CRCs are content hashes)."""

    OPTIONS = {"min_view_cosine": 0.15, "voxel_size": None, "keep_unlabelled": False, "skip_errata": True}

    def _files(self) -> DatasetFiles:
        cache = self.cache()
        if "files" not in cache:
            cache["files"] = DatasetFiles(self.path)
        return cache["files"]

    def _rooms(self) -> dict[str, tuple[str, str]]:
        skip = ERRATA_INVALID_SCENES if self.options["skip_errata"] else frozenset()
        return {f"{scene}_room_{room}": (scene, room) for scene, room in sorted(self._files().rooms) if scene not in skip}

    def _positions(self, scene: str, room: str) -> list[tuple[str, dict[str, str]]]:
        positions = self._files().rooms[(scene, room)]
        names = sorted(positions, key=lambda p: (len(p), p))[:: self.frame_gap]
        return [(p, positions[p]) for p in names]

    def discover(self) -> list[SceneRef]:
        files = DatasetFiles(self.path)  # always re-scan: discovery must see changes
        self.cache()["files"] = files
        mode = self.options["hash_mode"]
        refs = []
        for sid, (scene, room) in self._rooms().items():
            h = hashlib.sha1(self.options_key().encode())
            for pos, entries in self._positions(scene, room):
                for fname in sorted(entries):
                    h.update(f"{pos}/{fname}={files.signature(entries[fname], mode)}\n".encode())
            refs.append(SceneRef(self.name, sid, h.hexdigest()))
        return refs

    def load(self, ref: SceneRef) -> Scene:
        key = self.key(ref.scene_id)
        rooms = self._rooms()
        if ref.scene_id not in rooms:
            raise SourceError(key, str(self.path), "room not found (no perspective/full views)")
        scene_name, room = rooms[ref.scene_id]
        files = self._files()
        zips_open = self.cache().setdefault("zips_open", {})
        room_dir = f"{scene_name}/2D_rendering/{room}/perspective/full"

        def read(entries: dict, pos: str, fname: str, required=True):
            if fname not in entries:
                if required:
                    raise SourceError(key, f"{self.path}/{room_dir}/{pos}/{fname}", "missing file")
                return None, None
            return files.read(entries[fname], key, zips_open), files.describe(entries[fname])

        frames, coords, colors, normals, labels = [], [], [], [], []
        for pos, entries in self._positions(scene_name, room):
            data, where = read(entries, pos, "rgb_rawlight.png")
            rgb = decode_rgb(data, key, where)
            data, where = read(entries, pos, "depth.png")
            raw = _decode_uint16(data, key, where)
            if raw.shape != rgb.shape[:2]:
                raise SourceError(key, where, f"depth is {list(raw.shape)}, colour is {list(rgb.shape[:2])}")
            depth = depth_from_raw(raw, 1000.0)
            data, where = read(entries, pos, "camera_pose.txt")
            try:
                values = np.array(data.decode("ascii", "replace").split(), dtype=np.float64)
            except ValueError as exc:
                raise SourceError(key, where, f"non-numeric camera pose ({exc})") from exc
            if values.size < 11 or not np.isfinite(values[:11]).all():
                raise SourceError(key, where, f"expected 'vx vy vz tx ty tz ux uy uz xfov yfov 1', got {values.size} numbers")
            if not (0 < values[9] < np.pi / 2 and 0 < values[10] < np.pi / 2):
                raise SourceError(key, where, f"fov half-angles must be in (0, pi/2) radians, got {values[9]}, {values[10]}")
            if np.linalg.norm(np.cross(values[3:6], values[6:9])) < 1e-9:
                raise SourceError(key, where, "view and up directions are parallel or zero")
            K, pose = camera_from_structured3d(values, rgb.shape[1], rgb.shape[0])
            frames.append(Frame(name=pos, rgb=rgb, K=K, pose=pose, depth=depth))

            pts = unproject_depth(depth, K, pose)
            nrm = image_normals(pts, pose[:3, 3].astype(np.float64))
            ray = pose[:3, 3].astype(np.float64) - pts
            ray /= np.linalg.norm(ray, axis=-1, keepdims=True)
            cosine = np.abs(np.einsum("hwc,hwc->hw", nrm, ray))
            # pixels with no horizontal or vertical neighbour have no normal: keep
            # them with the view direction as normal rather than drop them
            no_normal = ~np.isfinite(cosine)
            nrm[no_normal] = ray[no_normal]
            keep = np.isfinite(depth) & (no_normal | (cosine >= float(self.options["min_view_cosine"])))
            data, where = read(entries, pos, "semantic.png", required=False)
            sem = None
            if data is not None:
                sem = _decode_labels(data, key, where)
                if sem.shape != depth.shape:
                    raise SourceError(key, where, f"semantic is {list(sem.shape)}, depth is {list(depth.shape)}")
                if not self.options["keep_unlabelled"]:
                    keep &= sem > 0  # Concerto drops unlabelled pixels
            coords.append(pts[keep])
            colors.append(rgb[keep])
            normals.append(nrm[keep])
            labels.append(nyu40_to_structured3d25(sem)[keep] if sem is not None else np.full(int(keep.sum()), -1, np.int32))
        if not frames:
            raise SourceError(key, f"{self.path}/{room_dir}", "room has no perspective views")
        coord = np.concatenate(coords)
        if len(coord) == 0:
            raise SourceError(key, f"{self.path}/{room_dir}", "no valid depth in any perspective view")
        color, normal, segment = np.concatenate(colors), np.concatenate(normals), np.concatenate(labels)
        if self.options["voxel_size"]:
            grid = np.floor(coord / float(self.options["voxel_size"])).astype(np.int64)
            _, first = np.unique(grid, axis=0, return_index=True)
            first.sort()
            coord, color, normal, segment = coord[first], color[first], normal[first], segment[first]
        points = PointCloud(coord=coord.astype(np.float32), color=color.astype(np.uint8),
                            normal=normal.astype(np.float32), segment=segment.astype(np.int32))
        scene = Scene(scene_id=ref.scene_id, source=self.name, points=points, frames=frames, mesh_path=None,
                      content_hash=ref.content_hash, meta={"dataset": "structured3d"})
        return scene.validate(require_depth=True)


def _decode_png(data: bytes, scene: str, where: str, what: str) -> np.ndarray:
    """Decode an image file's bytes; a clear SourceError naming ``where`` if it can't."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im)
    except Exception as exc:
        raise SourceError(scene, where, f"cannot decode {what} image ({type(exc).__name__}: {exc})") from exc


def _decode_uint16(data: bytes, scene: str, where: str) -> np.ndarray:
    arr = _decode_png(data, scene, where, "depth")
    if arr.ndim != 2:
        raise SourceError(scene, where, f"depth image must have one channel, got shape {list(arr.shape)}")
    return arr.astype(np.uint16)


def _decode_labels(data: bytes, scene: str, where: str) -> np.ndarray:
    """uint8 [H,W] label image (first channel if stored as RGB)."""
    arr = _decode_png(data, scene, where, "label")
    return arr if arr.ndim == 2 else arr[..., 0]
