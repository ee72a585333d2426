"""Serialized patch attention (PTv3), with the reference flash path's windowing everywhere.

Windows, per sample, over its points in serialized order (n points, patch K):
- n <= K: one window of all n points;
- n > K: windows [0, K), [K, 2K), ...; if K does not divide n the last window
  is the last K points, overlapping the one before, and points in the overlap
  keep the output of their earlier window.
Samples never share a window. Attention is plain softmax(q k^T * scale) v
per head inside each window.

Backends: torch ``scaled_dot_product_attention`` over equal-length windows
(all full windows together, shorter samples grouped by length), or flash-attn's
varlen kernel when it imports and the tensors are on CUDA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionBackend = Literal["auto", "sdpa", "flash"]


@functools.lru_cache(maxsize=1)
def flash_attn_module():
    """The ``flash_attn`` module, or None when it is not installed."""
    try:
        import flash_attn  # noqa: PLC0415 - optional GPU extension
    except Exception:
        return None
    return flash_attn


@dataclass
class WindowPlan:
    """How N serialized points are cut into attention windows.

    ``groups``: list of index tensors int64 [W_g, L_g] (positions in the
    serialized sequence), one per distinct window length L_g.
    ``gather``: int64 [N]; for serialized position i, the flat position of its
    output in ``cat([g.flatten() for g in groups])``.
    ``cu_seqlens`` int32 [W+1] and ``max_seqlen``: the same windows for a
    varlen kernel, over the flattened group indices.
    """

    groups: list[torch.Tensor]
    gather: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


@torch.no_grad()
def plan_windows(offset: torch.Tensor, patch_size: int) -> WindowPlan:
    """Window plan for samples ending at ``offset`` [B] (serialized order, samples contiguous)."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    device = offset.device
    k = patch_size
    ends = offset.tolist()
    starts = [0] + ends[:-1]
    full_starts: list[torch.Tensor] = []  # window starts of length-K windows
    short: dict[int, list[int]] = {}  # length -> sample starts, samples with n < K
    for s, e in zip(starts, ends):
        n = e - s
        if n == 0:
            continue
        if n < k:
            short.setdefault(n, []).append(s)
            continue
        w = -(-n // k)
        st = s + torch.arange(w, dtype=torch.long) * k
        st[-1] = e - k
        full_starts.append(st)

    groups, owners = [], []
    if full_starts:
        st = torch.cat(full_starts)
        idx = st[:, None] + torch.arange(k)[None, :]
        # a position is owned by the first window containing it: in an overlapping last
        # window, the slots before the previous window's end belong to that window
        prev_end = torch.cat([st.new_full((1,), -1), st[:-1] + k])
        owned = idx >= prev_end[:, None]
        groups.append(idx)
        owners.append(owned)
    for n, ss in sorted(short.items()):
        idx = torch.tensor(ss, dtype=torch.long)[:, None] + torch.arange(n)[None, :]
        groups.append(idx)
        owners.append(torch.ones_like(idx, dtype=torch.bool))

    n_total = ends[-1] if ends else 0
    flat_idx = torch.cat([g.flatten() for g in groups]) if groups else torch.zeros(0, dtype=torch.long)
    flat_own = torch.cat([o.flatten() for o in owners]) if owners else torch.zeros(0, dtype=torch.bool)
    gather = torch.full((n_total,), -1, dtype=torch.long)
    gather[flat_idx[flat_own]] = torch.nonzero(flat_own).squeeze(1)
    assert n_total == 0 or int(gather.min()) >= 0, "window plan left a point uncovered"
    lengths = [g.shape[1] for g in groups for _ in range(g.shape[0])]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    if lengths:
        cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return WindowPlan(
        groups=[g.to(device) for g in groups],
        gather=gather.to(device),
        cu_seqlens=cu.to(device),
        max_seqlen=max(lengths) if lengths else 0,
    )


def _flat_index(plan: WindowPlan) -> torch.Tensor:
    """Serialized positions of every window slot, windows one after another (int64 [T], T >= N)."""
    if not plan.groups:
        return torch.zeros(0, dtype=torch.long, device=plan.gather.device)
    return torch.cat([g.flatten() for g in plan.groups])


def attend_windows(qkv: torch.Tensor, plan: WindowPlan, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """qkv [T, 3, H, D] already laid out window after window (``_flat_index`` order) -> [T, H, D].

    One SDPA call per distinct window length, on strided views: no copy in or out
    (the CPU kernel writes [W, L, H, D] memory, so the transpose back is free).
    """
    outs, start = [], 0
    heads, dim = qkv.shape[2], qkv.shape[3]
    for idx in plan.groups:
        w, length = idx.shape
        x = qkv[start : start + w * length].view(w, length, 3, heads, dim)
        start += w * length
        q, k, v = x.permute(2, 0, 3, 1, 4).unbind(0)  # each [W, H, L, D]
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
        outs.append(o.transpose(1, 2).reshape(w * length, heads, dim))
    if not outs:
        return qkv.new_zeros(0, heads, dim)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def windowed_attention_sdpa(
    qkv: torch.Tensor, plan: WindowPlan, scale: float, dropout_p: float = 0.0
) -> torch.Tensor:
    """qkv [N, 3, H, D] in serialized order -> attention output [N, H, D]."""
    return attend_windows(qkv[_flat_index(plan)], plan, scale, dropout_p)[plan.gather]


def attend_windows_flash(qkv: torch.Tensor, plan: WindowPlan, scale: float, dropout_p: float = 0.0) -> torch.Tensor:
    """``attend_windows`` through flash-attn's varlen kernel (CUDA, fp16/bf16 inside)."""
    fa = flash_attn_module()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    o = fa.flash_attn_varlen_qkvpacked_func(
        qkv.to(dtype), plan.cu_seqlens, plan.max_seqlen, dropout_p=dropout_p, softmax_scale=scale
    )
    return o.to(qkv.dtype)


def resolve_attention_backend(backend: AttentionBackend, device: torch.device) -> str:
    if backend == "sdpa":
        return "sdpa"
    if backend == "flash":
        if flash_attn_module() is None or device.type != "cuda":
            raise RuntimeError("attention_backend='flash' needs flash_attn installed and CUDA tensors")
        return "flash"
    if backend == "auto":
        return "flash" if (device.type == "cuda" and flash_attn_module() is not None) else "sdpa"
    raise ValueError(f"attention_backend must be 'auto', 'sdpa' or 'flash', got {backend!r}")


class SerializedAttention(nn.Module):
    """Multi-head attention inside serialized windows of ``patch_size`` points.

    Parameters ``qkv`` (Linear C -> 3C) and ``proj`` (Linear C -> C), as in the
    reference. ``forward(feat, point)`` attends over ``feat`` [N, C] along curve
    ``order_index`` of ``point.serialized_order/inverse`` and returns the new
    features [N, C] in the input point order.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        patch_size: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        order_index: int = 0,
        backend: AttentionBackend = "auto",
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.channels = channels
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.scale = qk_scale or (channels // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.order_index = order_index
        self.backend = backend
        self.qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        self.proj_drop = nn.Dropout(proj_drop)

    def window_plan(self, point) -> WindowPlan:
        cache = point.setdefault("attention_plans", {})
        if self.patch_size not in cache:
            cache[self.patch_size] = plan_windows(point["offset"], self.patch_size)
        return cache[self.patch_size]

    def window_rows(self, point) -> tuple[WindowPlan, torch.Tensor, torch.Tensor]:
        """(plan, rows, back): ``feat[rows]`` lays the input points out window after
        window along this block's curve; ``windowed[back]`` returns to input order.
        Composed once per (patch size, curve) and shared by the blocks using them,
        so each block gathers once in and once out."""
        cache = point.setdefault("attention_rows", {})
        key = (self.patch_size, self.order_index)
        if key not in cache:
            plan = self.window_plan(point)
            order = point["serialized_order"][self.order_index]
            inverse = point["serialized_inverse"][self.order_index]
            cache[key] = (plan, order[_flat_index(plan)], plan.gather[inverse])
        return cache[key]

    def forward(self, feat: torch.Tensor, point) -> torch.Tensor:
        """``feat`` [N, C] in ``point``'s order -> [N, C]."""
        h, c = self.num_heads, self.channels
        plan, rows, back = self.window_rows(point)
        # gather the C-wide input rather than the 3C-wide qkv; rows repeated by an
        # overlapping last window cost a few extra qkv rows
        qkv = self.qkv(feat.index_select(0, rows)).view(-1, 3, h, c // h)
        dropout_p = self.attn_drop if self.training else 0.0
        backend = resolve_attention_backend(self.backend, qkv.device)
        if backend == "flash":
            out = attend_windows_flash(qkv, plan, self.scale, dropout_p)
        else:
            out = attend_windows(qkv, plan, self.scale, dropout_p)
        out = out.reshape(-1, c).index_select(0, back)
        return self.proj_drop(self.proj(out))
