"""Concerto pretraining.

    python -m concerto.train --data <store> [--config base|large|tiny|<file>]
        [--set key=value ...] [--output DIR] [--steps N] [--resume]

Single process, or under ``torchrun`` (process group from the environment: gloo
on CPU, NCCL on GPU). Writes checkpoints to ``<output>/checkpoints``, the backbone
in the official key layout to ``<output>/backbone.pth``, tensorboard scalars to
``<output>/tb`` and the resolved config to ``<output>/config.json``.

Modules, in the order a run uses them:

- ``state``: process group, resume, data -> ``RunStart``; ``resolve_config`` -> the
  run's own config (a new object); models, optimiser, loader -> ``TrainState``;
- ``step``: one optimiser step (schedules, forward, losses, backward, clip, EMA);
- ``metrics``: averaging over ranks, tensorboard, progress bar, config.json;
- ``checkpoint``: the training state (to resume) and the backbone export (to use);
- ``loop``: ``train()``, the four above in a loop; ``cli``: ``main()``.
"""
from concerto.train.cli import main
from concerto.train.loop import train
from concerto.train.state import StoreInfo, TrainError, build_sample_spec, layer_decay_groups, resolve_config
from concerto.train.step import apply_schedules

__all__ = ["StoreInfo", "TrainError", "apply_schedules", "build_sample_spec", "layer_decay_groups", "main",
           "resolve_config", "train"]
