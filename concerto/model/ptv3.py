"""Point Transformer V3 (PT-v3m2, the Sonata/Concerto backbone).

Module tree and parameter names follow the reference so official checkpoints
load without renaming: ``embedding.stem.{linear,norm}``, ``embedding.mask_token``,
``enc.enc{s}.down.{proj,norm.0}``, ``enc.enc{s}.block{i}.{cpe.0,cpe.1,cpe.2,
norm1.0,attn.qkv,attn.proj,norm2.0,mlp.0.fc1,mlp.0.fc2}`` and, with a decoder,
``dec.dec{s}.up.{proj,proj_skip}.{0,1}`` and ``dec.dec{s}.block{i}.*``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from .attention import SerializedAttention
from .config import PTv3Config
from .grid_sample import grid_sample
from .point import Point
from .pooling import GridPooling, GridUnpooling
from .sparse_conv import SubMConv3d


class DropPath(nn.Module):
    """Stochastic depth per row of a [N, C] tensor (per point), scaled by 1/keep in training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class LayerScale(nn.Module):
    """Per-channel learnable scale ``gamma`` [C]."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class MLP(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, channels: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, channels)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Embedding(nn.Module):
    """Stem Linear -> LayerNorm -> GELU, and the mask token substituted where ``point.mask``."""

    def __init__(self, in_channels: int, channels: int, mask_token: bool) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            OrderedDict(linear=nn.Linear(in_channels, channels), norm=nn.LayerNorm(channels), act=nn.GELU())
        )
        self.mask_token = nn.Parameter(torch.zeros(1, channels)) if mask_token else None

    def forward(self, point: Point) -> Point:
        feat = point["feat"]
        if feat.ndim != 2 or feat.shape[1] != self.in_channels:
            raise ValueError(f"Point.feat must be [N, {self.in_channels}], got {tuple(feat.shape)}")
        feat = self.stem(feat)
        if "mask" in point:
            if self.mask_token is None:
                raise ValueError("Point has a mask but the model was built with mask_token=False")
            feat = torch.where(point["mask"].view(-1, 1).bool(), self.mask_token.to(feat.dtype), feat)
        point["feat"] = feat
        return point


class Block(nn.Module):
    """CPE (sparse conv -> Linear -> LayerNorm) + attention + MLP, each residual."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale: float | None = None,
        pre_norm: bool = True,
        order_index: int = 0,
        sparse_conv_backend: str = "auto",
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.cpe = nn.ModuleList(
            [
                SubMConv3d(channels, channels, 3, bias=True, backend=sparse_conv_backend),
                nn.Linear(channels, channels),
                nn.LayerNorm(channels),
            ]
        )
        self.norm1 = nn.Sequential(nn.LayerNorm(channels))
        self.ls1 = nn.Sequential(LayerScale(channels, layer_scale) if layer_scale is not None else nn.Identity())
        self.attn = SerializedAttention(
            channels, num_heads, patch_size, qkv_bias, qk_scale, attn_drop, proj_drop, order_index,
            backend=attention_backend,
        )
        self.norm2 = nn.Sequential(nn.LayerNorm(channels))
        self.ls2 = nn.Sequential(LayerScale(channels, layer_scale) if layer_scale is not None else nn.Identity())
        self.mlp = nn.Sequential(MLP(channels, int(channels * mlp_ratio), proj_drop))
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, point: Point) -> Point:
        feat = point["feat"]
        cache = point.setdefault("sparse_conv_cache", {})
        conv, linear, norm = self.cpe
        feat = feat + norm(linear(conv(feat, point["grid_coord"], point["batch"], cache)))
        x = self.norm1(feat) if self.pre_norm else feat
        feat = feat + self.drop_path(self.ls1(self.attn(x, point)))
        if not self.pre_norm:
            feat = self.norm1(feat)
        x = self.norm2(feat) if self.pre_norm else feat
        feat = feat + self.drop_path(self.ls2(self.mlp(x)))
        if not self.pre_norm:
            feat = self.norm2(feat)
        point["feat"] = feat
        return point


def _stage_orders(orders, num_stages: int):
    """Normalise the ``orders`` argument to one tuple of curve names per stage, or None."""
    if orders is None:
        return None
    orders = [orders] if isinstance(orders, str) else list(orders)
    if orders and all(isinstance(o, str) for o in orders):
        return [tuple(orders)] * num_stages
    if len(orders) != num_stages:
        raise ValueError(f"orders must give one curve list per stage ({num_stages}), got {len(orders)}")
    return [tuple(o) for o in orders]


