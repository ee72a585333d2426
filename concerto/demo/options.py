"""Command-line options shared by the demo commands, and the step they all start with.

``add_encoder_options`` / ``add_input_options`` / ``add_output_options`` add
the flags; ``load_scan_inputs`` reads one scan and decides what the encoder
is given (see ``concerto.demo.features.model_inputs``), printing the notes.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from concerto.demo.features import NORMAL_MODES, ORIENTS, DemoError, open_encoder
from concerto.demo.scan import Scan, read_scan


def add_encoder_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("encoder")
    g.add_argument("--checkpoint", required=required,
                   help="run folder, state.pt, official-layout .pth, released name (sonata, concerto_base, ...), "
                        "or 'random' (a seeded random --config encoder, for trying the commands)")
    g.add_argument("--config", default="tiny", help="preset of --checkpoint random: tiny | base | large")
    g.add_argument("--seed", type=int, default=0, help="seed of --checkpoint random and of --mesh-samples")
    g.add_argument("--levels", type=int, default=2,
                   help="encoder stages concatenated from the deepest up (2: the official demos' features; "
                        "fewer gives fewer channels)")
    g.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")


def add_input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input")
    g.add_argument("--color", choices=("auto", "zero"), default="auto",
                   help="auto: the file's colour (black if it has none); zero: ignore it")
    g.add_argument("--normals", choices=NORMAL_MODES, default="auto",
                   help="auto: the file's normals, estimated if it has none; estimate: always; zero: none")
    g.add_argument("--normal-orient", choices=ORIENTS, default="center",
                   help="estimated normals face the cloud's centre (rooms) or +z")
    g.add_argument("--normal-k", type=int, default=16, help="neighbours (voxels) per estimated normal")
    g.add_argument("--mesh-samples", type=int, default=None,
                   help="a PLY mesh: sample this many points on its faces instead of using its vertices")
    g.add_argument("--voxel-size", type=float, default=None,
                   help="grid size in metres (default: the model's, 0.02); larger = fewer points, coarser features")
    g.add_argument("--max-points", type=int, default=None,
                   help="at most this many occupied voxels per forward pass: larger scans run in x-y tiles")
    g.add_argument("--chunk-overlap", type=float, default=1.0,
                   help="metres of context around each tile with --max-points")


def add_output_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--output", required=True, help="folder for the results (created)")
    g.add_argument("--size", type=int, nargs=2, default=(480, 360), metavar=("W", "H"), help="picture size per view")
    g.add_argument("--max-height", type=float, default=None,
                   help="pictures: draw points up to this many metres above the lowest (default 85%% of the "
                        "height, cutting a room's ceiling off)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


@dataclass
class ScanInputs:
    """A scan and what the encoder is given for it (see ``features.model_inputs``)."""

    scan: Scan
    color: Optional[np.ndarray]
    normal: Optional[np.ndarray]
    notes: list[str]


def encoder_from_args(args):
    return open_encoder(args.checkpoint, args.config, args.seed, args.device, args.levels)


def grid_size_of(args, encoder) -> float:
    return encoder.grid_size if args.voxel_size is None else float(args.voxel_size)


def load_scan_inputs(path, args, grid_size: float, verbose: bool = True) -> ScanInputs:
    """Read ``path`` and choose the encoder's colour / normal for it as ``args`` say; print the notes."""
    from concerto.demo.features import model_inputs

    scan = read_scan(path, mesh_samples=args.mesh_samples, seed=args.seed)
    color, normal, notes = model_inputs(scan, grid_size, args.color, args.normals, args.normal_orient, args.normal_k,
                                        progress=not args.no_progress and len(scan) > 1_000_000)
    if verbose:
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
    return ScanInputs(scan, color, normal, notes)


def output_dir(args) -> Path:
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise DemoError(f"--output {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_scan(args):
    """What a one-scan command starts with: (output folder, encoder, ``ScanInputs`` of ``args.scan``,
    grid size in metres)."""
    out = output_dir(args)
    encoder = encoder_from_args(args)
    grid_size = grid_size_of(args, encoder)
    return out, encoder, load_scan_inputs(args.scan, args, grid_size), grid_size


def embed_inputs(encoder, inputs: ScanInputs, args, grid_size: float) -> np.ndarray:
    """float32 [N, C] features of ``inputs`` (tiled when ``--max-points`` asks); prints the tiling."""
    from concerto.demo.features import embed_scan

    scan = inputs.scan
    feat, info = embed_scan(encoder, scan.coord, inputs.color, inputs.normal, grid_size, args.max_points,
                            args.chunk_overlap, progress=not args.no_progress)
    if info.chunks > 1:
        print(f"{scan.path.name}: {info.chunks} tiles of at most {info.max_voxels} voxels "
              f"(--max-points {args.max_points}, overlap {args.chunk_overlap:g} m)", file=sys.stderr)
    return feat


def save_features(path: Path, feat: np.ndarray, dtype: str) -> Path:
    """Write features [N, C] as ``dtype`` (float16 | float32) .npy, atomically."""
    from preprocess.atomic_file import atomic_write

    arr = np.ascontiguousarray(feat.astype(dtype))
    return atomic_write(path, lambda p: np.save(p, arr))
