"""``pca-video``: a turntable of a scan's PCA colours, as PNG frames and an animated GIF.

    python -m concerto.demo pca-video SCAN --checkpoint NAME|PATH|random --output DIR [--frames 36]

The perspective camera of ``concerto.eval.pictures.render`` circles the
cloud's bounding-box centre at ``--elevation`` degrees, ``--frames`` steps of
360 / frames degrees starting at ``--start`` (azimuth from +x, counter-clockwise
seen from above). Writes ``DIR/<name>_turntable/frame_000.png`` ...,
``DIR/<name>_turntable.gif`` (PIL; ``--fps``) unless ``--no-gif``, and
``DIR/<name>_pca.ply``. (The official ``4_pca_video.py`` first lifts video frames
to points with VGGT; here the points come from a scan.)
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from concerto.demo import options
from concerto.demo.features import DemoError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pca-video", help="turntable of PCA colours: PNG frames + GIF",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scan", help="PLY, NPY, NPZ, PTH or a Pointcept scene folder")
    p.add_argument("--frames", type=int, default=36)
    p.add_argument("--elevation", type=float, default=35.0, help="camera elevation in degrees")
    p.add_argument("--start", type=float, default=-60.0, help="azimuth of the first frame in degrees")
    p.add_argument("--fps", type=float, default=12.0, help="GIF frame rate")
    p.add_argument("--no-gif", action="store_true")
    options.add_encoder_options(p)
    options.add_input_options(p)
    options.add_output_options(p)
    p.set_defaults(run=run)
    return p


def turntable(coord: np.ndarray, rgb: np.ndarray, frames: int, size=(480, 360), elevation: float = 35.0,
              start: float = -60.0, max_height=None, progress: bool = False) -> list[np.ndarray]:
    """uint8 [H, W, 3] pictures of ``coord`` [N, 3] coloured ``rgb`` [N, 3] in [0, 1] from ``frames`` azimuths."""
    from concerto.eval.pictures import render

    if frames < 1:
        raise DemoError(f"--frames must be >= 1, got {frames}")
    angles = start + 360.0 * np.arange(frames) / frames
    if progress:
        from tqdm import tqdm

        angles = tqdm(angles, desc="frames", unit="frame", dynamic_ncols=True)
    return [render(coord, rgb, "perspective", tuple(size), 1, max_height, azimuth_deg=float(a),
                   elevation_deg=elevation) for a in angles]


def run(args) -> dict[str, Path]:
    from PIL import Image

    from concerto.eval.pictures import default_cut, pca_rgb, save_png, write_ply

    out, enc, inputs, gs = options.open_scan(args)
    scan = inputs.scan
    rgb = pca_rgb(options.embed_inputs(enc, inputs, args, gs))
    cut = default_cut(scan.coord) if args.max_height is None else args.max_height
    images = turntable(scan.coord, rgb, args.frames, args.size, args.elevation, args.start, cut,
                       progress=not args.no_progress)
    folder = out / f"{scan.name}_turntable"
    paths = {f"frame_{i:03d}": save_png(folder / f"frame_{i:03d}.png", im) for i, im in enumerate(images)}
    paths["pca_ply"] = write_ply(out / f"{scan.name}_pca.ply", scan.coord, rgb)
    if not args.no_gif:
        gif = out / f"{scan.name}_turntable.gif"
        frames = [Image.fromarray(im) for im in images]
        frames[0].save(gif, save_all=True, append_images=frames[1:], duration=int(round(1000 / args.fps)), loop=0)
        paths["gif"] = gif
    return paths
