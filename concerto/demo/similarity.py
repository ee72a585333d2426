"""``similarity``: how alike every point's feature is to one query point's (cosine similarity).

    python -m concerto.demo similarity SCAN --checkpoint NAME|PATH|random --output DIR
        (--query X,Y,Z | --query-index I)

The query is the input point nearest ``X,Y,Z`` (metres, the file's own
coordinates) or input row ``I`` (default: a seeded random point). Writes
``DIR/<name>_similarity.npy`` (float32 [N], 1 at the query), ``..._similarity.ply``
(heat colours, blue = dissimilar to red = the query's) and ``..._similarity.png``
(top | perspective, the query marked, with a colour bar).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from concerto.demo import options
from concerto.demo.features import DemoError
from concerto.demo.figures import colour_bar, stack, with_title


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("similarity", help="cosine-similarity heat map to a query point: PLY + PNG",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scan", help="PLY, NPY, NPZ, PTH or a Pointcept scene folder")
    q = p.add_mutually_exclusive_group()
    q.add_argument("--query", default=None, help="x,y,z in metres: the nearest input point is the query")
    q.add_argument("--query-index", type=int, default=None, help="input row of the query point")
    options.add_encoder_options(p)
    options.add_input_options(p)
    options.add_output_options(p)
    p.set_defaults(run=run)
    return p


def query_index(coord: np.ndarray, query: Optional[str], index: Optional[int], seed: int = 0) -> tuple[int, str]:
    """(input row, how it was chosen) of the query point."""
    n = len(coord)
    if index is not None:
        if not -n <= index < n:
            raise DemoError(f"--query-index {index} is outside the scan's {n} points")
        return index % n, f"point {index % n}"
    if query is not None:
        try:
            xyz = np.array([float(v) for v in query.split(",")], np.float64)
        except ValueError:
            xyz = np.zeros(0)
        if xyz.shape != (3,) or not np.isfinite(xyz).all():
            raise DemoError(f"--query must be three numbers x,y,z (metres), got {query!r}")
        d = np.linalg.norm(coord.astype(np.float64) - xyz, axis=1)
        i = int(np.argmin(d))
        return i, f"point {i}, {d[i]:.3f} m from the query ({query})"
    i = int(np.random.default_rng(seed).integers(n))
    return i, f"point {i} (random; choose with --query or --query-index)"


def run(args) -> dict[str, Path]:
    from concerto.eval.pictures import (_HEAT_ANCHORS, colormap, cosine_similarity, default_cut, render, save_png,
                                        side_by_side, write_ply)
    from preprocess.colormap import interpolate_anchors

    out, enc, inputs, gs = options.open_scan(args)
    scan = inputs.scan
    q, how = query_index(scan.coord, args.query, args.query_index, args.seed)
    print(f"query: {how} at {np.array2string(scan.coord[q], precision=3)}", file=sys.stderr)
    feat = options.embed_inputs(enc, inputs, args, gs)
    sim = cosine_similarity(feat, q)
    vmin = float(np.percentile(sim, 2))
    rgb = colormap(sim, vmin=vmin, vmax=1.0)
    cut = default_cut(scan.coord) if args.max_height is None else args.max_height
    size = tuple(args.size)
    views = side_by_side([render(scan.coord, rgb, v, size, 1, cut, highlight=q) for v in ("top", "perspective")])
    bar = colour_bar(interpolate_anchors(np.linspace(0, 1, 256), _HEAT_ANCHORS), vmin, 1.0, views.shape[1],
                     "cosine similarity")
    title = f"{scan.name}: similarity to {how}  [{enc.source}]"
    paths = {"similarity": options.save_features(out / f"{scan.name}_similarity.npy", sim, "float32")}
    paths["similarity_ply"] = write_ply(out / f"{scan.name}_similarity.ply", scan.coord, rgb)
    paths["similarity_png"] = save_png(out / f"{scan.name}_similarity.png", stack([with_title(views, title), bar]))
    return paths