class PointTransformerV3(nn.Module):
    """PTv3 encoder (and optional decoder) over a packed batch of point clouds.

    ``forward(point, orders=None, generator=None, grid_sample_mode=None)``:

    - ``point``: a ``Point`` or dict with ``feat`` [N, in_channels], ``coord``
      [N, 3] metres, ``offset`` [B] or ``batch`` [N], and either ``grid_coord``
      (already one point per voxel) or ``grid_size`` (default
      ``config.grid_size``), in which case the input is grid-sampled here
      (``"random"`` point per voxel in training, ``"first"`` in eval, or
      ``grid_sample_mode``) and ``grid_sample_inverse`` maps every input
      point to its voxel. Optional ``mask`` [N] bool selects points whose
      embedding is the mask token.
    - ``orders``: fix the curves instead of shuffling: one list of names for
      every stage, or one list per stage (stage s, block i uses
      ``orders[s][i % len]``).
    - returns the deepest-stage ``Point`` (``enc_mode``) or the decoder's
      full-resolution ``Point``; ``out.index_to_input()`` maps input points to
      output rows and ``upcast(out, levels)`` gathers finer stages.
    """

    def __init__(self, config: PTv3Config | None = None, **overrides) -> None:
        super().__init__()
        if config is None:
            config = PTv3Config(**overrides)
        elif overrides:
            config = PTv3Config.from_dict({**config.to_dict(), **overrides})
        self.config = config
        c = config
        self.num_stages = c.num_stages
        self.embedding = Embedding(c.in_channels, c.enc_channels[0], c.mask_token)

        block_kw = dict(
            mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, qk_scale=c.qk_scale, attn_drop=c.attn_drop,
            proj_drop=c.proj_drop, layer_scale=c.layer_scale, pre_norm=c.pre_norm,
            sparse_conv_backend=c.sparse_conv_backend, attention_backend=c.attention_backend,
        )
        dp = torch.linspace(0, c.drop_path, sum(c.enc_depths), device="cpu").tolist()
        self.enc = nn.ModuleDict()
        for s in range(self.num_stages):
            stage = nn.ModuleDict()
            if s > 0:
                stage["down"] = GridPooling(c.enc_channels[s - 1], c.enc_channels[s], c.stride[s - 1])
            first = sum(c.enc_depths[:s])
            for i in range(c.enc_depths[s]):
                stage[f"block{i}"] = Block(
                    c.enc_channels[s], c.enc_num_head[s], c.enc_patch_size[s], drop_path=dp[first + i],
                    order_index=i % len(c.order), **block_kw,
                )
            self.enc[f"enc{s}"] = stage

        self.dec = None
        if not c.enc_mode:
            dp = torch.linspace(0, c.drop_path, sum(c.dec_depths), device="cpu").tolist()
            dec_channels = list(c.dec_channels) + [c.enc_channels[-1]]
            self.dec = nn.ModuleDict()
            for s in reversed(range(self.num_stages - 1)):
                stage = nn.ModuleDict()
                stage["up"] = GridUnpooling(dec_channels[s + 1], c.enc_channels[s], dec_channels[s])
                rates = dp[sum(c.dec_depths[:s]) : sum(c.dec_depths[: s + 1])][::-1]
                for i in range(c.dec_depths[s]):
                    stage[f"block{i}"] = Block(
                        dec_channels[s], c.dec_num_head[s], c.dec_patch_size[s], drop_path=rates[i],
                        order_index=i % len(c.order), **block_kw,
                    )
                self.dec[f"dec{s}"] = stage

        self.apply(self._init_weights)
        if c.freeze_encoder:
            for p in list(self.embedding.parameters()) + list(self.enc.parameters()):
                p.requires_grad_(False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, SubMConv3d)):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def prepare(self, point: Point | dict, grid_sample_mode: str | None = None,
                generator: torch.Generator | None = None) -> Point:
        """Validate the input and grid-sample it unless it already has ``grid_coord``."""
        point = Point(dict(point))  # never mutate the caller's record
        for name in ("feat", "coord"):
            if name not in point:
                raise ValueError(f"PTv3 input has no {name!r} field")
        for name in ("coord", "feat"):
            if point[name].ndim != 2 or point[name].shape[0] != point.num_points:
                raise ValueError(
                    f"PTv3 input {name} has shape {tuple(point[name].shape)}, expected {point.num_points} rows (offset[-1])"
                )
        if not torch.isfinite(point["coord"]).all():
            bad = int((~torch.isfinite(point["coord"])).any(1).nonzero()[0])
            raise ValueError(f"PTv3 input coord has non-finite values (first at point {bad}, sample {int(point['batch'][bad])})")
        if not torch.isfinite(point["feat"]).all():
            bad = int((~torch.isfinite(point["feat"])).any(1).nonzero()[0])
            raise ValueError(f"PTv3 input feat has non-finite values (first at point {bad}, sample {int(point['batch'][bad])})")
        if "grid_coord" not in point:
            point.setdefault("grid_size", self.config.grid_size)
            mode = grid_sample_mode or ("random" if self.training else "first")
            point = grid_sample(point, mode=mode, generator=generator)
        return point

    def forward(
        self,
        point: Point | dict,
        orders: Sequence[str] | Sequence[Sequence[str]] | None = None,
        generator: torch.Generator | None = None,
        grid_sample_mode: str | None = None,
    ) -> Point:
        c = self.config
        stage_orders = _stage_orders(orders, self.num_stages)
        point = self.prepare(point, grid_sample_mode, generator)
        point = self.embedding(point)
        if stage_orders is not None:
            point.serialization(order=stage_orders[0], shuffle_orders=False)
        else:
            point.serialization(order=c.order, shuffle_orders=c.shuffle_orders, generator=generator)
        for s in range(self.num_stages):
            for name, module in self.enc[f"enc{s}"].items():
                if name == "down":
                    point = module(
                        point,
                        orders=None if stage_orders is None else stage_orders[s],
                        shuffle_orders=c.shuffle_orders,
                        generator=generator,
                    )
                else:
                    point = module(point)
        if self.dec is not None:
            for stage in self.dec.values():
                for module in stage.values():
                    point = module(point)
        return point
