"""``segment``: semantic labels of a scan from a segmentation head.

    python -m concerto.demo segment SCAN --head HEAD.pth --output DIR [--checkpoint BACKBONE] [--tta]

Heads understood (``load_head``):

- ``segmentor.pth`` written by ``python -m concerto.eval.segment`` (any mode:
  linear, decoder, full, LoRA merged): ``{"mode", "class_names", "backbone":
  {"config", "state_dict"}, "head"}``; the backbone comes with it;
- the released linear-probing layout (``concerto_*_linear_prob_head_*``):
  ``{"config": {"backbone_out_channels", "num_classes"}, "state_dict":
  {"seg_head.weight", "seg_head.bias"}}`` on the features of every encoder
  stage upcast to full resolution; the backbone is ``--checkpoint``.

Prediction: one pass over one point per voxel (``concerto.inference``'s
canonical grid sample; colour / 255, as ``concerto.eval.segment`` feeds it),
every input point taking its voxel's class; ``--tta`` instead runs the
evaluation's fragment voting over 13 test augmentations
(``concerto.eval.trainer.predict_scene``), slower and usually better.
Writes ``DIR/<name>_labels.npy`` (int64 [N]), ``..._segment.ply`` (class
colours), ``..._segment.png`` (top | perspective with a legend) and
``..._counts.json`` (points per class), and prints the counts.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from concerto.demo import options
from concerto.demo.features import DemoError, run_chunked, tile_preparer
from concerto.demo.figures import class_colours, legend, stack, with_title

# class names of the ScanNet 20-class benchmark, in label order (the released heads' "_sc" classes)
SCANNET20 = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
             "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub",
             "otherfurniture")


@dataclass
class Head:
    """A ready Segmentor (eval mode, frozen) and its class names; ``layout`` says which file kind it came from."""

    model: torch.nn.Module
    class_names: list[str]
    layout: str


def _read(path: Path) -> dict:
    if not path.is_file():
        raise DemoError(f"head {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, or not a torch file
        raise DemoError(f"head {path}: cannot be read as a torch file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DemoError(f"head {path}: expected a dict, got {type(obj).__name__}")
    return obj


def load_head(path, backbone=None, class_names: Optional[Sequence[str]] = None, device: str = "cpu") -> Head:
    """The :class:`Head` in ``path`` (see module doc). ``backbone``: a PointTransformerV3 for the released
    layout (ignored for a segmentor.pth, which has its own). ``class_names`` override the file's."""
    from concerto.eval.segmentor import MODES, Segmentor, build_segmentor
    from concerto.model import CheckpointError, load_checkpoint

    path = Path(path)
    obj = _read(path)
    if {"mode", "backbone", "head"} <= set(obj):
        mode = obj["mode"]
        if mode not in MODES:
            raise DemoError(f"head {path}: field 'mode' is {mode!r}, expected one of {MODES}")
        try:
            bb = load_checkpoint(obj["backbone"], drop_path=0.0)
        except (CheckpointError, TypeError, KeyError) as exc:
            raise DemoError(f"head {path}: field 'backbone': {exc}") from exc
        weight = obj["head"].get("weight")
        if weight is None or "bias" not in obj["head"]:
            raise DemoError(f"head {path}: field 'head' has no weight / bias (keys {sorted(obj['head'])})")
        model = Segmentor(bb, int(weight.shape[0]), mode)
        if model.head.in_features != weight.shape[1]:
            raise DemoError(f"head {path}: head reads {weight.shape[1]} channels, its backbone gives "
                            f"{model.head.in_features}")
        model.head.load_state_dict({"weight": weight, "bias": obj["head"]["bias"]})
        names = list(obj.get("class_names") or [])
        layout = f"segmentor ({mode})"
    elif "state_dict" in obj and isinstance(obj.get("config"), dict) and "num_classes" in obj["config"]:
        if backbone is None:
            raise DemoError(f"head {path}: a released linear head; give its backbone with --checkpoint")
        state = {k.split("seg_head.", 1)[-1]: v for k, v in obj["state_dict"].items()}
        if set(state) != {"weight", "bias"}:
            raise DemoError(f"head {path}: field 'state_dict' has keys {sorted(obj['state_dict'])}, "
                            f"expected seg_head.weight and seg_head.bias")
        k, c = (int(s) for s in state["weight"].shape)
        model = build_segmentor(backbone, "linear", k)
        if model.head.in_features != c:
            raise DemoError(f"head {path}: reads {c} channels but the --checkpoint backbone gives "
                            f"{model.head.in_features} (the sum of its encoder channels): a head of another model size")
        model.head.load_state_dict(state)
        names = list(SCANNET20) if k == len(SCANNET20) else []
        layout = "released linear head"
    else:
        raise DemoError(f"head {path}: neither a concerto.eval.segment segmentor.pth (mode, backbone, head) nor a "
                        f"released linear head (config, state_dict); keys: {sorted(obj)[:8]}")
    k = model.head.out_features
    if class_names is not None:
        names = list(class_names)
    if names and len(names) != k:
        raise DemoError(f"head {path}: {len(names)} class names for {k} classes")
    model = model.to(device).eval()
    model.requires_grad_(False)
    return Head(model, names or [f"class_{i}" for i in range(k)], layout)


