"""Step-indexed schedules (pure functions of the step, so resuming needs no state).

All schedules take the 0-based optimiser step and the total number of steps.
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
