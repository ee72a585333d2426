"""S3DIS: point clouds from Stanford3dDataset_v1.2, images from 2D-3D-S.

Point clouds (``path``, Stanford3dDataset_v1.2, not the "Aligned" version)::

    <path>/Area_<N>/<room>/Annotations/<class>_<k>.txt    "x y z r g b" per line, one file per object

Images and meshes (option ``images_root``, 2D-3D-S "noXYZ")::

    <images_root>/area_<N>/data/rgb/camera_<uuid>_<room>_frame_<j>_domain_rgb.png
                           data/depth/camera_<uuid>_<room>_frame_<j>_domain_depth.png   uint16, 1/512 m, 65535 = none
                           data/pose/camera_<uuid>_<room>_frame_<j>_domain_pose.json     camera_k_matrix [3,3],
                                                                                        camera_rt_matrix [3,4] world-to-camera
                           3d/rgb.obj                                                   the area's mesh (Y up)
    (Area 5 is split in 2D-3D-S into area_5a and area_5b.)

Poses are in the S3DIS point-cloud frame (z up) and OpenCV camera axes, as
Pointcept's Concerto preprocessing uses them. Area 5's images come in two
2D-3D-S parts: area_5a's poses are in the Area_5 frame, area_5b's are registered
to the 5b model; the adapter moves them (and the 5b mesh) into the Area_5 frame
with Pointcept's fixed 5b -> 5a transform. The known bad byte of
``Area_5/office_19/Annotations/ceiling_1.txt`` is repaired on read (replaced by
'0', as Pointcept's README fixes it by hand) with a ``RepairedFileWarning``
naming the file; any other malformed file is an error. The area meshes are stored y-up
(mesh (x, y, z) = cloud (x, z, -y)), and area_5b's mesh additionally needs
Pointcept's fixed transform to join area_5a. For rendering, the adapter crops
the area mesh to the room (cloud bounding box + ``mesh_margin``), converts it
to the cloud frame and caches it as a PLY in ``mesh_cache_dir``; that PLY is
``scene.mesh_path``. Depth is None (rendered, as in the paper) unless
``use_sensor_depth=True`` (the 2D-3D-S z-depth images). Normals are estimated
from the points' neighbours; labels are the 13 S3DIS classes (unknown classes,
e.g. "stairs", become clutter) and instances are the annotation files.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from preprocess.atomic_file import atomic_write
from preprocess.scene import Frame, PointCloud, Scene
from preprocess.sources._common import (
    LEGACY_FRAME_GAP,
    AdapterBase,
    depth_from_raw,
    estimate_normals,
    pose_from_world_to_camera,
    read_rgb,
    read_uint16_png,
    require_file,
    rotation_is_valid,
)
from preprocess.sources.base import SceneRef, SourceError, register_source

S3DIS_CLASSES = ("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
                 "bookcase", "board", "clutter")
# mesh (y up) -> point-cloud frame (z up): (x, y, z) -> (x, -z, y)
MESH_TO_CLOUD = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)
# area_5b's mesh into area_5a's mesh frame (from Pointcept's Concerto S3DIS preprocessing)
AREA_5B_TO_5A = np.array([[0, 0, -1, -4.09703582], [0, 1, 0, 0], [1, 0, 0, -6.22617759], [0, 0, 0, 1]], np.float64)
# the same move for area_5b's camera poses, which are registered to the 5b model (in the z-up cloud axes)
AREA_5B_POSES_TO_AREA_5 = MESH_TO_CLOUD @ AREA_5B_TO_5A @ np.linalg.inv(MESH_TO_CLOUD)
_RGB_NAME = re.compile(r"^camera_(?P<cam>[0-9A-Za-z]+)_(?P<room>.+)_frame_(?P<frame>\d+)_domain_rgb\.png$")


class RepairedFileWarning(UserWarning):
    """A known defect of the official download was repaired on read."""


# Files of Stanford3dDataset_v1.2 with a known bad byte inside a number (Pointcept's
# README: Area_5/office_19 ceiling, line 323474, "103.0?0000" for "103.000000").
KNOWN_BAD_BYTES = ("Area_5/office_19/Annotations/ceiling_1.txt",)
_NUMBER_BYTES = frozenset(b"0123456789.-+eE \t\r\n")


def _repair_known_defect(path: Path, scene: str) -> Optional[np.ndarray]:
    """The points of a known-defective file with each bad byte replaced by '0'
    (a warning names the file and the lines), or None if ``path`` is not one."""
    if not any(path.as_posix().endswith(k) for k in KNOWN_BAD_BYTES):
        return None
    data = bytearray(path.read_bytes())
    bad = [i for i, b in enumerate(data) if b not in _NUMBER_BYTES]
    if not bad or len(bad) > 16:
        return None  # not the known defect: let the caller report it
    lines = sorted({data.count(b"\n", 0, i) + 1 for i in bad})
    for i in bad:
        data[i] = ord("0")
    warnings.warn(f"scene '{scene}': {path}: repaired {len(bad)} bad byte(s) on line(s) {lines} "
                  "(a known defect of Stanford3dDataset_v1.2)", RepairedFileWarning, stacklevel=3)
    return np.loadtxt(io.BytesIO(bytes(data)), dtype=np.float64, ndmin=2)


def read_object_txt(path: Path, scene: str) -> np.ndarray:
    """float64 [N,6] (x y z r g b) from an S3DIS annotation file; the known bad
    byte of Area_5/office_19's ceiling is repaired with a warning."""
    try:
        arr = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        arr = _repair_known_defect(Path(path), scene)
        if arr is None:
            raise SourceError(scene, str(path), f"malformed point line ({exc})") from exc
    if arr.size == 0:
        return np.zeros((0, 6))
    if arr.shape[1] < 6:
        raise SourceError(scene, str(path), f"expected 'x y z r g b' per line, got {arr.shape[1]} columns")
    if not np.isfinite(arr[:, :6]).all():
        raise SourceError(scene, str(path), "NaN/inf values")
    return arr[:, :6]


