"""Cross-modal prediction (Concerto): point features predict frozen image patch features."""
from __future__ import annotations

import torch
from torch import nn

from concerto.ssl.losses import cross_modal_loss, pool_patches


class PatchPredictor(nn.Module):
    """Linear map from pooled point features [U, point_channels] to the image
    encoder's feature size [U, image_channels]."""

    def __init__(self, point_channels: int, image_channels: int):
        super().__init__()
        self.proj = nn.Linear(point_channels, image_channels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)


def cross_modal_term(point_feat: torch.Tensor, corr_row: torch.Tensor, corr_image: torch.Tensor,
                     corr_patch: torch.Tensor, image_feat: torch.Tensor, predictor: nn.Module,
                     scale: float = 10.0) -> torch.Tensor:
    """Cross-modal loss of one batch.

    point_feat [P,C] features of the principal views' points (flat global rows);
    corr_* [K] correspondences (point row, image, row-major patch); image_feat
    [I,h,w,D] frozen patch features. Point features are averaged per patch, mapped
    by ``predictor`` and compared with the patch feature: scale * mean(1 - cos) over
    patches that received points.
    """
    num_images, h, w, dim = image_feat.shape
    patch_id = corr_image * (h * w) + corr_patch
    pooled, used = pool_patches(point_feat, corr_row, patch_id, num_images * h * w)
    pred = predictor(pooled)
    target = image_feat.reshape(-1, dim)[used]
    return cross_modal_loss(pred, target, scale=scale)
