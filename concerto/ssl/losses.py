"""Loss terms of the pretraining objective (pure functions of tensors)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from concerto.ssl.sinkhorn import sinkhorn_knopp


def group_mean(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Mean over groups of the per-group mean of ``values`` [M] (groups with no
    value are left out)."""
    ids, inverse = torch.unique(group, return_inverse=True)
    sums = torch.zeros(len(ids), dtype=values.dtype, device=values.device).index_add_(0, inverse, values)
    counts = torch.bincount(inverse, minlength=len(ids)).to(values.dtype)
    return (sums / counts).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      match: torch.Tensor, student_group: torch.Tensor, student_temp: float,
                      teacher_temp: float, sinkhorn_iters: int = 3) -> torch.Tensor:
    """Swapped-prediction cross-entropy of matched points.

    student_logits [Ps,K], teacher_logits [Pt,K] prototype similarities;
    match [M,2] (student row, teacher row); student_group [Ps] the view each
    student row belongs to. Targets = Sinkhorn(teacher_logits[match[:,1]] / T_t);
    per pair loss = -sum_k target_k log softmax(student / T_s)_k; averaged per view,
    then over views.
    """
    if len(match) == 0:
        return student_logits.sum() * 0.0
    target = sinkhorn_knopp(teacher_logits[match[:, 1]], teacher_temp, sinkhorn_iters)
    logp = F.log_softmax(student_logits[match[:, 0]].float() / student_temp, dim=-1)
    per_pair = -(target * logp).sum(-1)
    return group_mean(per_pair, student_group[match[:, 0]])


def pool_patches(point_feat: torch.Tensor, corr_row: torch.Tensor, corr_patch: torch.Tensor,
                 num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean point feature per image patch.

    point_feat [P,C]; corr_row [K] rows of point_feat; corr_patch [K] global patch
    id in [0, num_patches). Returns (pooled [U,C], patch ids [U] sorted), U = patches
    with at least one point (the others are skipped).
    """
    sums = point_feat.new_zeros((num_patches, point_feat.shape[1]))
    sums = sums.index_add(0, corr_patch, point_feat[corr_row])
    counts = torch.bincount(corr_patch, minlength=num_patches)
    used = torch.nonzero(counts).flatten()
    return sums[used] / counts[used].unsqueeze(1).to(sums.dtype), used


def pool_patches_coarse(feat: torch.Tensor, corr_row: torch.Tensor, corr_image: torch.Tensor,
                        corr_rc: torch.Tensor, num_images: int, grid_hw: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature per image patch over coarse points (the released pooling).

    feat [P,C] features of coarse points; corr_row [K] the coarse point of each
    correspondence; corr_image [K] its image; corr_rc float [K,2] its (row, col) in
    patch units (continuous). Each (coarse point, image) pair first averages the
    patch coordinates of its correspondences, truncated to a patch; each pair then
    counts once in its patch's mean. Returns (pooled [U,C], global patch ids [U]
    sorted, id = image * h * w + row * w + col).
    """
    h, w = grid_hw
    if len(corr_row) == 0:
        return feat.new_zeros((0, feat.shape[1])), corr_row.new_zeros(0)
    pair, inverse = torch.unique(corr_row * max(num_images, 1) + corr_image, return_inverse=True)
    rc = corr_rc.float().new_zeros((len(pair), 2)).index_add_(0, inverse, corr_rc.float())
    rc = rc / torch.bincount(inverse, minlength=len(pair)).unsqueeze(1).float()
    rc = rc.long()  # truncation, as the reference's cast
    image = pair % max(num_images, 1)
    patch = image * (h * w) + rc[:, 0] * w + rc[:, 1]
    used, slot = torch.unique(patch, return_inverse=True)
    sums = feat.new_zeros((len(used), feat.shape[1])).index_add(0, slot, feat[pair // max(num_images, 1)])
    counts = torch.bincount(slot, minlength=len(used)).unsqueeze(1).to(sums.dtype)
    return sums / counts, used


def cross_modal_loss(pred: torch.Tensor, target: torch.Tensor, scale: float = 10.0,
                     center: bool = True) -> torch.Tensor:
    """scale * mean over rows of (1 - cos(pred, target)); pred, target [U,D]. With
    ``center`` each row's channel mean is removed from both sides first."""
    pred = pred.float()
    target = target.float()
    if center:
        pred = pred - pred.mean(dim=-1, keepdim=True)
        target = target - target.mean(dim=-1, keepdim=True)
    return (1 - F.cosine_similarity(pred, target, dim=-1, eps=1e-6)).mean() * scale
