"""PNG pictures of the room simulation: a house's floor plan (rooms, camera
spots, view directions) and one room's four views (rgb | depth)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from preprocess.habitat.capture import MeshBackend, Room
from preprocess.habitat.poses import yaw_of_pose
from preprocess.render.preview import preview_image
from preprocess.scene import Frame

_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40]], np.uint8)


def room_views_png(frames: list[Frame], path: str | Path) -> Path:
    """One row per view: rgb | colour-mapped depth. Returns the path."""
    rows = [preview_image(f.rgb, f.depth) for f in frames]
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    img = np.concatenate([x for r in rows for x in (r, gap)][:-1], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def floorplan_png(backend: MeshBackend, rooms: list[Room], path: str | Path, level: int = 0, scale: int = 4) -> Path:
    """Top view of one level (north up): grey = floor, dark = blocked, colour =
    each room's footprint (floor-plan rooms) or candidate cells, white dot = the
    camera spot, lines = the four view directions. Returns the path."""
    grid = backend._house.grids[level]
    img = np.full(grid.spec.shape + (3,), 255, np.uint8)
    img[grid.floor] = 200
    img[grid.blocked] = 90
    for room in rooms:
        if room.spec != grid.spec:
            continue
        mask = room.footprint if room.footprint is not None else room.candidates
        col = _PALETTE[room.index % len(_PALETTE)]
        img[mask & grid.navigable] = col
        img[mask & ~grid.navigable] = (col.astype(int) * 0.5 + 60).astype(np.uint8)
    img = np.kron(img[::-1], np.ones((scale, scale, 1), np.uint8))  # row 0 = north
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    s = grid.spec

    def to_px(xy):
        return ((xy[0] - s.x0) / s.cell * scale, (s.shape[0] - (xy[1] - s.y0) / s.cell) * scale)

    for room in rooms:
        if room.spec != grid.spec:
            continue
        poses = backend.poses(room)
        c = poses[0][:2, 3]
        cx, cy = to_px(c)
        for pose in poses:
            yaw = yaw_of_pose(pose)
            end = to_px(c + 0.6 * np.array([-np.sin(yaw), np.cos(yaw)]))
            draw.line([(cx, cy), end], fill=(0, 0, 0), width=2)
        draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=(255, 255, 255), outline=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
    return path
