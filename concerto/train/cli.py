"""``python -m concerto.train``: arguments, errors as one line, where the outputs are."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from concerto.config import ConfigError, load_config
from concerto.train.loop import train
from concerto.train.state import TrainError

DESCRIPTION = "Concerto pretraining (single process or under torchrun)."


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m concerto.train", description=DESCRIPTION)
    parser.add_argument("--data", required=True, help="shard store path or fsspec URL")
    parser.add_argument("--config", default="base", help="base | large | tiny | a .yaml/.json file")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", default="runs/pretrain")
    parser.add_argument("--steps", type=int, default=None, help="total optimiser steps (run.steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Train; the process group (if any) is destroyed however it ends."""
    try:
        cfg = load_config(args.config, args.sets)
        if args.steps is not None:
            cfg.run.steps = args.steps
        return train(cfg, args.data, args.output, resume=args.resume, progress=not args.no_progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def report(summary: dict, output: str) -> None:
    print(json.dumps({"step": summary["step"], **{k: round(v, 6) for k, v in summary["last"].items()}}))
    out = Path(output)
    print(f"checkpoints: {out / 'checkpoints'} (step {summary['step']}; resume with --resume)")
    print(f"backbone in the official layout: {out / 'backbone.pth'}")
    print(f"tensorboard logs: {out / 'tb'} (tensorboard --logdir {out / 'tb'})")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from concerto.data import DataError
    from concerto.image_encoder import ImageEncoderError

    try:
        summary = run(args)
    except (ConfigError, DataError, TrainError, ImageEncoderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary["rank"] == 0:
        report(summary, args.output)
    return 0
