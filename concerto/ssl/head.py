"""Online clustering head (Sonata): MLP -> L2 norm -> weight-normed prototypes."""
from __future__ import annotations

import torch
from torch import nn


class ClusteringHead(nn.Module):
    """feat [P, in_channels] -> prototype similarities [P, num_prototypes] in [-1, 1].

    Linear(in, hidden) -> GELU -> Linear(hidden, embed) -> L2 normalise ->
    Linear(embed, num_prototypes, no bias) under weight norm with the gain fixed
    at 1, so every prototype is a unit vector and outputs are cosines.
    """

    def __init__(self, in_channels: int, hidden_channels: int = 4096, embed_channels: int = 256,
                 num_prototypes: int = 4096):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden_channels), nn.GELU(),
                                 nn.Linear(hidden_channels, embed_channels))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototype = nn.utils.parametrizations.weight_norm(
            nn.Linear(embed_channels, num_prototypes, bias=False))
        gain = self.prototype.parametrizations.weight.original0
        gain.data.fill_(1.0)
        gain.requires_grad_(False)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        embed = self.mlp(feat)
        eps = 1e-6 if embed.dtype == torch.float16 else 1e-12
        return self.prototype(nn.functional.normalize(embed, dim=-1, p=2, eps=eps))
