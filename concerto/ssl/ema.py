"""Exponential moving average of the student into the teacher."""
from __future__ import annotations

from typing import Iterable

import torch


@torch.no_grad()
def ema_update(teacher: Iterable[torch.Tensor], student: Iterable[torch.Tensor], momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, in place, pairwise."""
    t = list(teacher)
    s = [p.detach() for p in student]
    if len(t) != len(s):
        raise ValueError(f"ema_update: {len(t)} teacher tensors vs {len(s)} student tensors")
    torch._foreach_mul_(t, momentum)
    torch._foreach_add_(t, s, alpha=1.0 - momentum)