@register_source("s3dis")
class S3DISSource(AdapterBase):
    """Options: frame_gap (1), images_root (None: point clouds only),
    use_sensor_depth (False), mesh_cache_dir (None: ~/.cache/concerto/s3dis_meshes),
    mesh_margin (0.1 m), normal_neighbours (16), hash_mode ("stat")."""

    OPTIONS = {"images_root": None, "use_sensor_depth": False, "mesh_cache_dir": None, "mesh_margin": 0.1,
               "normal_neighbours": 16}

    def __init__(self, path, name=None, **options):
        super().__init__(path, name, **options)
        root = self.options["images_root"]
        if root is not None and not Path(root).is_dir():
            raise ValueError(f"source '{self.name}' (s3dis): images_root '{root}' is not a directory")

    # ------------------------------------------------------------------ discovery
    def _rooms(self) -> dict[str, Path]:
        out = {}
        for area in sorted(self.path.glob("Area_*")):
            if not area.is_dir():
                continue
            for room in sorted(area.iterdir()):
                if (room / "Annotations").is_dir():
                    out[f"{area.name}_{room.name}"] = room
        return out

    def _image_areas(self, area: str) -> list[Path]:
        root = Path(self.options["images_root"])
        n = area.split("_")[1]
        cands = [root / f"area_{n}", root / f"area_{n}a", root / f"area_{n}b"]
        return [c for c in cands if c.is_dir()]

    def _frame_files(self, room_dir: Path) -> list[tuple[str, Path, Path, Path, bool]]:
        """(frame name, rgb, pose json, depth png, from area_5b) of the room's images, sorted,
        every frame_gap-th."""
        if self.options["images_root"] is None:
            return []
        room, area = room_dir.name, room_dir.parent.name
        found = []
        for adir in self._image_areas(area):
            rgb_dir = adir / "data" / "rgb"
            if not rgb_dir.is_dir():
                continue
            for p in rgb_dir.glob(f"camera_*_{room}_frame_*_domain_rgb.png"):
                m = _RGB_NAME.match(p.name)
                if m is None or m["room"] != room:
                    continue
                stem = p.name[: -len("_rgb.png")]
                found.append(((m["cam"], int(m["frame"])), f"{m['cam']}_frame_{m['frame']}", p,
                              adir / "data" / "pose" / f"{stem}_pose.json", adir / "data" / "depth" / f"{stem}_depth.png",
                              adir.name.endswith("5b")))
        found.sort(key=lambda t: t[0])
        return [t[1:] for t in found][:: self.frame_gap]

    def _area_mesh_files(self, area: str) -> list[Path]:
        if self.options["images_root"] is None:
            return []
        return [a / "3d" / "rgb.obj" for a in self._image_areas(area) if (a / "3d" / "rgb.obj").is_file()]

    def discover(self) -> list[SceneRef]:
        refs = []
        for sid, room in self._rooms().items():
            files = sorted((room / "Annotations").glob("*.txt"))
            for _, rgb, pose, depth, _ in self._frame_files(room):
                files += [rgb, pose] + ([depth] if self.options["use_sensor_depth"] else [])
            files += self._area_mesh_files(room.parent.name)
            refs.append(self.ref(sid, [f for f in files if f.is_file()]))
        return refs

    # ------------------------------------------------------------------ loading
    def load(self, ref: SceneRef) -> Scene:
        key = self.key(ref.scene_id)
        rooms = self._rooms()
        if ref.scene_id not in rooms:
            raise SourceError(key, str(self.path), "room folder (with Annotations/) not found")
        room = rooms[ref.scene_id]
        points = self._points(room, key)
        frames, skipped = [], []
        for name, rgb_path, pose_path, depth_path, in_5b in self._frame_files(room):
            if not pose_path.is_file():
                skipped.append(name)  # 2D-3D-S has a few images without pose; Pointcept skips them too
                continue
            rgb = read_rgb(rgb_path, key)
            K, pose = self._camera(pose_path, key)
            if in_5b:  # registered to the 5b model: move into the Area_5 frame, as its mesh is
                pose = (AREA_5B_POSES_TO_AREA_5 @ pose.astype(np.float64)).astype(np.float32)
            depth = None
            if self.options["use_sensor_depth"]:
                raw = read_uint16_png(depth_path, key)
                if raw.shape != rgb.shape[:2]:
                    raise SourceError(key, str(depth_path), f"depth is {list(raw.shape)}, colour is {list(rgb.shape[:2])}")
                depth = depth_from_raw(raw, 512.0, invalid=(65535,))
                depth[depth <= 0] = np.nan
            frames.append(Frame(name=name, rgb=rgb, K=K, pose=pose, depth=depth))
        mesh_path = None
        if frames and not self.options["use_sensor_depth"]:
            mesh_path = self._room_mesh(room, points.coord, key, ref.content_hash)
        scene = Scene(scene_id=ref.scene_id, source=self.name, points=points, frames=frames, mesh_path=mesh_path,
                      content_hash=ref.content_hash, meta={"dataset": "s3dis", LEGACY_FRAME_GAP: self.frame_gap, "skipped_frames": skipped})
        return scene.validate()

    def _points(self, room: Path, key: str) -> PointCloud:
        files = sorted((room / "Annotations").glob("*.txt"))
        if not files:
            raise SourceError(key, str(room / "Annotations"), "no annotation files")
        coords, colors, segs, insts = [], [], [], []
        for i, f in enumerate(files):
            arr = read_object_txt(f, key)
            cls = f.stem.split("_")[0]
            label = S3DIS_CLASSES.index(cls) if cls in S3DIS_CLASSES else S3DIS_CLASSES.index("clutter")
            coords.append(arr[:, :3])
            colors.append(arr[:, 3:6])
            segs.append(np.full(len(arr), label, np.int32))
            insts.append(np.full(len(arr), i, np.int32))
        coord = np.concatenate(coords).astype(np.float32)
        if len(coord) == 0:
            raise SourceError(key, str(room / "Annotations"), "annotation files hold no points")
        color = np.clip(np.round(np.concatenate(colors)), 0, 255).astype(np.uint8)
        normal = estimate_normals(coord, k=int(self.options["normal_neighbours"]))
        return PointCloud(coord=coord, color=color, normal=normal, segment=np.concatenate(segs),
                          instance=np.concatenate(insts))

    @staticmethod
    def _camera(pose_path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
        require_file(key, pose_path, "2D-3D-S pose json")
        try:
            data = json.loads(pose_path.read_text())
            K = np.asarray(data["camera_k_matrix"], np.float64)
            rt = np.asarray(data["camera_rt_matrix"], np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(key, str(pose_path), f"malformed pose json ({type(exc).__name__}: {exc})") from exc
        if K.shape != (3, 3) or rt.shape not in ((3, 4), (4, 4)) or not np.isfinite(K).all() or not np.isfinite(rt).all():
            raise SourceError(key, str(pose_path), f"camera_k_matrix must be 3x3 and camera_rt_matrix 3x4, got {list(K.shape)}, {list(rt.shape)}")
        if not rotation_is_valid(rt[:3, :3]):
            raise SourceError(key, str(pose_path), "camera_rt_matrix rotation is not orthonormal")
        return K.astype(np.float32), pose_from_world_to_camera(rt[:3, :3], rt[:3, 3])

    def _load_area_mesh(self, area: str, key: str):
        """The area's mesh(es) in the point-cloud frame, as one trimesh (cached per adapter)."""
        import trimesh

        cached = self.cache().get("area_mesh")
        if cached is not None and cached[0] == area:
            return cached[1]
        parts = []
        for obj in self._area_mesh_files(area):
            try:
                m = trimesh.load(obj, force="mesh", process=False, skip_materials=True)
            except Exception as exc:
                raise SourceError(key, str(obj), f"cannot read mesh ({type(exc).__name__}: {exc})") from exc
            T = MESH_TO_CLOUD @ (AREA_5B_TO_5A if obj.parent.parent.name.endswith("5b") else np.eye(4))
            m.apply_transform(T)
            parts.append(m)
        mesh = trimesh.util.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else None)
        self.cache()["area_mesh"] = (area, mesh)  # one area at a time: area meshes are large
        return mesh

    def _room_mesh(self, room: Path, coord: np.ndarray, key: str, content_hash: str) -> Path:
        area = room.parent.name
        if not self._area_mesh_files(area):
            raise SourceError(key, f"{self.options['images_root']}/area_{area.split('_')[1]}/3d/rgb.obj",
                              "missing area mesh: needed to render depth (or set use_sensor_depth=True)")
        cache = Path(self.options["mesh_cache_dir"] or Path.home() / ".cache" / "concerto" / "s3dis_meshes")
        tag = hashlib.sha1(f"{content_hash}|{self.options['mesh_margin']}".encode()).hexdigest()[:12]
        out = cache / f"{area}_{room.name}_{tag}.ply"
        if out.is_file():
            return out
        mesh = self._load_area_mesh(area, key)
        margin = float(self.options["mesh_margin"])
        lo, hi = coord.min(0) - margin, coord.max(0) + margin
        v = np.asarray(mesh.vertices)
        inside = ((v >= lo) & (v <= hi)).all(1)
        # a face touching the box is kept whole: walls and floors cross the room's edge
        keep = inside[np.asarray(mesh.faces)].any(1)
        if not keep.any():
            raise SourceError(key, str(self._area_mesh_files(area)[0]), "no mesh faces inside the room's bounding box")
        room_mesh = mesh.submesh([np.nonzero(keep)[0]], append=True, repair=False)
        # atomic: parallel workers never see half a file
        return atomic_write(out, lambda tmp: room_mesh.export(tmp, file_type="ply"))
