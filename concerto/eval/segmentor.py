"""A PTv3 backbone plus a linear segmentation head, built for one evaluation mode.

Modes (as the Sonata / Concerto fine-tuning configs in Pointcept):

- ``linear``: frozen encoder; the head reads the encoder's features of every
  stage upcast to full resolution (sum of ``enc_channels``: 1232 for base).
- ``decoder``: frozen encoder + the PTv3 decoder (unpooling stages with skip
  connections, ``dec_depths`` / ``dec_channels``; ``PointTransformerV3`` with
  ``enc_mode=False``), trained with the head on ``dec_channels[0]``.
- ``full``: encoder, decoder and head all trained.
- ``lora``: frozen encoder with LoRA adapters (``concerto.eval.lora``) and the
  linear head on the upcast features, as the reference LoRA config.

A frozen sub-module is kept in eval mode while training (no drop-path, fixed
behaviour), so a frozen encoder computes the same features as ``concerto.inference``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

MODES = ("linear", "decoder", "full", "lora")

# decoder of the reference fine-tuning configs for the base / large encoders
REFERENCE_DECODER = dict(dec_depths=(2, 2, 2, 2), dec_channels=(64, 96, 192, 384), dec_num_head=(4, 6, 12, 24),
                         dec_patch_size=(1024, 1024, 1024, 1024))


def decoder_overrides(cfg) -> dict:
    """Decoder fields for an encoder config: the tiny preset's decoder for the tiny encoder, else the reference's."""
    from concerto.model import PTv3Config

    tiny = PTv3Config.tiny()
    if tuple(cfg.enc_channels) == tuple(tiny.enc_channels):
        return {k: getattr(tiny, k) for k in REFERENCE_DECODER}
    if cfg.num_stages != 5:
        raise ValueError(f"no default decoder for a {cfg.num_stages}-stage encoder; pass dec_* overrides")
    return dict(REFERENCE_DECODER)


class Segmentor(nn.Module):
    """backbone -> per-point features -> Linear(num_classes). ``forward`` returns logits [M, K] for the input rows."""

    def __init__(self, backbone: nn.Module, num_classes: int, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.backbone = backbone
        cfg = backbone.config
        channels = int(sum(cfg.enc_channels)) if cfg.enc_mode else int(cfg.dec_channels[0])
        self.head = nn.Linear(channels, num_classes)

    def features(self, coord: torch.Tensor, feat: torch.Tensor, grid_coord: torch.Tensor, offset: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Per-row features [M, C] of a packed batch (rows already grid-sampled: one per voxel)."""
        from concerto.model import Point, upcast

        cfg = self.backbone.config
        point = Point(coord=coord, feat=feat, grid_coord=grid_coord, offset=offset, grid_size=cfg.grid_size)
        # fixed curves outside training, shuffled (reference) while training
        orders = None if self.training else list(cfg.order)
        out = self.backbone(point, orders=orders, generator=generator)
        if cfg.enc_mode:
            out = upcast(out, cfg.num_stages - 1)
        return out["feat"][out.index_to_input()]

    def forward(self, coord, feat, grid_coord, offset, generator=None) -> torch.Tensor:
        frozen = not any(p.requires_grad for p in self.backbone.parameters())
        with torch.no_grad() if frozen else torch.enable_grad():
            f = self.features(coord, feat, grid_coord, offset, generator)
        return self.head(f)

    def train(self, mode: bool = True) -> "Segmentor":
        super().train(mode)
        if mode:
            for sub in _frozen_children(self.backbone):
                sub.eval()
        return self

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}


def _frozen_children(module: nn.Module) -> list[nn.Module]:
    """Top-level children (embedding, enc, dec stages) with no trainable parameter."""
    out = []
    for child in module.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            out.append(child)
        elif params:
            out.extend(_frozen_children(child))
    return out


def build_segmentor(encoder: nn.Module, mode: str, num_classes: int, seed: int = 0, drop_path: float = 0.3,
                    lora_rank: int = 8, lora_alpha: float = 16.0, lora_targets: Sequence[str] = ("qkv",),
                    lora_dropout: float = 0.1, decoder: Optional[dict] = None) -> Segmentor:
    """A Segmentor for ``mode`` around the weights of ``encoder`` (a PointTransformerV3, encoder-only or not).

    New parts (decoder, head, adapters) are initialised from ``seed``; the
    encoder's weights are copied. ``decoder``: dec_* overrides of the default
    (``decoder_overrides``). ``drop_path`` applies to the trained blocks.
    """
    from concerto.model import PointTransformerV3, PTv3Config

    cfg = encoder.config.to_dict()
    cfg.update(drop_path=drop_path if mode in ("decoder", "full", "lora") else 0.0, freeze_encoder=False)
    if mode in ("decoder", "full"):
        cfg.update(enc_mode=False, **decoder_overrides(encoder.config))
        cfg.update(decoder or {})
    else:
        cfg.update(enc_mode=True)
    state = {k: v for k, v in encoder.state_dict().items() if not k.startswith("dec.")}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone = PointTransformerV3(PTv3Config.from_dict(cfg))
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("dec.") for k in missing):
            raise ValueError(f"encoder weights do not fit the {mode} backbone: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        if mode in ("linear", "decoder"):
            for p in list(backbone.embedding.parameters()) + list(backbone.enc.parameters()):
                p.requires_grad_(False)
        model = Segmentor(backbone, num_classes, mode)
        if mode == "lora":
            from concerto.eval.lora import add_lora

            add_lora(backbone, lora_rank, lora_alpha, lora_targets, lora_dropout)
    return model
