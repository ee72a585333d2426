"""Serialized window attention equals a naive per-window softmax loop with the reference flash windows."""

import pytest
import torch

from concerto.model import Point
from concerto.model.attention import SerializedAttention, plan_windows, windowed_attention_sdpa


def naive_windows(n: int, k: int) -> list[tuple[int, int, int]]:
    """(window start, window end, first position this window owns) for one sample of n points."""
    if n <= k:
        return [(0, n, 0)]
    out = []
    for start in range(0, n, k):
        if start + k <= n:
            out.append((start, start + k, start))
        else:  # the last window is the last k points; it owns only what no earlier window covered
            out.append((n - k, n, start))
    return out


def naive_attention(qkv: torch.Tensor, offset: list[int], k: int, scale: float) -> torch.Tensor:
    """qkv [N, 3, H, D] in serialized order -> [N, H, D], one explicit softmax per window."""
    out = torch.full((qkv.shape[0], qkv.shape[2], qkv.shape[3]), float("nan"), dtype=qkv.dtype)
    begin = 0
    for end in offset:
        n = end - begin
        for ws, we, own in naive_windows(n, k):
            q, kk, v = (qkv[begin + ws : begin + we, i] for i in range(3))  # [L, H, D]
            for h in range(qkv.shape[2]):
                logits = (q[:, h] @ kk[:, h].T) * scale
                att = torch.softmax(logits, dim=-1) @ v[:, h]
                out[begin + own : begin + we, h] = att[own - ws :]
        begin = end
    return out


@pytest.mark.parametrize(
    "sizes,k",
    [
        ([37], 16),  # longer than K, not a multiple: overlapping last window
        ([48], 16),  # exact multiple
        ([5], 16),  # shorter than K: one short window
        ([16], 16),  # exactly K
        ([37, 5, 16, 70, 3, 5], 16),  # mixed batch, two samples of the same short length
        ([1], 4),
    ],
)
def test_windowed_attention_equals_naive_loop(sizes, k):
    gen = torch.Generator().manual_seed(sum(sizes) + k)
    n = sum(sizes)
    qkv = torch.randn(n, 3, 2, 8, generator=gen, dtype=torch.float64)
    offset = torch.tensor(sizes).cumsum(0)
    plan = plan_windows(offset, k)
    got = windowed_attention_sdpa(qkv, plan, scale=0.3)
    want = naive_attention(qkv, offset.tolist(), k, scale=0.3)
    assert not torch.isnan(want).any()
    torch.testing.assert_close(got, want)


def test_plan_covers_every_point_once_and_cu_seqlens():
    offset = torch.tensor([37, 42, 58, 128])
    plan = plan_windows(offset, 16)
    assert sorted(plan.gather.tolist()) == sorted(set(plan.gather.tolist()))
    lengths = plan.cu_seqlens.diff().tolist()
    # 37 -> 3 windows of 16, 5 -> 1 of 5, 16 -> 1 of 16, 70 -> 5 of 16
    assert sorted(lengths) == sorted([16] * 3 + [5] + [16] + [16] * 5)
    assert plan.max_seqlen == 16


def make_point(sizes, channels, seed):
    gen = torch.Generator().manual_seed(seed)
    coords = [torch.unique(torch.randint(0, 12, (s * 3, 3), generator=gen), dim=0)[:s] for s in sizes]
    assert all(len(c) == s for c, s in zip(coords, sizes))
    p = Point(
        grid_coord=torch.cat(coords).int(),
        feat=torch.randn(sum(sizes), channels, generator=gen),
        offset=torch.tensor(sizes).cumsum(0),
    )
    return p.serialization(order=("hilbert", "z"))


def test_module_matches_naive_and_samples_are_independent():
    torch.manual_seed(0)
    attn = SerializedAttention(channels=16, num_heads=4, patch_size=32, order_index=0).double()
    sizes = [70, 9, 33]
    p = make_point(sizes, 16, seed=1)
    p.feat = p.feat.double()
    out = attn(p.feat, p)

    # naive: serialize, project, loop over windows, unserialize, project
    order, inverse = p.serialized_order[0], p.serialized_inverse[0]
    qkv = attn.qkv(p.feat)[order].view(-1, 3, 4, 4)
    ref = naive_attention(qkv, p.offset.tolist(), 32, scale=4**-0.5).reshape(-1, 16)[inverse]
    torch.testing.assert_close(out, attn.proj(ref))

    # each sample alone gives the same rows: samples never share a window
    start = 0
    for i, s in enumerate(sizes):
        sl = slice(start, start + s)
        alone = Point(grid_coord=p.grid_coord[sl], feat=p.feat[sl], offset=torch.tensor([s]))
        alone.serialization(order=("hilbert", "z"))
        torch.testing.assert_close(attn(alone.feat, alone), out[sl])
        start += s


def test_gradients_flow_through_overlapping_windows():
    attn = SerializedAttention(channels=4, num_heads=2, patch_size=8).double()
    p = make_point([21], 4, seed=4)
    f = p.feat.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: attn(x, p), (f,), fast_mode=True)
