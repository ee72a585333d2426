"""Cross-modal prediction (Concerto): point features predict frozen image patch features.

The pooling (``losses.pool_patches``) runs inside the student's forward so DDP sees
the predictor; the loss is ``losses.cross_modal_loss``."""
from __future__ import annotations

import torch
from torch import nn


class PatchPredictor(nn.Module):
    """Linear map from pooled point features [U, point_channels] to the image
    encoder's feature size [U, image_channels]."""

    def __init__(self, point_channels: int, image_channels: int):
        super().__init__()
        self.proj = nn.Linear(point_channels, image_channels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(pooled)

