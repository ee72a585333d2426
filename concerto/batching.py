"""Global batch of the released recipe on any number of ranks: accumulation and lr scale."""
from __future__ import annotations

import math

from concerto.config import ConfigError, PretrainConfig


def resolve_accumulation(cfg: PretrainConfig, world: int) -> tuple[int, float]:
    """(micro-steps per optimiser step, learning-rate multiplier).

    With ``optim.global_batch`` set, accumulation makes batch_size * world * accumulate
    equal to it (a ConfigError names the keys when it does not divide). The lr
    multiplier is effective batch / ``optim.reference_batch`` when ``optim.scale_lr``
    (1.0 whenever the released global batch is reached), else 1.0.
    """
    o, per_step = cfg.optim, cfg.data.batch_size * world
    if o.global_batch is not None:
        if o.global_batch % per_step:
            raise ConfigError(
                f"config key 'optim.global_batch': {o.global_batch} is not a multiple of "
                f"data.batch_size ({cfg.data.batch_size}) x {world} rank(s); set optim.global_batch=null "
                f"to use optim.accumulate")
        accumulate = o.global_batch // per_step
    else:
        accumulate = max(int(o.accumulate), 1)
    effective = per_step * accumulate
    scale = effective / o.reference_batch if o.scale_lr else 1.0
    return accumulate, scale


def steps_for_epochs(num_samples: int, cfg: PretrainConfig, world: int = 1) -> int:
    """Optimiser steps of ``run.epochs`` passes over ``num_samples`` samples (the
    released configs count epochs; the project's schedules count steps)."""
    accumulate, _ = resolve_accumulation(cfg, world)
    per_step = cfg.data.batch_size * world * accumulate
    return max(1, math.ceil(num_samples / per_step)) * cfg.run.epochs
