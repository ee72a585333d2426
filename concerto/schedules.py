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


def one_cycle_beta1(step: int, total: int, pct_start: float = 0.05, base: float = 0.85,
                    peak: float = 0.95) -> float:
    """AdamW beta1 of the same one-cycle policy (torch's OneCycleLR with
    cycle_momentum, anneal 'cos', as the released recipe runs it): ``peak`` -> ``base``
    while the learning rate warms up, then back to ``peak`` as it anneals; inverse to
    the learning rate, over the same phase boundaries as ``one_cycle_factor``."""
    warm = max(float(pct_start * total) - 1, 1.0)
    if step <= warm:
        t = step / warm
        return base + (peak - base) * 0.5 * (1 + math.cos(math.pi * t))
    rest = max(total - 1 - warm, 1.0)
    t = min((step - warm) / rest, 1.0)
    return peak + (base - peak) * 0.5 * (1 + math.cos(math.pi * t))


def training_schedules(cfg, step: int) -> dict:
    """The step's values of every schedule of a PretrainConfig: ``lr_factor`` (times each
    group's max lr), ``beta1`` (AdamW's, cycled with the lr as released; None when
    ``optim.beta1_cycle`` is off), ``weight_decay``, ``teacher_temp`` and EMA ``momentum``
    (the mask schedule is ``concerto.ssl.masking.MaskShape.at``)."""
    o, d, total = cfg.optim, cfg.distill, cfg.run.steps
    beta1 = one_cycle_beta1(step, total, o.warmup_ratio, o.beta1_cycle[1], o.beta1_cycle[0]) if o.beta1_cycle else None
    return dict(lr_factor=one_cycle_factor(step, total, o.warmup_ratio, o.div_factor, o.final_div_factor),
                beta1=beta1,
                weight_decay=cosine_warmup(step, total, o.weight_decay_start, o.weight_decay_start,
                                           o.weight_decay_end, 0.0),
                teacher_temp=cosine_warmup(step, total, d.teacher_temp_start, d.teacher_temp_base,
                                           d.teacher_temp_base, d.teacher_temp_warmup_ratio),
                momentum=cosine_warmup(step, total, d.momentum_base, d.momentum_base, d.momentum_final, 0.0))
