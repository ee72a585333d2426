"""Transformer building blocks of VGGT: attention with optional QK-norm and 2D
RoPE, pre-norm blocks with layer scale, and the DINOv2 (with registers) image
encoder that VGGT uses as its patch embedding.

Module and parameter names follow the official checkpoint (``norm1``,
``attn.qkv``, ``attn.q_norm``, ``ls1.gamma``, ``mlp.fc1`` ...), so a state dict
of the official model loads without renaming. Tokens are [B, N, C] throughout.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerScale(nn.Module):
    """Per-channel residual scale ``x * gamma`` (gamma [C])."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear -> GELU (exact) -> Linear."""

    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Rope2D(nn.Module):
    """2D rotary position embedding.

    The head dimension D is split in halves: the first half rotates with the
    token's row (y) position, the second with its column (x) position. Within a
    half of size D/2, frequencies are ``base ** (-2k / (D/2))`` and the rotation
    pairs channel j with channel j + D/4 (rotate-half convention). Position 0
    is the identity, which is how camera/register tokens opt out.
    """

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = float(base)

    def _rotate_1d(self, x: Tensor, pos: Tensor) -> Tensor:
        # x [B, H, N, d], pos [B, N] integer positions
        d = x.shape[-1]
        inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d))
        angles = pos.to(torch.float32)[..., None] * inv_freq  # [B, N, d/2]
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, N, d]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat((-x2, x1), dim=-1)
        return x * cos + rotated * sin

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x [B, heads, N, D] (D divisible by 4); pos [B, N, 2] as (row, col)."""
        if x.shape[-1] % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {x.shape[-1]}")
        xy, xx = x.chunk(2, dim=-1)
        return torch.cat((self._rotate_1d(xy, pos[..., 0]), self._rotate_1d(xx, pos[..., 1])), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention (torch SDPA). ``q_norm``/``k_norm`` are per-head
    LayerNorms when ``qk_norm``; RoPE is applied after them when given."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True,
                 qk_norm: bool = False, rope: Optional[Rope2D] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q, k = self.rope(q, pos), self.rope(k, pos)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)); x + ls2(mlp(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, init_values: Optional[float] = None,
                 qk_norm: bool = False, rope: Optional[Rope2D] = None, norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: Tensor, pos: Optional[Tensor] = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping conv patchify: [B, 3, H, W] -> [B, (H/p)(W/p), C]."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoV2Encoder(nn.Module):
    """DINOv2 ViT with register tokens (as in ``dinov2_vitl14_reg``), used by VGGT
    as its patch embedding. Returns the final-norm patch tokens [B, P, C].

    Token layout inside: [cls, registers (R), patches]. The learned absolute
    position table covers a square ``img_size/patch`` grid plus cls; other grids
    get a bicubic (antialiased) resize of the patch part.
    """

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 num_register_tokens: int, mlp_ratio: float = 4.0, init_values: float = 1.0):
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.num_register_tokens = num_register_tokens
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # Unused at inference; present because the official checkpoint stores it.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)

    def position_table(self, gh: int, gw: int, dtype: torch.dtype) -> Tensor:
        """[1, 1 + gh*gw, C]: cls entry, then the patch grid resized to gh x gw."""
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed.to(dtype)
        table = self.pos_embed.float()
        cls, patch = table[:, :1], table[:, 1:]
        C = table.shape[-1]
        patch = patch.reshape(1, self.grid, self.grid, C).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(gh, gw), mode="bicubic", antialias=True)
        patch = patch.permute(0, 2, 3, 1).reshape(1, gh * gw, C)
        return torch.cat((cls, patch), dim=1).to(dtype)

    def forward(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] (normalised) -> patch tokens [B, (H/p)(W/p), C]."""
        B, _, H, W = images.shape
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(B, -1, -1).to(x.dtype), x), dim=1)
        x = x + self.position_table(H // self.patch_size, W // self.patch_size, x.dtype)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(B, -1, -1).to(x.dtype)
            x = torch.cat((x[:, :1], regs, x[:, 1:]), dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x[:, 1 + self.num_register_tokens:]


def grid_positions(batch: int, gh: int, gw: int, device) -> Tensor:
    """[batch, gh*gw, 2] integer (row, col) of each patch in raster order."""
    rows = torch.arange(gh, device=device)
    cols = torch.arange(gw, device=device)
    pos = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(1, gh * gw, 2)
    return pos.expand(batch, -1, -1)


def sincos_embed_1d(dim: int, pos: Tensor, omega_0: float = 100.0) -> Tensor:
    """[M] positions -> [M, dim] embedding: sin(pos * w_k) then cos(pos * w_k),
    w_k = omega_0 ** (-k / (dim/2)), k < dim/2. Computed in float64."""
    if dim % 2:
        raise ValueError(f"sin/cos embedding needs an even dimension, got {dim}")
    k = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0 ** k
    angles = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat((angles.sin(), angles.cos()), dim=1).float()


def uv_grid(gw: int, gh: int, aspect: float, device, dtype=torch.float32) -> Tensor:
    """[gh, gw, 2] (x, y) cell-centre positions on a plane of width/height ratio
    ``aspect`` whose centre-to-corner distance is 1: x spans
    +-span_x * (gw-1)/gw with span_x = aspect / sqrt(aspect^2 + 1), y likewise."""
    diag = math.sqrt(aspect ** 2 + 1.0)
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (gw - 1) / gw, span_x * (gw - 1) / gw, gw, device=device, dtype=dtype)
    ys = torch.linspace(-span_y * (gh - 1) / gh, span_y * (gh - 1) / gh, gh, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx, yy), dim=-1)
