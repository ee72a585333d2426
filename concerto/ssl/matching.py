"""Student-to-teacher point matching by nearest original coordinate."""
from __future__ import annotations

import torch


@torch.no_grad()
def match_nearest(query: torch.Tensor, query_group: torch.Tensor, ref: torch.Tensor,
                  ref_group: torch.Tensor, radius: float, chunk: int = 4096) -> torch.Tensor:
    """Pairs (query row, nearest ref row of the same group) closer than ``radius``.

    query [Nq,3], ref [Nr,3] original (pre-augmentation) coordinates in metres;
    query_group [Nq], ref_group [Nr] int64 group ids (a query point only matches ref
    points of its own group). Returns int64 [M,2], ordered by query row.
    """
    pairs = []
    for g in torch.unique(query_group).tolist():
        qi = torch.nonzero(query_group == g).flatten()
        ri = torch.nonzero(ref_group == g).flatten()
        if len(qi) == 0 or len(ri) == 0:
            continue
        r = ref[ri].float()
        for s in range(0, len(qi), chunk):
            q = qi[s:s + chunk]
            # exact differences, not the |a|^2 + |b|^2 - 2ab expansion (cdist's default for
            # large inputs), whose rounding picks a wrong neighbour among near-equal ones
            dist, nearest = torch.cdist(query[q].float(), r, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
            ok = dist < radius
            pairs.append(torch.stack([q[ok], ri[nearest[ok]]], dim=1))
    if not pairs:
        return torch.zeros((0, 2), dtype=torch.long, device=query.device)
    out = torch.cat(pairs)
    return out[torch.argsort(out[:, 0])]

