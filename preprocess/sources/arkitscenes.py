"""ARKitScenes (3DOD subset) in its published layout.

    <path>/[3dod/][Training|Validation/]<video_id>/
        <video_id>_3dod_mesh.ply                          mesh: its vertices are the point cloud
        <video_id>_frames/lowres_wide/<video_id>_<t>.png  colour (t = timestamp in s, e.g. 6845.123)
        <video_id>_frames/lowres_depth/<video_id>_<t>.png uint16 depth in mm, 0 = none
        <video_id>_frames/lowres_wide_intrinsics/<video_id>_<t>.pincam   "w h fx fy cx cy"
        <video_id>_frames/lowres_wide.traj                one line per pose:
                                                          "t ax ay az tx ty tz"

    <path>/[3dod/]metadata.csv                         optional: video_id, ..., sky_direction (Up | Left | Right | Down)

The ``.traj`` rotation is an axis-angle vector (radians) and with the
translation maps world to camera (ARKitScenes' own ``TrajStringToMatrix`` and
Pointcept's preprocessing invert it to get camera-to-world); camera axes are
OpenCV's. Each image takes the pose with the nearest timestamp if it is within
``max_pose_dt`` seconds (5 ms, as the official ``tenFpsDataLoader``); with
``pose_interpolation=True`` an image between two poses at most
``max_pose_gap`` apart gets their interpolation instead (slerp rotation, linear
translation). Depth is left None for the renderer (the paper renders it from
the mesh); ``use_sensor_depth=True`` reads lowres_depth instead.

Some videos were recorded with the device turned: ``metadata.csv`` gives the
sky direction in the image. With ``upright=True`` (default) such frames are
turned sky-up as the official depth-upsampling loader turns them (Left: 90
degrees clockwise, Right: counter-clockwise, Down: 180), and K and the pose are
turned with them (a turn about the optical axis), so geometry stays exact.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from preprocess.scene import Frame, Scene
from preprocess.geometry import rotvec_to_matrix
from preprocess.sources._common import (
    LEGACY_FRAME_GAP,
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


# sky direction -> quarter turns clockwise that bring the sky up
SKY_TURNS = {"Up": 0, "Left": 1, "Down": 2, "Right": 3}


def turn_clockwise(rgb: np.ndarray, depth, K: np.ndarray, pose: np.ndarray):
    """The frame turned 90 degrees clockwise: pixel (u, v) -> (H-1-v, u).
    The camera turns about its optical axis: x' = -y, y' = x, so
    K' = [[fy, 0, H-1-cy], [0, fx, cx]] and pose' = pose @ [[0,1,0],[-1,0,0],[0,0,1]]."""
    H = rgb.shape[0]
    M = np.eye(4)
    M[:3, :3] = [[0, 1, 0], [-1, 0, 0], [0, 0, 1]]
    K2 = intrinsics(K[1, 1], K[0, 0], H - 1 - K[1, 2], K[0, 2])
    d2 = None if depth is None else np.ascontiguousarray(np.rot90(depth, -1))
    return np.ascontiguousarray(np.rot90(rgb, -1)), d2, K2, (pose.astype(np.float64) @ M).astype(np.float32)


def read_sky_directions(path: Path, scene: str) -> dict[str, str]:
    """{video_id: sky_direction} from ARKitScenes' metadata.csv."""
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
        out = {str(r["video_id"]).strip(): str(r["sky_direction"]).strip() for r in rows}
    except (KeyError, csv.Error, TypeError) as exc:
        raise SourceError(scene, str(path), f"expected columns video_id and sky_direction ({type(exc).__name__}: {exc})") from exc
    bad = sorted({v for v in out.values() if v not in SKY_TURNS})
    if bad:
        raise SourceError(scene, str(path), f"unknown sky_direction {bad} (expected {sorted(SKY_TURNS)})")
    return out


def interpolate_pose(times: np.ndarray, poses: np.ndarray, t: float, max_gap: float):
    """camera-to-world at time t between the two poses around it (slerp, linear
    translation), or None if t is outside the trajectory or they are more than
    ``max_gap`` s apart."""
    j = int(np.searchsorted(times, t))
    if j == 0 or j >= len(times) or times[j] - times[j - 1] > max_gap:
        return None
    t0, t1 = times[j - 1], times[j]
    a = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
    R = Slerp([0.0, 1.0], Rotation.from_matrix(poses[[j - 1, j], :3, :3].astype(np.float64)))([a]).as_matrix()[0]
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = (1 - a) * poses[j - 1, :3, 3] + a * poses[j, :3, 3]
    return out.astype(np.float32)


@register_source("arkitscenes")
class ARKitScenesSource(AdapterBase):
    """Options: frame_gap (1), use_sensor_depth (False), max_pose_dt (0.005 s),
    pose_interpolation (False), max_pose_gap (0.1 s, for interpolation), upright
    (True: turn frames of rotated videos sky-up), hash_mode ("stat")."""

    OPTIONS = {"use_sensor_depth": False, "max_pose_dt": 0.005, "pose_interpolation": False, "max_pose_gap": 0.1,
               "upright": True}

    def _metadata(self) -> Path | None:
        return next((p for p in (self.path / "metadata.csv", self.path / "3dod" / "metadata.csv") if p.is_file()), None)

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
        return imgs[:: self.frame_gap]

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
            if self.options["upright"] and self._metadata() is not None:
                files.append(self._metadata())
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
        order = np.argsort(times, kind="stable")
        times, poses = times[order], poses[order]
        turns = 0
        meta_csv = self._metadata() if self.options["upright"] else None
        if meta_csv is not None:
            turns = SKY_TURNS[read_sky_directions(meta_csv, key).get(ref.scene_id, "Up")]
        frames, skipped = [], []
        for img in self._images(d):
            t = self._timestamp(img)
            if not np.isfinite(t):
                raise SourceError(key, str(img), "file name is not '<video_id>_<timestamp>.png'")
            i = int(np.argmin(np.abs(times - t)))
            pose = poses[i].copy()
            if abs(times[i] - t) > float(self.options["max_pose_dt"]):
                pose = None
                if self.options["pose_interpolation"]:
                    pose = interpolate_pose(times, poses, t, float(self.options["max_pose_gap"]))
                if pose is None:
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
            for _ in range(turns):
                rgb, depth, K, pose = turn_clockwise(rgb, depth, K, pose)
            frames.append(Frame(name=img.stem, rgb=rgb, K=K, pose=pose, depth=depth))
        scene = Scene(scene_id=ref.scene_id, source=self.name, points=points, frames=frames, mesh_path=mesh,
                      content_hash=ref.content_hash,
                      meta={"dataset": "arkitscenes", "skipped_frames": skipped, LEGACY_FRAME_GAP: self.frame_gap,
                            "quarter_turns_clockwise": turns})
        return scene.validate()
