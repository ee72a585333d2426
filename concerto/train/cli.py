"""``python -m concerto.train``: arguments, errors as one line, where the outputs are."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from concerto.config import PRESETS, ConfigError, load_config
from concerto.train.loop import train
from concerto.train.state import TrainError

DESCRIPTION = "Concerto pretraining (single process or under torchrun)."


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m concerto.train", description=DESCRIPTION)
    parser.add_argument("--data", required=True, help="shard store path or fsspec URL")
    parser.add_argument("--config", default="base",
                        help=f"a preset ({' | '.join(sorted(PRESETS))}) or a .yaml/.json file")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", default="runs/pretrain")
    parser.add_argument("--steps", type=int, default=None, help="total optimiser steps (run.steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    parser.add_argument("--init-from", default=None, metavar="BACKBONE|RUN",
                        help="start a new run's encoders (student and teacher) from these weights: a backbone file, "
                             "a run or checkpoint folder, or a released name (model.init_from)")
    parser.add_argument("--data-version", default=None, metavar="N|latest",
                        help="manifest version to read (default: the latest complete one; on --resume, the "
                             "version the run started with; 'latest' moves a resumed run on to the newest)")
    parser.add_argument("--skip-corrupt-samples", action="store_true",
                        help="leave out (and count) samples whose shard data fails its checksum, instead of stopping")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _version(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--data-version: a manifest version number or 'latest', got {text!r}") from None


def run(args: argparse.Namespace) -> dict:
    """Train; the process group (if any) is destroyed however it ends."""
    try:
        cfg = load_config(args.config, args.sets)
        if args.steps is not None:
            cfg.run.steps = args.steps
        if args.init_from is not None:
            cfg.model.init_from = args.init_from
        if args.data_version is not None:
            cfg.data.version = args.data_version if args.data_version == "latest" else _version(args.data_version)
        if args.skip_corrupt_samples:
            cfg.data.skip_corrupt = True
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