@torch.inference_mode()
def logits_of(model, prep) -> np.ndarray:
    """float32 [M, K] logits of the rows of a ``PreparedCloud`` (one per voxel)."""
    dev = next(model.parameters()).device
    logits = model(torch.from_numpy(prep.coord).to(dev), torch.from_numpy(prep.feat).to(dev),
                   torch.from_numpy(prep.grid_coord).to(dev), torch.tensor([len(prep.coord)], device=dev))
    return logits.float().cpu().numpy()


def predict_labels(head: Head, coord, color, normal, grid_size: float, tta: bool = False,
                   max_points: Optional[int] = None, overlap: float = 1.0, progress: bool = False) -> np.ndarray:
    """int64 [N] class of every point (tiles of ``max_points`` voxels when given; see module doc)."""
    prepare = tile_preparer(coord, color, normal, grid_size, "unit")  # colour / 255, as concerto.eval.segment
    n = len(coord)

    def fn(rows):
        if tta:
            from types import SimpleNamespace

            from concerto.eval.trainer import predict_scene

            dev = next(head.model.parameters()).device
            scene = SimpleNamespace(coord=coord[rows], color=np.zeros((len(rows), 3)) if color is None else color[rows],
                                    normal=np.zeros((len(rows), 3)) if normal is None else normal[rows])
            return predict_scene(head.model, scene, "full", device=dev)
        prep = prepare(rows)
        return logits_of(head.model, prep).argmax(1)[prep.inverse]

    labels, _ = run_chunked(coord, fn, grid_size, max_points, overlap, progress)
    assert len(labels) == n
    return labels.astype(np.int64)


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("segment", help="semantic segmentation with a head checkpoint: PLY + PNG + class counts",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scan", help="PLY, NPY, NPZ, PTH or a Pointcept scene folder")
    p.add_argument("--head", required=True,
                   help="segmentor.pth of concerto.eval.segment, or a released linear head (then --checkpoint)")
    p.add_argument("--class-names", default=None, help="comma-separated names, or a text file with one per line")
    p.add_argument("--tta", action="store_true", help="fragment voting over 13 test augmentations (slower)")
    options.add_encoder_options(p, required=False)
    options.add_input_options(p)
    options.add_output_options(p)
    p.set_defaults(run=run)
    return p


def _class_names(arg: Optional[str]) -> Optional[list[str]]:
    if arg is None:
        return None
    p = Path(arg)
    if p.is_file():
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return [s.strip() for s in arg.split(",")]


def run(args) -> dict[str, Path]:
    from concerto.eval.pictures import default_cut, render, save_png, side_by_side, write_ply
    from preprocess.atomic_file import atomic_write

    out = options.output_dir(args)
    backbone = options.encoder_from_args(args).model if args.checkpoint else None
    head = load_head(args.head, backbone, _class_names(args.class_names), args.device)
    gs = float(head.model.backbone.config.grid_size) if args.voxel_size is None else float(args.voxel_size)
    inputs = options.load_scan_inputs(args.scan, args, gs)
    scan = inputs.scan
    labels = predict_labels(head, scan.coord, inputs.color, inputs.normal, gs, args.tta, args.max_points,
                            args.chunk_overlap, progress=not args.no_progress)
    k = len(head.class_names)
    counts = np.bincount(labels, minlength=k)
    palette = class_colours(k)
    rgb = palette[labels]
    cut = default_cut(scan.coord) if args.max_height is None else args.max_height
    size = tuple(args.size)
    views = side_by_side([render(scan.coord, rgb, v, size, 1, cut) for v in ("top", "perspective")])
    present = [i for i in range(k) if counts[i]]
    key = legend([head.class_names[i] for i in present], palette[present], [int(counts[i]) for i in present],
                 views.shape[1])
    title = f"{scan.name}: {head.layout}, {k} classes, {len(scan)} points{' (tta)' if args.tta else ''}"
    paths = {"labels": atomic_write(out / f"{scan.name}_labels.npy", lambda p: np.save(p, labels))}
    paths["segment_ply"] = write_ply(out / f"{scan.name}_segment.ply", scan.coord, rgb)
    paths["segment_png"] = save_png(out / f"{scan.name}_segment.png", stack([with_title(views, title), key]))
    table = {name: int(c) for name, c in zip(head.class_names, counts)}
    paths["counts"] = atomic_write(out / f"{scan.name}_counts.json",
                                   lambda p: p.write_text(json.dumps({"points": len(scan), "counts": table}, indent=2)))
    width = max(len(n) for n in head.class_names)
    for name, c in sorted(table.items(), key=lambda kv: -kv[1]):
        if c:
            print(f"{name:<{width}}  {c:>9d}  {100 * c / len(scan):6.2f} %", file=sys.stderr)
    return paths
