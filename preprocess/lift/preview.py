"""PNG pictures of a lifted scene: the views with their depth, and a top-down
splat of the point cloud with the cameras, to check scale and floor alignment
by eye.

    python -m preprocess.lift.preview <re10k root> <out.png> [--lifter given-depth]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from preprocess.scene import Scene


def depth_colormap(depth: np.ndarray) -> np.ndarray:
    """z-depth [H,W] (NaN invalid) -> uint8 [H,W,3]: near bright, far dark, invalid black."""
    valid = np.isfinite(depth)
    out = np.zeros(depth.shape + (3,), np.uint8)
    if valid.any():
        lo, hi = np.percentile(depth[valid], [2, 98])
        t = np.clip((depth - lo) / max(hi - lo, 1e-9), 0, 1)
        ramp = np.stack([255 * (1 - t), 160 * (1 - t) + 40, 255 * t * 0.6 + 40], -1)
        out[valid] = ramp[valid].astype(np.uint8)
    return out


def topdown(scene: Scene, size: int = 512) -> np.ndarray:
    """uint8 [size,size,3] orthographic view from +z: points coloured (higher
    points drawn last), cameras as red dots with a line along their view."""
    coord = scene.points.coord.astype(np.float64)
    cams = np.array([f.pose[:3, 3] for f in scene.frames]) if scene.frames else np.zeros((0, 3))
    xy = np.vstack([coord[:, :2], cams[:, :2]]) if len(cams) else coord[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    scale = (size - 20) / max(float((hi - lo).max()), 1e-9)

    def px(p):
        q = (np.asarray(p)[..., :2] - lo) * scale + 10
        return np.clip(np.round(q).astype(int), 0, size - 1)

    img = np.full((size, size, 3), 255, np.uint8)
    order = np.argsort(coord[:, 2])
    p = px(coord[order])
    img[size - 1 - p[:, 1], p[:, 0]] = scene.points.color[order]
    for f in scene.frames:
        c = f.pose[:3, 3]
        for t in np.linspace(0, 0.5, 30):  # viewing direction, 0.5 m
            q = px(c + t * f.pose[:3, 2])
            img[size - 1 - q[1], q[0]] = (200, 0, 0)
        q = px(c)
        img[max(size - 4 - q[1], 0):size + 2 - q[1], max(q[0] - 3, 0):q[0] + 3] = (255, 0, 0)
    return img


def scene_preview(scene: Scene, size: int = 512) -> np.ndarray:
    """Top row: the views; second row: their depth; right: top-down cloud."""
    from PIL import Image

    tiles = []
    for f in scene.frames:
        h, w = f.height, f.width
        tw = size // 2
        th = max(1, int(round(h * tw / w)))
        rgb = np.asarray(Image.fromarray(f.rgb).resize((tw, th)))
        dep = np.asarray(Image.fromarray(depth_colormap(f.depth)).resize((tw, th), Image.Resampling.NEAREST))
        tiles.append(np.vstack([rgb, dep]))
    top = topdown(scene, size)
    left = np.hstack(tiles) if tiles else np.zeros((size, 1, 3), np.uint8)
    H = max(left.shape[0], top.shape[0])
    pad = lambda a: np.vstack([a, np.full((H - a.shape[0], a.shape[1], 3), 255, np.uint8)])  # noqa: E731
    return np.hstack([pad(left), pad(top)])


def write_preview(scene: Scene, path: str | Path, size: int = 512) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene_preview(scene, size)).save(path)
    return path


def main(argv=None):
    from preprocess.sources.base import make_source

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("out")
    ap.add_argument("--lifter", default="vggt")
    ap.add_argument("--checkpoint", default="facebook/VGGT-1B")
    ap.add_argument("--scene", default=None, help="scene id (default: the first discovered)")
    a = ap.parse_args(argv)
    opts = dict(lifter=a.lifter)
    if a.lifter == "vggt":
        opts["checkpoint"] = a.checkpoint
    src = make_source("re10k", a.root, **opts)
    refs = [r for r in src.discover() if a.scene in (None, r.scene_id)]
    if not refs:
        raise SystemExit("no view group found")
    print(write_preview(src.load(refs[0]), a.out))


if __name__ == "__main__":
    main()
