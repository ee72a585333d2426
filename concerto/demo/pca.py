"""``pca``: features of one scan shown as colours (their first 3 principal components).

    python -m concerto.demo pca SCAN --checkpoint NAME|PATH|random --output DIR [--save-features]

Writes ``DIR/<name>_pca.ply`` (every input point, in the file's coordinates,
coloured by ``concerto.eval.pictures.pca_rgb``), ``DIR/<name>_pca.png`` (top |
perspective view), ``DIR/<name>_rgb.png`` when the scan has colour, and with
``--save-features`` ``DIR/<name>_features.npy`` ([N, C], or [N, --pca-dims]).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from concerto.demo import options
from concerto.demo.figures import with_title


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pca", help="PCA colours of a scan's features: PLY + PNG", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scan", help="PLY, NPY, NPZ, PTH or a Pointcept scene folder")
    options.add_encoder_options(p)
    options.add_input_options(p)
    options.add_output_options(p)
    p.add_argument("--save-features", action="store_true", help="also write the features as .npy")
    p.add_argument("--pca-dims", type=int, default=None, help="with --save-features: keep this many PCA channels")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="of --save-features")
    p.set_defaults(run=run)
    return p


def run(args) -> dict[str, Path]:
    from concerto.eval.pictures import default_cut, pca_rgb, render, save_png, side_by_side, write_ply

    out, enc, inputs, gs = options.open_scan(args)
    scan = inputs.scan
    feat = options.embed_inputs(enc, inputs, args, gs)
    rgb = pca_rgb(feat)
    cut = default_cut(scan.coord) if args.max_height is None else args.max_height
    size = tuple(args.size)
    paths: dict[str, Path] = {}
    views = side_by_side([render(scan.coord, rgb, v, size, 1, cut) for v in ("top", "perspective")])
    title = f"{scan.name}: PCA of {feat.shape[1]} feature channels, {len(scan)} points  [{enc.source}]"
    paths["pca_png"] = save_png(out / f"{scan.name}_pca.png", with_title(views, title))
    paths["pca_ply"] = write_ply(out / f"{scan.name}_pca.ply", scan.coord, rgb)
    if scan.color is not None:
        col = scan.color.astype(np.float32) / 255.0
        views = side_by_side([render(scan.coord, col, v, size, 1, cut) for v in ("top", "perspective")])
        paths["rgb_png"] = save_png(out / f"{scan.name}_rgb.png", with_title(views, f"{scan.name}: input colours"))
    if args.save_features:
        if args.pca_dims is not None:
            from concerto.demo.features import pca_basis

            feat = pca_basis([feat], args.pca_dims).project(feat)
        paths["features"] = options.save_features(out / f"{scan.name}_features.npy", feat, args.dtype)
    return paths
