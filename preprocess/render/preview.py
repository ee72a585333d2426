"""PNG previews of a scene's frames: rgb | depth (colour-mapped) side by side."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from preprocess.colormap import interpolate_anchors
from preprocess.scene import Scene

# Control points of a perceptually ordered map (dark blue -> teal -> yellow),
# interpolated linearly; near = dark, far = bright.
_MAP = np.array(
    [[48, 18, 59], [65, 69, 171], [70, 117, 237], [57, 162, 252], [27, 207, 212],
     [36, 236, 166], [97, 252, 108], [164, 252, 59], [209, 232, 52], [243, 198, 58], [254, 155, 45]],
    dtype=np.float64,
)


def colorize_depth(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """float [H,W] metres (NaN = invalid) -> uint8 [H,W,3]; invalid pixels black.
    The range defaults to the 2nd..98th percentile of valid depth."""
    valid = np.isfinite(depth)
    out = np.zeros(depth.shape + (3,), np.uint8)
    if not valid.any():
        return out
    vals = depth[valid]
    lo = float(np.percentile(vals, 2)) if lo is None else lo
    hi = float(np.percentile(vals, 98)) if hi is None else hi
    out[valid] = np.rint(interpolate_anchors((vals - lo) / max(hi - lo, 1e-6), _MAP)).astype(np.uint8)
    return out


def preview_image(rgb: np.ndarray, depth: np.ndarray | None) -> np.ndarray:
    """uint8 [H, 2W + 4, 3]: rgb, a 4-px white gutter, depth colour map (grey if
    there is no depth yet)."""
    h, w = rgb.shape[:2]
    right = colorize_depth(depth) if depth is not None else np.full((h, w, 3), 64, np.uint8)
    gutter = np.full((h, 4, 3), 255, np.uint8)
    return np.concatenate([rgb, gutter, right], axis=1)


def write_previews(scene: Scene, out_dir: str | Path, max_frames: int | None = None) -> list[Path]:
    """Write ``<out_dir>/<source>_<scene_id>_<frame>.png`` for up to
    ``max_frames`` frames (evenly spaced); returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    idx = np.arange(len(scene.frames))
    if max_frames is not None and len(idx) > max_frames:
        idx = np.unique(np.linspace(0, len(idx) - 1, max_frames).round().astype(int))
    paths = []
    for i in idx:
        frame = scene.frames[i]
        path = out_dir / f"{scene.source}_{scene.scene_id}_{frame.name}.png"
        Image.fromarray(preview_image(frame.rgb, frame.depth)).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m preprocess.render.preview --source kind:path[:k=v,...] --out DIR``:
    load scenes of a source, render their missing depth, write rgb|depth PNGs."""
    import argparse

    from preprocess.render.complete_depth import complete_depth
    from preprocess.sources.base import make_source, parse_source_arg

    parser = argparse.ArgumentParser(prog="python -m preprocess.render.preview", description=main.__doc__)
    parser.add_argument("--source", required=True, metavar="KIND:PATH[:k=v,...]")
    parser.add_argument("--out", required=True)
    parser.add_argument("--max-scenes", type=int, default=2)
    parser.add_argument("--max-frames", type=int, default=4)
    parser.add_argument("--backend", default="auto", help="rendering backend")
    args = parser.parse_args(argv)
    kind, path, options = parse_source_arg(args.source)
    source = make_source(kind, path, **options)
    for ref in source.discover()[: args.max_scenes]:
        scene = complete_depth(source.load(ref), backend=args.backend)
        paths = write_previews(scene, Path(args.out) / ref.scene_id, max_frames=args.max_frames)
        print(f"{ref.key}: {len(paths)} previews in {Path(args.out) / ref.scene_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
