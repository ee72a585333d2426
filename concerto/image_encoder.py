"""Frozen image encoder giving patch features (DINOv2, SigLIP2, RADIO-style ViTs).

Loaded through Hugging Face transformers (imported lazily: it takes seconds).
Patch size and input size are read from the model config; ``forward`` returns
last-layer patch tokens as [B, h, w, C] with CLS and register tokens dropped.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from concerto.patches import IMAGENET_MEAN, IMAGENET_STD, PatchGrid


class ImageEncoderError(RuntimeError):
    """The image encoder cannot be loaded (names the model id)."""


def _vision_config(config: Any) -> Any:
    return getattr(config, "vision_config", None) or config


class ImageEncoder(nn.Module):
    """A frozen ViT. ``grid`` is its PatchGrid; ``mean``/``std`` its input statistics."""

    def __init__(self, model: nn.Module, image_size: Optional[int] = None,
                 mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD, name: str = "custom"):
        super().__init__()
        vision = getattr(model, "vision_model", None)
        self.model = vision if vision is not None else model
        cfg = _vision_config(model.config)
        self.patch_size = int(cfg.patch_size)
        self.image_size = int(image_size or cfg.image_size)
        self.grid = PatchGrid(image_size=self.image_size, patch_size=self.patch_size)
        self.num_registers = int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.channels = int(cfg.hidden_size)
        self.mean, self.std, self.name = tuple(mean), tuple(std), name
        self.model.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True):  # always frozen, always in eval mode
        return super().train(False)

    @classmethod
    def from_pretrained(cls, model_id: str = "facebook/dinov2-base", image_size: Optional[int] = None,
                        **kwargs) -> "ImageEncoder":
        """Load ``model_id`` (hub id or local folder) with transformers.AutoModel."""
        try:
            from transformers import AutoImageProcessor, AutoModel

            model = AutoModel.from_pretrained(model_id, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one clear line naming the id
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ImageEncoderError(f"image encoder '{model_id}': cannot load: {first}") from exc
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        try:
            proc = AutoImageProcessor.from_pretrained(model_id)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        except Exception:  # noqa: BLE001 - no processor saved: ImageNet statistics
            pass
        return cls(model, image_size=image_size, mean=mean, std=std, name=model_id)

    @classmethod
    def from_config(cls, config: Any, image_size: Optional[int] = None, seed: int = 0) -> "ImageEncoder":
        """A randomly initialised encoder (seeded) from a transformers config, e.g.
        ``Dinov2Config(hidden_size=32, num_hidden_layers=1, ...)`` or a dict of its fields
        (read as a Dinov2Config)."""
        from transformers import AutoModel, Dinov2Config

        if isinstance(config, dict):
            config = Dinov2Config(**config)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModel.from_config(config)
        return cls(model, image_size=image_size, name=type(config).__name__)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B,3,H,W] normalised, H, W = grid.image_hw -> [B,h,w,C]."""
        h, w = self.grid.grid_hw
        if images.shape[-2:] != self.grid.image_hw:
            raise ValueError(f"image encoder '{self.name}': expected {self.grid.image_hw} images, "
                             f"got {tuple(images.shape[-2:])}")
        out = self.model(pixel_values=images)
        tokens = out.last_hidden_state
        tokens = tokens[:, tokens.shape[1] - h * w:]  # drop CLS / register tokens at the front
        return tokens.reshape(images.shape[0], h, w, -1)
