"""``batch``: features of many scans, several per forward pass, one .npy per scan.

    python -m concerto.demo batch SCAN_OR_FOLDER... --checkpoint NAME|PATH|random --output DIR
        [--batch-size 4] [--pca-dims K] [--dtype float16]

A folder contributes its scan files and Pointcept scene folders. Scans are
run ``--batch-size`` at a time (batching does not change the features:
``Encoder.embed``); a scan over ``--max-points`` voxels runs alone, in tiles.
Writes ``DIR/<name>.npy`` (float [N, C] in the scan's point order; names made
unique with a suffix when two scans share one), ``DIR/features.json`` (per
scan: source, points, channels, dtype, notes) and, with ``--pca-dims K``,
features reduced to K channels by one PCA fitted on all scans together,
whose basis is ``DIR/pca_basis.npz`` (mean [C], axes [C, K], explained [K]).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from concerto.demo import options
from concerto.demo.features import DemoError, _voxel_count, pca_basis
from concerto.demo.scan import find_scans


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("batch", help="features of many scans, batched: .npy per scan",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scans", nargs="+", help="scan files or folders of them")
    p.add_argument("--batch-size", type=int, default=4, help="scans per forward pass")
    p.add_argument("--pca-dims", type=int, default=None, help="keep this many channels (one PCA over all scans)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    options.add_encoder_options(p)
    options.add_input_options(p)
    p.add_argument("--output", required=True, help="folder for the .npy files (created)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)
    return p


def unique_names(paths) -> list[str]:
    """File stems (folder names for Pointcept folders), ``_2``, ``_3`` ... appended to repeats."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.name if p.is_dir() else p.stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def run(args) -> dict[str, Path]:
    from tqdm import tqdm

    paths = find_scans(args.scans)
    out = options.output_dir(args)
    enc = options.encoder_from_args(args)
    gs = options.grid_size_of(args, enc)
    if args.pca_dims is not None and not 1 <= args.pca_dims <= enc.channels:
        raise DemoError(f"--pca-dims must be in [1, {enc.channels}] (the encoder's channels), got {args.pca_dims}")
    names = unique_names(paths)
    feats: dict[str, np.ndarray] = {}  # kept only for --pca-dims (one PCA over all scans)
    records = {}
    written: dict[str, Path] = {}

    def store(name, f, final=args.pca_dims is None):
        if not final:
            feats[name] = f
            return
        written[name] = options.save_features(out / f"{name}.npy", f, args.dtype)
        records[name].update(file=written[name].name, channels=int(f.shape[1]), dtype=args.dtype)

    bar = tqdm(total=len(paths), desc="scans", unit="scan", dynamic_ncols=True, disable=args.no_progress)
    pending: list[tuple[str, options.ScanInputs]] = []

    def flush():
        if not pending:
            return
        res = enc.embed([i.scan.coord for _, i in pending], [i.color for _, i in pending],
                        [i.normal for _, i in pending], batch_size=len(pending), grid_size=gs, progress=False)
        for (name, _), f in zip(pending, res):
            store(name, f)
        bar.update(len(pending))
        pending.clear()

    for path, name in zip(paths, names):
        inputs = options.load_scan_inputs(path, args, gs)
        records[name] = {"name": name, "source": str(path), "points": len(inputs.scan), "notes": inputs.notes}
        if args.max_points is not None and _voxel_count(inputs.scan.coord, gs) > args.max_points:
            store(name, options.embed_inputs(enc, inputs, args, gs))
            bar.update(1)
            continue
        pending.append((name, inputs))
        if len(pending) >= args.batch_size:
            flush()
    flush()
    bar.close()
    if args.pca_dims is not None:
        basis = pca_basis(list(feats.values()), args.pca_dims)
        written["pca_basis"] = out / "pca_basis.npz"
        np.savez(written["pca_basis"], mean=basis.mean, axes=basis.axes, explained=basis.explained)
        print(f"PCA to {args.pca_dims} channels keeps {100 * float(basis.explained.sum()):.1f} % of the variance",
              file=sys.stderr)
        for name in list(feats):
            store(name, basis.project(feats.pop(name)), final=True)
    index = {"checkpoint": enc.source, "grid_size": gs, "levels": enc.levels, "pca_dims": args.pca_dims,
             "scans": list(records.values())}
    written["index"] = out / "features.json"
    written["index"].write_text(json.dumps(index, indent=2))
    return written
