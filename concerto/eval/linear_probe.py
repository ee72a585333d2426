"""Linear probing of a frozen encoder for semantic segmentation.

    python -m concerto.eval.linear_probe --data <store> --checkpoint <ckpt | run dir | name | random>
        [--config tiny] [--epochs N] [--val-fraction 0.25] [--seed 0] [--output runs/linear_probe-<name>/linear_probe.json] [--cache DIR]

Steps: every scene of the store (its first segment: all segments of a scene
share its point cloud) with at least one labelled point is embedded once by
the frozen encoder (``concerto.inference``; cached in memory, and on disk with
``--cache``); scenes are split into train / held-out by a seeded permutation
of their keys; a linear layer (features standardised with the training
statistics) is trained with cross-entropy on the training scenes' labelled
points; mIoU / mAcc / allAcc are measured on the held-out scenes (label -1
ignored, see ``concerto.eval.metrics``), printed as a table and written as JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from concerto.eval.metrics import SegMetrics, confusion_matrix, metrics_from_confusion
from concerto.eval.scenes import (  # noqa: F401 - re-exported, the probe's public names
    IGNORE_INDEX,
    LabelledScene,
    ProbeError,
    class_names_for,
    read_labelled_scenes,
    split_scenes,
)


# ----------------------------------------------------------------------------- features


def checkpoint_tag(checkpoint: str, config: str, seed: int) -> str:
    """A short id of the encoder weights for the feature cache: file digest, or the random init's recipe."""
    if checkpoint == "random":
        return f"random-{config}-{seed}"
    from concerto.inference import resolve_checkpoint
    from concerto.model.checkpoint import PRETRAINED

    if checkpoint in PRETRAINED and not Path(checkpoint).exists():
        return f"pretrained-{checkpoint}"
    path, _ = resolve_checkpoint(checkpoint)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _cache_file(cache_dir: Path, tag: str, scene: LabelledScene, grid_size: float, levels: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", scene.key)
    digest = hashlib.sha256(f"{scene.content_hash}|{len(scene.coord)}|{grid_size}|{levels}".encode()).hexdigest()[:12]
    return cache_dir / tag / f"{safe}-{digest}.npy"


def extract_features(encoder, scenes: Sequence[LabelledScene], cache_dir: Optional[Path] = None, tag: str = "",
                     batch_size: int = 2, progress: bool = True) -> dict[str, np.ndarray]:
    """{scene key: float32 [N, C]} per-point features, read from / written to ``cache_dir/tag`` when given."""
    out: dict[str, np.ndarray] = {}
    todo = []
    for s in scenes:
        f = _cache_file(cache_dir, tag, s, encoder.grid_size, encoder.levels) if cache_dir is not None else None
        if f is not None and f.is_file():
            feat = np.load(f)
            if feat.shape == (len(s.coord), encoder.channels):
                out[s.key] = feat
                continue
        todo.append((s, f))
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="features", unit="scene", dynamic_ncols=True)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        feats = encoder.embed([s.coord for s, _ in chunk], [s.color for s, _ in chunk],
                              [s.normal for s, _ in chunk], batch_size=batch_size, progress=False)
        for (s, f), feat in zip(chunk, feats):
            out[s.key] = feat
            if f is not None:
                f.parent.mkdir(parents=True, exist_ok=True)
                tmp = f.with_name(f.name + ".tmp.npy")
                np.save(tmp, feat)
                tmp.replace(f)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


# ----------------------------------------------------------------------------- linear head


@dataclass
class LinearHead:
    """logits = ((feat - mean) / std) @ weight.T + bias; weight [K, C]."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def predict(self, feat: np.ndarray, chunk: int = 262_144) -> np.ndarray:
        """Class id int64 [N] of features [N, C]."""
        out = np.empty(len(feat), np.int64)
        for s in range(0, len(feat), chunk):
            z = (feat[s:s + chunk] - self.mean) / self.std
            out[s:s + chunk] = (z @ self.weight.T + self.bias).argmax(1)
        return out


def train_linear_head(feat: np.ndarray, label: np.ndarray, num_classes: int, epochs: int = 30, lr: float = 0.01,
                      weight_decay: float = 1e-4, batch_points: int = 16_384, seed: int = 0,
                      progress: bool = False) -> LinearHead:
    """Fit a linear classifier on labelled points (label != -1) with AdamW and a cosine schedule.

    feat float32 [N, C], label int [N]. Deterministic for a given seed (CPU).
    """
    keep = label != IGNORE_INDEX
    x = torch.from_numpy(np.ascontiguousarray(feat[keep], dtype=np.float32))
    y = torch.from_numpy(label[keep].astype(np.int64))
    if len(y) == 0:
        raise ProbeError("linear probe: the training scenes have no labelled points")
    mean = x.mean(0)
    std = x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(y) // batch_points))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    epochs_iter = range(epochs)
    if progress:
        from tqdm import tqdm

        epochs_iter = tqdm(epochs_iter, desc="linear head", unit="epoch", dynamic_ncols=True)
    with torch.enable_grad():
        for _ in epochs_iter:
            perm = torch.randperm(len(y), generator=gen)
            for s in range(0, len(y), batch_points):
                idx = perm[s:s + batch_points]
                loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return LinearHead(mean.numpy(), std.numpy(), head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy())


# ----------------------------------------------------------------------------- the probe


def evaluate(head: LinearHead, feats: dict[str, np.ndarray], scenes: Sequence[LabelledScene], num_classes: int) -> SegMetrics:
    """Metrics of ``head`` over all points of ``scenes`` (summed confusion)."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for s in scenes:
        conf += confusion_matrix(s.label, head.predict(feats[s.key]), num_classes, IGNORE_INDEX)
    return metrics_from_confusion(conf)


