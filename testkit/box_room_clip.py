"""A box-room RealEstate10K clip with exact depth: a textured box room seen by a
slowly turning, pitched-down camera, written in the RE10K dataset layout
(camera file + frames + optional depth). Used by tests and benchmarks.

The camera file's world is a rotated, shifted, ``file_scale``-scaled copy of
the room's z-up metric world (RE10K's own scale and axes are arbitrary), and the
depth files are in the camera file's units.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess import geometry


@dataclass(frozen=True)
class BoxRoomClip:
    room: tuple = (4.0, 5.0, 2.6)  # metres, box [0, room] in a z-up world
    height: int = 48
    width: int = 64
    focal: float = 40.0  # pixels
    frames: int = 80
    cam_height: float = 1.4
    pitch_deg: float = -20.0
    yaw_start_deg: float = 30.0
    yaw_step_deg: float = 0.6
    step: tuple = (0.01, 0.005)  # camera centre moves per frame (x, y), metres
    file_scale: float = 0.5

    def K(self) -> np.ndarray:
        return np.array([[self.focal, 0, (self.width - 1) / 2], [0, self.focal, (self.height - 1) / 2], [0, 0, 1]])

    def pose(self, i: int) -> np.ndarray:
        """Camera-to-world (room frame, OpenCV axes) of frame i."""
        centre = [1.0 + self.step[0] * i, 1.2 + self.step[1] * i, self.cam_height]
        return look_pose(centre, self.yaw_start_deg + self.yaw_step_deg * i, self.pitch_deg)

    def file_world(self) -> np.ndarray:
        """[4,4] similarity from the room frame to the camera file's frame."""
        return geometry.similarity(geometry.axis_angle_to_matrix([0.3, -0.5, 1.0], 1.1), [5.0, -2.0, 1.0], self.file_scale)


def look_pose(centre, yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """OpenCV camera-to-world in a z-up world looking along ``yaw`` (from +x
    towards +y), pitched by ``pitch`` (negative = down)."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    fwd = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)])
    right = np.cross(fwd, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    pose = np.eye(4)
    pose[:3, :3] = np.c_[right, down, fwd]
    pose[:3, 3] = centre
    return pose


def render_box(room, K: np.ndarray, pose: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """rgb uint8 [H,W,3] and exact z-depth float32 [H,W] of the inside of the box
    [0, room] seen from camera-to-world ``pose`` (camera inside the box)."""
    H, W = hw
    room = np.asarray(room, np.float64)
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((H, W))], -1)  # z = 1
    d = rays @ pose[:3, :3].T
    c = pose[:3, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d > 0, (room - c) / d, np.where(d < 0, -c / d, np.inf)).min(axis=-1)
    p = c + t[..., None] * d
    q = np.round(p * 2, 6)  # hits on a wall land a hair on either side of it: no speckle
    check = (np.floor(q[..., 0]) + np.floor(q[..., 1]) + np.floor(q[..., 2])) % 2
    rgb = np.stack([40 + 50 * p[..., 0], 40 + 40 * p[..., 1], 60 + 60 * p[..., 2]], -1) + 60 * check[..., None]
    return np.clip(rgb, 0, 255).astype(np.uint8), t.astype(np.float32)  # ray z = 1, so t is z-depth


def write_box_room_clip(root: str | Path, clip_id: str = "clip0", spec: BoxRoomClip = BoxRoomClip(),
                         split: str = "train", with_depth: bool = True) -> Path:
    """Write ``<root>/<split>/<clip_id>.txt``, ``<root>/frames/<clip_id>/<ts>.png``
    and (``with_depth``) ``<root>/depth/<clip_id>/<ts>.npy``. Returns root."""
    from PIL import Image

    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    frames_dir = root / "frames" / clip_id
    frames_dir.mkdir(parents=True, exist_ok=True)
    depth_dir = root / "depth" / clip_id
    if with_depth:
        depth_dir.mkdir(parents=True, exist_ok=True)
    G = spec.file_world()
    K = spec.K()
    ts = [33366 * i for i in range(spec.frames)]
    # normalised intrinsics: image corner (0,0)..(1,1); our pixel centres are integers
    k_norm = [K[0, 0] / spec.width, K[1, 1] / spec.height, (K[0, 2] + 0.5) / spec.width, (K[1, 2] + 0.5) / spec.height]
    # The camera file is written here from the RE10K specification, not with the
    # project's writer, so a reader bug shared with that writer still shows.
    lines = [f"https://www.youtube.com/watch?v={clip_id}"]
    for i, t in enumerate(ts):
        pose = spec.pose(i)
        rgb, depth = render_box(spec.room, K, pose, (spec.height, spec.width))
        Image.fromarray(rgb).save(frames_dir / f"{t}.png")
        if with_depth:
            np.save(depth_dir / f"{t}.npy", depth * np.float32(spec.file_scale))
        lines.append(_camera_line(t, k_norm, G, pose, spec.file_scale))
    (root / split / f"{clip_id}.txt").write_text("\n".join(lines) + "\n")
    return root


def _camera_line(timestamp: int, k_norm, G: np.ndarray, pose: np.ndarray, scale: float) -> str:
    """One 19-column RE10K line: timestamp (us), fx fy cx cy (normalised), 0 0, then
    the world-to-camera [R|t] row by row, for camera-to-world ``pose`` after the
    world moves by the similarity ``G`` of the given ``scale``."""
    c2w = np.eye(4)
    c2w[:3, :3] = G[:3, :3] / scale @ pose[:3, :3]  # rotation only: the scale goes to the centre
    c2w[:3, 3] = G[:3, :3] @ pose[:3, 3] + G[:3, 3]
    w2c = np.linalg.inv(c2w)[:3]
    return " ".join([str(int(timestamp)), *(repr(float(x)) for x in k_norm), "0", "0",
                     *(repr(float(x)) for x in w2c.reshape(-1))])
