"""Step-indexed schedules (pure functions of the step, so resuming needs no state).

All schedules take the 0-based optimiser step and the total number of steps;
``training_schedules`` evaluates those of a PretrainConfig (the mask schedule is
concerto.ssl.masking.MaskShape.at, evaluated in the loader workers).
"""
from __future__ import annotations

import math


def cosine_warmup(step: int, total: int, start: float, base: float, final: float,
                  warmup_ratio: float) -> float:
    """Linear ramp start -> base over the first ``warmup_ratio`` of the steps
    (endpoints included), then a cosine from base towards final over the rest; the
    final value from ``total`` on. The schedule Sonata uses for mask size, mask
    ratio, teacher temperature and EMA momentum."""
    warmup = int(total * warmup_ratio)
    if step >= total:
        return final
    if step < warmup:
        return start + (base - start) * (step / (warmup - 1) if warmup > 1 else 1.0)
    rest = max(total - warmup, 1)
    t = (step - warmup) / rest
    return final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))


def one_cycle_factor(step: int, total: int, pct_start: float = 0.05,
                     div_factor: float = 10.0, final_div_factor: float = 1000.0) -> float:
    """Learning-rate multiplier of a cosine one-cycle policy (torch's OneCycleLR with
    anneal 'cos'): max/div_factor -> max over pct_start of the steps, then down to
    max/(div_factor*final_div_factor). Returned relative to the maximum."""
    initial = 1.0 / div_factor
    minimum = initial / final_div_factor
    warm = max(float(pct_start * total) - 1, 1.0)
    if step <= warm:
        t = step / warm
        return 1.0 + (initial - 1.0) * 0.5 * (1 + math.cos(math.pi * t))
    rest = max(total - 1 - warm, 1.0)
    t = min((step - warm) / rest, 1.0)
    return minimum + (1.0 - minimum) * 0.5 * (1 + math.cos(math.pi * t))


def training_schedules(cfg, step: int) -> dict:
    """The step's values of every optimiser-side schedule of a PretrainConfig: ``lr_factor``
    (times each group's max lr), ``weight_decay``, ``teacher_temp`` and EMA ``momentum``."""
    o, d, total = cfg.optim, cfg.distill, cfg.run.steps
    return dict(lr_factor=one_cycle_factor(step, total, o.warmup_ratio, o.div_factor, o.final_div_factor),
                weight_decay=cosine_warmup(step, total, o.weight_decay_start, o.weight_decay_start,
                                           o.weight_decay_end, 0.0),
                teacher_temp=cosine_warmup(step, total, d.teacher_temp_start, d.teacher_temp_base,
                                           d.teacher_temp_base, d.teacher_temp_warmup_ratio),
                momentum=cosine_warmup(step, total, d.momentum_base, d.momentum_base, d.momentum_final, 0.0))