def run_probe(data: str, checkpoint: str, config: str = "tiny", epochs: int = 30, val_fraction: float = 0.25,
              seed: int = 0, lr: float = 0.01, max_train_points: int = 50_000, max_scenes: Optional[int] = None,
              cache_dir: Optional[str] = None, device: str = "cpu", batch_size: int = 2,
              output: Optional[str] = None, progress: bool = True, encoder=None) -> dict:
    """Run the whole probe (see module doc); returns the result dict (also written to ``output`` as JSON).

    ``checkpoint``: anything ``concerto.load`` takes, or ``"random"`` for a
    randomly initialised ``config`` preset (seeded with ``seed``). ``encoder``:
    use this Encoder instead of loading one (``checkpoint`` then only labels the result).
    """
    from concerto.data import open_store
    from concerto.inference import load, random_encoder

    t0 = time.perf_counter()
    store = open_store(str(data))
    scenes, class_names = read_labelled_scenes(store, max_scenes)
    train_keys, val_keys = split_scenes([s.key for s in scenes], val_fraction, seed)
    if encoder is None:
        encoder = random_encoder(config, seed=seed, device=device) if checkpoint == "random" else load(checkpoint, device=device)
    tag = checkpoint_tag(checkpoint, config, seed) if cache_dir is not None else ""
    feats = extract_features(encoder, scenes, Path(cache_dir) if cache_dir else None, tag, batch_size, progress)
    class_names = class_names_for(scenes, class_names)
    num_classes = len(class_names)
    by_key = {s.key: s for s in scenes}
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in train_keys:
        s = by_key[k]
        rows = np.nonzero(s.label != IGNORE_INDEX)[0]
        if len(rows) > max_train_points:
            rows = np.sort(rng.choice(rows, max_train_points, replace=False))
        xs.append(feats[k][rows])
        ys.append(s.label[rows])
    head = train_linear_head(np.concatenate(xs), np.concatenate(ys), num_classes, epochs=epochs, lr=lr,
                             seed=seed, progress=progress)
    val = evaluate(head, feats, [by_key[k] for k in val_keys], num_classes)
    train = evaluate(head, feats, [by_key[k] for k in train_keys], num_classes)
    result = {
        "checkpoint": str(checkpoint),
        "encoder": repr(encoder),
        "config": config if checkpoint == "random" else None,
        "data": str(data),
        "store_version": getattr(store, "version", None),
        "channels": encoder.channels,
        "num_classes": num_classes,
        "class_names": class_names,
        "epochs": epochs,
        "seed": seed,
        "val_fraction": val_fraction,
        "split": {"train": train_keys, "val": val_keys},
        "val": val.to_dict(class_names),
        "train": train.to_dict(class_names),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if output is not None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    """Per-class held-out IoU / accuracy and the summary line, as fixed-width text."""
    val = result["val"]
    width = max([len(n) for n in result["class_names"]] + [8])
    lines = [f"linear probe  checkpoint={result['checkpoint']}  channels={result['channels']}  "
             f"train scenes={len(result['split']['train'])}  held-out scenes={len(result['split']['val'])}",
             f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}  {'points':>9}"]

    def pct(x):
        return "    n/a" if x is None else f"{100 * x:7.2f}"

    for name, m in val["per_class"].items():
        lines.append(f"{name:<{width}}  {pct(m['iou'])}  {pct(m['acc'])}  {m['support']:>9d}")
    lines.append(f"{'held-out':<{width}}  mIoU {pct(val['mIoU'])}  mAcc {pct(val['mAcc'])}  allAcc {pct(val['allAcc'])}")
    tr = result["train"]
    lines.append(f"{'train':<{width}}  mIoU {pct(tr['mIoU'])}  mAcc {pct(tr['mAcc'])}  allAcc {pct(tr['allAcc'])}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m concerto.eval.linear_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="shard store path or URL (scenes with segment labels)")
    parser.add_argument("--checkpoint", required=True,
                        help="run folder, state.pt, official .pth, released name, or 'random'")
    parser.add_argument("--config", default="tiny", help="encoder preset for --checkpoint random: tiny | base | large")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--max-train-points", type=int, default=50_000, help="labelled points per training scene")
    parser.add_argument("--max-scenes", type=int, default=None)
    parser.add_argument("--cache", default=None, help="folder for cached features (per checkpoint and scene)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2, help="scenes per encoder forward")
    parser.add_argument("--output", default=None,
                        help="JSON result file (default: runs/linear_probe-<checkpoint name>/linear_probe.json)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from concerto.data import DataError
    from concerto.eval.report import default_output_dir
    from concerto.inference import InferenceError

    if args.output is None:
        args.output = str(default_output_dir("linear_probe", args.checkpoint, args.config) / "linear_probe.json")

    try:
        result = run_probe(args.data, args.checkpoint, config=args.config, epochs=args.epochs,
                           val_fraction=args.val_fraction, seed=args.seed, lr=args.lr,
                           max_train_points=args.max_train_points, max_scenes=args.max_scenes,
                           cache_dir=args.cache, device=args.device, batch_size=args.batch_size,
                           output=args.output, progress=not args.no_progress)
    except (DataError, InferenceError, ProbeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
