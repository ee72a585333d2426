"""Sinkhorn-Knopp balanced assignment of samples to prototypes (SwAV / DINOv2 / Sonata)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, temperature: float, num_iters: int = 3) -> torch.Tensor:
    """scores [n, K] (teacher logits) -> soft assignments [n, K], rows summing to 1.

    Q = exp(scores / T), normalised to total mass 1, then ``num_iters`` rounds of:
    each prototype's mass (column sum) to 1/K, each sample's mass (row sum) to 1/n;
    finally scaled by n. Under torch.distributed the totals and the prototype masses
    are all-reduced, so the balance holds over the samples of all ranks (n is the
    global sample count).
    """
    q = torch.exp(scores.float() / temperature).t()  # [K, n]
    k = q.shape[0]
    n = torch.tensor([q.shape[1]], dtype=torch.float64, device=q.device)
    total = q.sum()
    if _distributed():
        dist.all_reduce(n)
        dist.all_reduce(total)
    n = float(n.item())
    q = q / total
    for _ in range(num_iters):
        per_prototype = q.sum(dim=1, keepdim=True)
        if _distributed():
            dist.all_reduce(per_prototype)
        q = q / per_prototype / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).t()
