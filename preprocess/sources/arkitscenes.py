"""ARKitScenes (3DOD subset) in its published layout.

    <path>/[3dod/][Training|Validation/]<video_id>/
        <video_id>_3dod_mesh.ply                          mesh: its vertices are the point cloud
        <video_id>_frames/lowres_wide/<video_id>_<t>.png  colour (t = timestamp in s, e.g. 6845.123)
        <video_id>_frames/lowres_depth/<video_id>_<t>.png uint16 depth in mm, 0 = none
        <video_id>_frames/lowres_wide_intrinsics/<video_id>_<t>.pincam   "w h fx fy cx cy"
        <video_id>_frames/lowres_wide.traj                one line per pose:
                                                          "t ax ay az tx ty tz"

The ``.traj`` rotation is an axis-angle vector (radians) and with the
translation maps world to camera (ARKitScenes' own ``TrajStringToMatrix`` and
Pointcept's preprocessing invert it to get camera-to-world); camera axes are
OpenCV's. Each image takes the pose with the nearest timestamp, if it is within
``max_pose_dt`` seconds. Depth is left None for the renderer (the paper renders
it from the mesh); ``use_sensor_depth=True`` reads lowres_depth instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from preprocess.scene import Frame, Scene
from preprocess.geometry import rotvec_to_matrix
from preprocess.sources._common import (
    AdapterBase,
    depth_from_raw,
    intrinsics,
    point_cloud_from_ply,
    pose_from_world_to_camera,
    read_rgb,
    read_uint16_png,
    require_dir,
    require_file,
)
from preprocess.sources.base import SceneRef, SourceError, register_source


def read_traj(path: Path, scene: str) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps float64 [T], camera-to-world float32 [T,4,4]) from a .traj file."""
    require_file(scene, path, "trajectory .traj")
    times, poses = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        tok = line.split()
        try:
            vals = [float(t) for t in tok]
        except ValueError:
            vals = []
        if len(vals) != 7 or not np.isfinite(vals).all():
            raise SourceError(scene, f"{path}:{lineno}", f"expected 7 numbers 't ax ay az tx ty tz', got {line.strip()!r}")
        times.append(vals[0])
        poses.append(pose_from_world_to_camera(rotvec_to_matrix(vals[1:4]), np.array(vals[4:7])))
    if not poses:
        raise SourceError(scene, str(path), "trajectory is empty")
    return np.array(times), np.stack(poses)


def read_pincam(path: Path, scene: str) -> tuple[np.ndarray, tuple[int, int]]:
    """(K float32 [3,3], (H, W)) from a .pincam file "w h fx fy cx cy"."""
    require_file(scene, path, "intrinsics .pincam")
    try:
        w, h, fx, fy, cx, cy = (float(t) for t in path.read_text().split())
    except ValueError as exc:
        raise SourceError(scene, str(path), f"expected 6 numbers 'w h fx fy cx cy' ({exc})") from exc
    return intrinsics(fx, fy, cx, cy), (int(round(h)), int(round(w)))


@register_source("arkitscenes")
class ARKitScenesSource(AdapterBase):
    """Options: frame_skip (1), use_sensor_depth (False), max_pose_dt (0.05 s),
    hash_mode ("stat")."""

    OPTIONS = {"use_sensor_depth": False, "max_pose_dt": 0.05}

    def _videos(self) -> dict[str, Path]:
        out = {}
        stack = [(self.path, 0)]
        while stack:  # the video folders sit at most 3 levels down (3dod/<split>/<video>)
            d, depth = stack.pop()
            for sub in sorted(p for p in d.iterdir() if p.is_dir()):
                if (sub / f"{sub.name}_3dod_mesh.ply").is_file() or (sub / f"{sub.name}_frames").is_dir():
                    out[sub.name] = sub
                elif depth < 3 and not sub.name.endswith("_frames"):
                    stack.append((sub, depth + 1))
        return dict(sorted(out.items()))

    def _images(self, d: Path) -> list[Path]:
        wide = d / f"{d.name}_frames" / "lowres_wide"
        if not wide.is_dir():
            return []
        imgs = sorted(wide.glob(f"{d.name}_*.png"), key=lambda p: self._timestamp(p))
        return imgs[:: self.frame_skip]

    @staticmethod
    def _timestamp(p: Path) -> float:
        try:
            return float(p.stem.split("_", 1)[1])
        except (IndexError, ValueError):
            return float("inf")

    def discover(self) -> list[SceneRef]:
        refs = []
        for vid, d in self._videos().items():
            fr = d / f"{vid}_frames"
            files = [d / f"{vid}_3dod_mesh.ply", fr / "lowres_wide.traj"]
            for img in self._images(d):
                files += [img, fr / "lowres_wide_intrinsics" / f"{img.stem}.pincam"]
                if self.options["use_sensor_depth"]:
                    files.append(fr / "lowres_depth" / img.name)
            refs.append(self.ref(vid, [f for f in files if f.is_file()]))
        return refs

    def load(self, ref: SceneRef) -> Scene:
        key = self.key(ref.scene_id)
        videos = self._videos()
        if ref.scene_id not in videos:
            raise SourceError(key, str(self.path), "video folder not found")
        d = videos[ref.scene_id]
        mesh = require_file(key, d / f"{ref.scene_id}_3dod_mesh.ply", "3DOD mesh")
        points, _ = point_cloud_from_ply(mesh, key)
        fr = require_dir(key, d / f"{ref.scene_id}_frames", "frames folder")
        require_dir(key, fr / "lowres_wide", "colour images")
        times, poses = read_traj(fr / "lowres_wide.traj", key)
        frames, skipped = [], []
        for img in self._images(d):
            t = self._timestamp(img)
            if not np.isfinite(t):
                raise SourceError(key, str(img), "file name is not '<video_id>_<timestamp>.png'")
            i = int(np.argmin(np.abs(times - t)))
            if abs(times[i] - t) > float(self.options["max_pose_dt"]):
                skipped.append(img.stem)  # no pose near this image
                continue
            rgb = read_rgb(img, key)
            K, hw = read_pincam(fr / "lowres_wide_intrinsics" / f"{img.stem}.pincam", key)
            if hw != rgb.shape[:2]:
                raise SourceError(key, str(fr / "lowres_wide_intrinsics" / f"{img.stem}.pincam"),
                                  f"intrinsics are for {hw[1]}x{hw[0]}, image is {rgb.shape[1]}x{rgb.shape[0]}")
            depth = None
            if self.options["use_sensor_depth"]:
                raw = read_uint16_png(fr / "lowres_depth" / img.name, key)
                if raw.shape != rgb.shape[:2]:
                    raise SourceError(key, str(fr / "lowres_depth" / img.name), f"depth is {list(raw.shape)}, colour is {list(rgb.shape[:2])}")
                depth = depth_from_raw(raw, 1000.0)
            frames.append(Frame(name=img.stem, rgb=rgb, K=K, pose=poses[i].copy(), depth=depth))
        scene = Scene(scene_id=ref.scene_id, source=self.name, points=points, frames=frames, mesh_path=mesh,
                      content_hash=ref.content_hash,
                      meta={"dataset": "arkitscenes", "skipped_frames": skipped, "frame_skip": self.frame_skip})
        return scene.validate()
