"""Semantic-segmentation evaluation of an encoder: linear / decoder probing, full fine-tuning, LoRA.

    python -m concerto.eval.segment --data <store | Pointcept folder> --checkpoint <ckpt | run | name | random>
        --mode linear|decoder|full|lora [--epochs N] [--output DIR] [--resume]
        [--scene-fraction 0.1] [--points-per-scene 100] [--results results.jsonl]
    torchrun --nproc_per_node 2 -m concerto.eval.segment ...   (gloo on CPU)

Data: a shard store (scenes with ``segment_label``; train / held-out split by
a seeded permutation of the scene keys, ``--val-fraction``) or a Pointcept
folder (``<split>/<scene>/*.npy``: ``--train-split`` / ``--val-split``).
Protocol: ``concerto.eval.seg_transforms`` (Pointcept's augmentations, grid
sampling, fragment voting with 13 test augmentations), the loop and loss of
``concerto.eval.trainer``, models of ``concerto.eval.segmentor``.
Data-efficient runs: ``--scene-fraction`` keeps that fraction of the training
scenes, ``--points-per-scene`` that many labelled points per scene; the
selection is seeded by ``--selection-seed`` and recorded in
``<output>/selection.json`` (``--selection FILE`` reuses a recorded one).

Writes ``<output>/result.json`` (per-class IoU / accuracy, split, selection
digest, settings), ``<output>/segmentor.pth`` (backbone in the official layout
with LoRA merged, plus the head), checkpoints and tensorboard as pretraining,
and appends a row to ``--results`` (see ``concerto.eval.report``).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from concerto.eval.data_efficient import Selection, make_selection
from concerto.eval.scenes import ProbeError, class_names_for, load_scenes, split_scenes
from concerto.eval.segmentor import MODES, build_segmentor
from concerto.eval.trainer import LoopConfig, evaluate, fit, write_json

# reference learning rates of the Concerto fine-tuning configs (base encoder)
DEFAULT_LR = {"linear": 0.002, "decoder": 0.001, "full": 0.001, "lora": 0.002}


def split_for(scenes, info: dict, val_fraction: float, split_seed: int, train_split: str, val_split: str):
    """(train keys, held-out keys, held-out split name)."""
    keys = [s.key for s in scenes]
    if info["kind"] == "pointcept":
        split_of = info["split_of"]
        train = sorted(k for k in keys if split_of[k] == train_split)
        val = sorted(k for k in keys if split_of[k] == val_split)
        if train and val:
            return train, val, val_split
        # one split only: fall back to the seeded split of its scenes
    train, val = split_scenes(keys, val_fraction, split_seed)
    return train, val, f"held-out {val_fraction:g} (seed {split_seed})"


def load_encoder(checkpoint: str, preset: str, seed: int):
    """The PointTransformerV3 whose weights are evaluated (``random``: a seeded ``preset``)."""
    from concerto.inference import load_model, random_encoder

    if checkpoint == "random":
        return random_encoder(preset, seed=seed).model
    return load_model(checkpoint)


def export_segmentor(model, class_names, path: Path) -> Path:
    """``{"mode", "class_names", "backbone": {"config", "state_dict"}, "head"}``; LoRA merged into plain weights."""
    from concerto.eval.lora import merge_lora
    from preprocess.atomic_file import atomic_write

    plain = copy.deepcopy(model)
    merge_lora(plain.backbone)
    obj = {"mode": model.mode, "class_names": list(class_names),
           "backbone": {"config": plain.backbone.config.to_dict(),
                        "state_dict": {k: v.detach().cpu() for k, v in plain.backbone.state_dict().items()}},
           "head": {k: v.detach().cpu() for k, v in plain.head.state_dict().items()}}
    return atomic_write(path, lambda p: torch.save(obj, p))


def choose_selection(labels: dict, recorded: Path, data: str, rank: int, resume: bool, selection_file: Optional[str],
                     selection_seed: int, scene_fraction: Optional[float], points_per_scene: Optional[int]) -> Selection:
    """The training scenes and labelled points: a ``--selection`` file, this run's own record ``recorded``
    on resume, or a fresh seeded selection of ``labels`` ({train key: [N]}). Rank 0 records a data-efficient
    or reused selection at ``recorded``."""
    if selection_file is not None:
        selection = Selection.from_dict(json.loads(Path(selection_file).read_text()))
    elif resume and recorded.is_file():
        selection = Selection.from_dict(json.loads(recorded.read_text()))
    else:
        selection = make_selection(labels, selection_seed, scene_fraction, points_per_scene)
    unknown = [k for k in selection.scenes if k not in labels]
    if unknown:
        raise ProbeError(f"selection names scenes that are not training scenes of '{data}': {unknown[:3]}")
    if rank == 0 and (scene_fraction is not None or points_per_scene is not None or selection_file is not None):
        selection.save(recorded)
    return selection


def protocol_of(selection: Selection) -> str:
    """The data-efficient protocol in words ("scenes 10%, 100 points"; empty for all labels)."""
    protocol = []
    if selection.scene_fraction is not None:
        protocol.append(f"scenes {100 * selection.scene_fraction:g}%")
    if selection.points_per_scene is not None:
        protocol.append(f"{selection.points_per_scene} points")
    return ", ".join(protocol)


def result_record(settings: dict, class_names, model, world: int, split_keys: dict, selection: Optional[Selection],
                  loop: LoopConfig, lora: Optional[dict], summary: dict, val) -> dict:
    """``result.json``: ``settings`` (dataset ... config), classes, parameter counts, split keys, the selection
    (digests only; None off rank 0), loop and LoRA settings, training summary, held-out SegMetrics ``val``."""
    num_classes = len(class_names)
    return settings | {
        "class_names": class_names, "num_classes": num_classes,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "parameters": sum(p.numel() for p in model.parameters()), "world_size": world, "split_keys": split_keys,
        "selection": None if selection is None else {k: v for k, v in selection.to_dict().items() if k != "points"},
        "loop": vars(loop).copy(), "lora": lora, "train": summary, "val": val.to_dict(class_names),
        "mIoU": val.to_dict()["mIoU"], "mAcc": val.to_dict()["mAcc"], "allAcc": val.to_dict()["allAcc"],
    }


def write_outputs(result: dict, model, out: Path, step: int, results: Optional[str]) -> None:
    """Rank 0: ``result.json``, ``segmentor.pth``, the held-out metrics as tensorboard scalars at ``step``,
    and a row appended to ``results`` (when given)."""
    from torch.utils.tensorboard import SummaryWriter

    write_json(out / "result.json", result)
    export_segmentor(model, result["class_names"], out / "segmentor.pth")
    with SummaryWriter(str(out / "tb")) as w:
        for m in ("mIoU", "mAcc", "allAcc"):
            if result[m] is not None:
                w.add_scalar(f"val/{m}", result[m], step)
    if results is not None:
        from concerto.eval.report import append_result

        append_result(results, {k: result[k] for k in ("dataset", "split", "mode", "checkpoint", "protocol",
                                                       "seed", "mIoU", "mAcc", "allAcc")} | {"output": str(out)})


def run_segment(data: str, checkpoint: str, mode: str, output: str, loop: LoopConfig, config: str = "tiny",
                val_fraction: float = 0.25, split_seed: int = 0, train_split: str = "train", val_split: str = "val",
                scene_fraction: Optional[float] = None, points_per_scene: Optional[int] = None,
                selection_seed: int = 0, selection_file: Optional[str] = None, resume: bool = False,
                results: Optional[str] = None, stop_after: Optional[int] = None, max_scenes: Optional[int] = None,
                drop_path: float = 0.3, lora_rank: int = 8, lora_alpha: float = 16.0,
                lora_targets=("qkv",), lora_dropout: float = 0.1, decoder: Optional[dict] = None,
                progress: bool = True, dataset_name: Optional[str] = None) -> dict:
    """The whole evaluation (see module doc). Every rank calls it under torchrun; returns the result dict
    (on every rank; only rank 0 writes files). With ``stop_after`` the run leaves after that many steps
    (checkpointed) without testing and returns ``{"stopped_at": step}``."""
    from concerto.train.state import init_distributed

    if mode not in MODES:
        raise ProbeError(f"--mode must be one of {MODES}, got {mode!r}")
    rank, world, device = init_distributed()
    out = Path(output)
    scenes, names, info = load_scenes(data, max_scenes)
    class_names = class_names_for(scenes, names)
    train_keys, val_keys, split_name = split_for(scenes, info, val_fraction, split_seed, train_split, val_split)
    by_key = {s.key: s for s in scenes}
    labels = {k: by_key[k].label for k in train_keys}
    selection = choose_selection(labels, out / "selection.json", data, rank, resume, selection_file, selection_seed,
                                 scene_fraction, points_per_scene)
    train_labels = {k: selection.mask_labels(k, labels[k]) for k in selection.scenes}
    model = build_segmentor(load_encoder(checkpoint, config, loop.seed), mode, len(class_names), seed=loop.seed,
                            drop_path=drop_path, lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
                            lora_dropout=lora_dropout, decoder=decoder).to(device)
    torch.manual_seed(loop.seed)
    summary = fit(model, [by_key[k] for k in selection.scenes], train_labels, loop, out, rank, world, device,
                  resume=resume, stop_after=stop_after, keep=selection.points, progress=progress,
                  extra_state={"selection": selection.to_dict() if selection.points is None else None})
    if summary["step"] < summary["total_steps"]:
        return {"stopped_at": summary["step"]}
    val = evaluate(model, [by_key[k] for k in val_keys], len(class_names), rank, world, loop.test_augs,
                   loop.max_fragments, device)
    settings = {"dataset": dataset_name or str(data), "split": split_name, "mode": mode, "checkpoint": str(checkpoint),
                "protocol": protocol_of(selection), "seed": loop.seed,
                "config": config if checkpoint == "random" else None}
    lora = {"rank": lora_rank, "alpha": lora_alpha, "targets": list(lora_targets),
            "dropout": lora_dropout} if mode == "lora" else None
    result = result_record(settings, class_names, model, world, {"train": train_keys, "val": val_keys},
                           selection if rank == 0 else None, loop, lora, summary, val)
    if rank == 0:
        write_outputs(result, model, out, summary["step"], results)
    return result


def format_result(result: dict) -> str:
    """Per-class held-out IoU / accuracy and the summary line."""
    val = result["val"]
    width = max([len(n) for n in result["class_names"]] + [8])

    def pct(x):
        return "    n/a" if x is None else f"{100 * x:7.2f}"

    lines = [f"{result['mode']}  checkpoint={result['checkpoint']}  {result['protocol'] or 'all labels'}  "
             f"trainable={result['trainable_parameters']}/{result['parameters']}  split={result['split']}",
             f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}  {'points':>9}"]
    for name, m in val["per_class"].items():
        lines.append(f"{name:<{width}}  {pct(m['iou'])}  {pct(m['acc'])}  {m['support']:>9d}")
    lines.append(f"{'held-out':<{width}}  mIoU {pct(val['mIoU'])}  mAcc {pct(val['mAcc'])}  allAcc {pct(val['allAcc'])}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m concerto.eval.segment", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="shard store or Pointcept-layout folder with labels")
    p.add_argument("--checkpoint", required=True, help="run folder, state.pt, official .pth, released name, or 'random'")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--config", default="tiny", help="encoder preset for --checkpoint random")
    p.add_argument("--output", default=None, help="run folder (default runs/segment-<mode>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    p.add_argument("--results", default=None, help="JSON-lines results file to append a row to")
    p.add_argument("--dataset-name", default=None, help="dataset label in the results table (default: --data)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=2, help="scenes per rank per step")
    p.add_argument("--lr", type=float, default=None, help="peak lr (default per mode, as the reference configs)")
    p.add_argument("--weight-decay", type=float, default=0.02)
    p.add_argument("--lovasz-weight", type=float, default=1.0)
    p.add_argument("--max-points", type=int, default=102_400, help="sphere crop of a training sample")
    p.add_argument("--drop-path", type=float, default=0.3)
    p.add_argument("--test-augs", default="full", choices=("full", "none"))
    p.add_argument("--max-fragments", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="new weights, augmentation, order of scenes")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (and at the end)")
    p.add_argument("--val-fraction", type=float, default=0.25, help="store: held-out fraction of scenes")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--max-scenes", type=int, default=None)
    p.add_argument("--scene-fraction", type=float, default=None, help="data efficient: fraction of training scenes")
    p.add_argument("--points-per-scene", type=int, default=None, help="data efficient: labelled points per scene")
    p.add_argument("--selection-seed", type=int, default=0)
    p.add_argument("--selection", default=None, help="a recorded selection.json to reuse")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--lora-targets", default="qkv", help="comma list of qkv, proj, fc1, fc2")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: default)")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    import torch.distributed as dist
    from concerto.data import DataError
    from concerto.inference import InferenceError

    if a.threads > 0:
        torch.set_num_threads(a.threads)
    loop = LoopConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr if a.lr is not None else DEFAULT_LR[a.mode],
                      weight_decay=a.weight_decay, lovasz_weight=a.lovasz_weight, max_points=a.max_points,
                      test_augs=a.test_augs, max_fragments=a.max_fragments, seed=a.seed, save_every=a.save_every)
    output = a.output or f"runs/segment-{a.mode}"
    try:
        result = run_segment(a.data, a.checkpoint, a.mode, output, loop, config=a.config, val_fraction=a.val_fraction,
                             split_seed=a.split_seed, train_split=a.train_split, val_split=a.val_split,
                             scene_fraction=a.scene_fraction, points_per_scene=a.points_per_scene,
                             selection_seed=a.selection_seed, selection_file=a.selection, resume=a.resume,
                             results=a.results, stop_after=a.stop_after, max_scenes=a.max_scenes,
                             drop_path=a.drop_path, lora_rank=a.lora_rank, lora_alpha=a.lora_alpha,
                             lora_targets=tuple(t.strip() for t in a.lora_targets.split(",") if t.strip()),
                             lora_dropout=a.lora_dropout, progress=not a.no_progress, dataset_name=a.dataset_name)
    except (DataError, InferenceError, ProbeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    rank = int(__import__("os").environ.get("RANK", 0))
    if rank == 0:
        if "stopped_at" in result:
            print(f"stopped at step {result['stopped_at']}; continue with --resume")
        else:
            print(format_result(result))
            print(f"wrote {Path(output) / 'result.json'}, {Path(output) / 'segmentor.pth'}; "
                  f"tensorboard --logdir {Path(output) / 'tb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
