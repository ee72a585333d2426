"""Structured3D (unzipped) in its published layout; one scene per room.

    <path>/[Structured3D/]scene_<sceneID>/2D_rendering/<roomID>/perspective/full/<positionID>/
        rgb_rawlight.png     colour
        depth.png            uint16 z-depth in mm, 0 = no reading
        semantic.png         uint8 NYU40 label ids (optional)
        camera_pose.txt      "vx vy vz tx ty tz ux uy uz xfov yfov 1": eye (mm),
                             view direction, up direction, half-angles of the
                             horizontal / vertical field of view (radians)

Conversion (matches the dataset's own ``misc/utils.parse_camera_info``): camera
x = towards x up (right), y = -up (down), z = towards; fx = (W/2) / tan(xfov),
fy = (H/2) / tan(yfov), principal point (W/2, H/2).

The dataset ships no mesh or point cloud, so the room's point cloud is the
union of its perspective depth maps unprojected to the world (as Pointcept's
Concerto preprocessing does), coloured from the images, labelled from
semantic.png mapped to the 25 Structured3D benchmark classes, with normals from
neighbouring pixels. Depth is taken as given (the paper uses it directly).
Panoramas are not read (they are not pinhole images).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from preprocess.scene import Frame, PointCloud, Scene
from preprocess.sources._common import (
    AdapterBase,
    depth_from_raw,
    intrinsics,
    read_rgb,
    read_uint16_png,
    require_file,
)
from preprocess.sources.base import SceneRef, SourceError, register_source

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
    cx, cy = width / 2.0, height / 2.0
    K = intrinsics(cx / np.tan(values[9]), cy / np.tan(values[10]), cx, cy)
    return K, pose.astype(np.float32)


def nyu40_to_structured3d25(sem: np.ndarray) -> np.ndarray:
    lut = np.full(256, -1, np.int32)
    lut[list(STRUCTURED3D_25_NYU40_IDS)] = np.arange(len(STRUCTURED3D_25_NYU40_IDS), dtype=np.int32)
    return lut[np.clip(sem.astype(np.int64), 0, 255)]


def unproject(depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """float64 [H,W,3] world points of every pixel (NaN where depth is NaN)."""
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    cam = np.stack([x, y, depth.astype(np.float64)], axis=-1)
    return cam @ pose[:3, :3].T.astype(np.float64) + pose[:3, 3].astype(np.float64)


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


@register_source("structured3d")
class Structured3DSource(AdapterBase):
    """Options: frame_skip (1), min_view_cosine (0.15: drop points seen at
    grazing angles, where depth edges smear), voxel_size (None: keep every
    pixel's point; else keep one point per voxel of this size in metres),
    hash_mode ("stat")."""

    OPTIONS = {"min_view_cosine": 0.15, "voxel_size": None}

    def _scene_root(self) -> Path:
        return self.path / "Structured3D" if (self.path / "Structured3D").is_dir() else self.path

    def _rooms(self) -> dict[str, Path]:
        out = {}
        for scene_dir in sorted(self._scene_root().glob("scene_*")):
            rendering = scene_dir / "2D_rendering"
            if not rendering.is_dir():
                continue
            for room in sorted(rendering.iterdir(), key=lambda p: p.name):
                if (room / "perspective" / "full").is_dir():
                    out[f"{scene_dir.name}_room_{room.name}"] = room
        return out

    def _positions(self, room: Path) -> list[Path]:
        full = room / "perspective" / "full"
        ps = sorted((p for p in full.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name))
        return ps[:: self.frame_skip]

    def discover(self) -> list[SceneRef]:
        refs = []
        for sid, room in self._rooms().items():
            files = [f for p in self._positions(room) for f in p.iterdir() if f.name in
                     ("rgb_rawlight.png", "depth.png", "semantic.png", "camera_pose.txt")]
            refs.append(self.ref(sid, files))
        return refs

    def load(self, ref: SceneRef) -> Scene:
        key = self.key(ref.scene_id)
        rooms = self._rooms()
        if ref.scene_id not in rooms:
            raise SourceError(key, str(self.path), "room folder not found")
        frames, coords, colors, normals, labels = [], [], [], [], []
        for pos in self._positions(rooms[ref.scene_id]):
            rgb = read_rgb(pos / "rgb_rawlight.png", key)
            raw = read_uint16_png(pos / "depth.png", key)
            if raw.shape != rgb.shape[:2]:
                raise SourceError(key, str(pos / "depth.png"), f"depth is {list(raw.shape)}, colour is {list(rgb.shape[:2])}")
            depth = depth_from_raw(raw, 1000.0)
            cam_file = require_file(key, pos / "camera_pose.txt", "camera pose")
            try:
                values = np.array(cam_file.read_text().split(), dtype=np.float64)
            except ValueError as exc:
                raise SourceError(key, str(cam_file), f"non-numeric camera pose ({exc})") from exc
            if values.size < 11 or not np.isfinite(values[:11]).all():
                raise SourceError(key, str(cam_file), f"expected 'vx vy vz tx ty tz ux uy uz xfov yfov 1', got {values.size} numbers")
            if not (0 < values[9] < np.pi / 2 and 0 < values[10] < np.pi / 2):
                raise SourceError(key, str(cam_file), f"fov half-angles must be in (0, pi/2) radians, got {values[9]}, {values[10]}")
            if np.linalg.norm(np.cross(values[3:6], values[6:9])) < 1e-9:
                raise SourceError(key, str(cam_file), "view and up directions are parallel or zero")
            K, pose = camera_from_structured3d(values, rgb.shape[1], rgb.shape[0])
            frames.append(Frame(name=pos.name, rgb=rgb, K=K, pose=pose, depth=depth))

            pts = unproject(depth, K, pose)
            nrm = image_normals(pts, pose[:3, 3].astype(np.float64))
            ray = pose[:3, 3].astype(np.float64) - pts
            ray /= np.linalg.norm(ray, axis=-1, keepdims=True)
            cosine = np.abs(np.einsum("hwc,hwc->hw", nrm, ray))
            # pixels with no horizontal or vertical neighbour have no normal: keep
            # them with the view direction as normal rather than drop them
            no_normal = ~np.isfinite(cosine)
            nrm[no_normal] = ray[no_normal]
            keep = np.isfinite(depth) & (no_normal | (cosine >= float(self.options["min_view_cosine"])))
            coords.append(pts[keep])
            colors.append(rgb[keep])
            normals.append(nrm[keep])
            sem_path = pos / "semantic.png"
            if sem_path.is_file():
                sem = np.asarray(read_rgb_or_gray(sem_path, key))
                if sem.shape != depth.shape:
                    raise SourceError(key, str(sem_path), f"semantic is {list(sem.shape)}, depth is {list(depth.shape)}")
                labels.append(nyu40_to_structured3d25(sem)[keep])
            else:
                labels.append(np.full(int(keep.sum()), -1, np.int32))
        if not frames:
            raise SourceError(key, str(rooms[ref.scene_id] / "perspective" / "full"), "room has no perspective views")
        coord = np.concatenate(coords)
        if len(coord) == 0:
            raise SourceError(key, str(rooms[ref.scene_id]), "no valid depth in any perspective view")
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


def read_rgb_or_gray(path: Path, scene: str) -> np.ndarray:
    """uint8 [H,W] label image (first channel if stored as RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as exc:
        raise SourceError(scene, str(path), f"cannot decode label image ({type(exc).__name__}: {exc})") from exc
    return arr if arr.ndim == 2 else arr[..., 0]
