"""Submanifold sparse 3D convolution (the CPE of every PTv3 block).

Math (spconv's, weight layout (out, kx, ky, kz, in)): for every active voxel p,
``out(p) = b + sum_d W[:, d + r] @ f(p + d)`` over offsets d in [-r, r]^3 whose
voxel p + d is active in the same sample; outputs exist only at active voxels.

Two backends compute the same function with the same parameters:

- ``"torch"``: kernel map by sorting int64 voxel keys and binary search, then
  per kernel offset, gather the existing (out, in) pairs -> GEMM ->
  scatter-add (index_add_), with the centre offset as one dense GEMM. Only
  occupied neighbours cost arithmetic: a k^3 im2col block multiplied ~70 %
  zero rows on surface data and was 2-6x slower. The backward is the same
  with pairs reversed and transposed matrices. CPU and CUDA.
- ``"spconv"``: spconv 2.x ``SubMConv3d`` (the reference's). On CPU tensors it
  needs ``ConvAlgo.Native``, and the bias is added outside the conv because
  spconv fuses it in a CUDA-only kernel in eval mode.

``"auto"`` picks spconv when it imports and the tensors are on CUDA, the torch
backend otherwise (on CPU a base-model training step took 0.72-0.80x the time
of spconv Native in benchmarks/bench_ptv3.py, and it needs no extension).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

SparseConvBackend = Literal["auto", "torch", "spconv"]

# Neighbour queries (rows x k^3 offsets) per binary-search call when building a
# kernel map: large enough to keep the call count low, bounded to cap memory.
KERNEL_MAP_CHUNK = 1 << 22


@functools.lru_cache(maxsize=1)
def spconv_module():
    """The ``spconv.pytorch`` module, or None when spconv is not installed."""
    try:
        import spconv.pytorch as sp  # noqa: PLC0415 - optional, slow import
    except Exception:  # ImportError, or a broken CUDA runtime inside the wheel
        return None
    return sp


def spconv_available() -> bool:
    return spconv_module() is not None


def resolve_backend(backend: SparseConvBackend, device: torch.device) -> str:
    """Concrete backend name for ``backend`` on ``device``."""
    if backend == "torch":
        return "torch"
    if backend == "spconv":
        if not spconv_available():
            raise RuntimeError("sparse_conv_backend='spconv' but spconv is not installed (pip install spconv-cu120)")
        return "spconv"
    if backend == "auto":
        return "spconv" if (device.type == "cuda" and spconv_available()) else "torch"
    raise ValueError(f"sparse_conv_backend must be 'auto', 'torch' or 'spconv', got {backend!r}")


def kernel_offsets(kernel_size: int, device=None) -> torch.Tensor:
    """Offsets int64 [k^3, 3] with x slowest and z fastest (the weight's kx, ky, kz order)."""
    r = kernel_size // 2
    ax = torch.arange(-r, r + 1, device=device)
    return torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)


@dataclass
class KernelMap:
    """Neighbour table of a submanifold conv over N active voxels.

    ``neighbors`` int64 [N, k^3]: for voxel p and offset index j (x slowest),
    the row of the active voxel at p + offset_j in the same sample, or N when
    that voxel is empty. ``pairs[j]`` = (out_rows, in_rows), int64 [M_j] each:
    the same relation as a list of the existing pairs only, so the conv does
    no arithmetic on empty neighbours (on surfaces ~30 % of k^3 are occupied).
    """

    num_points: int
    kernel_size: int
    neighbors: torch.Tensor
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


@torch.no_grad()
def build_kernel_map(grid_coord: torch.Tensor, batch: torch.Tensor, kernel_size: int = 3) -> KernelMap:
    """Kernel map of voxels int [N, 3] (unique per sample) in samples ``batch`` [N]."""
    if kernel_size % 2 != 1:
        raise ValueError(f"submanifold conv needs an odd kernel size, got {kernel_size}")
    n = grid_coord.shape[0]
    device = grid_coord.device
    r = kernel_size // 2
    g = grid_coord.long() + r  # shift so neighbours stay >= 0
    ext = int(g.max()) + r + 1 if n else 1
    b = batch.long()

    def key(c: torch.Tensor) -> torch.Tensor:
        return ((b * ext + c[:, 0]) * ext + c[:, 1]) * ext + c[:, 2]

    keys = key(g)
    sorted_keys, perm = torch.sort(keys)
    if n > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        raise ValueError("sparse conv input has duplicate voxels; grid-sample the points first")
    offsets = kernel_offsets(kernel_size, device)
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return KernelMap(n, kernel_size, torch.zeros((0, len(offsets)), dtype=torch.long, device=device),
                         [(empty, empty)] * len(offsets))
    neighbors = torch.empty((n, len(offsets)), dtype=torch.long, device=device)
    # one binary search over all offsets of a chunk of rows keeps the call count low
    step = max(1, KERNEL_MAP_CHUNK // len(offsets))
    for a in range(0, n, step):
        bb = b[a : a + step, None]
        c = g[a : a + step, None, :] + offsets[None]
        q = ((bb * ext + c[..., 0]) * ext + c[..., 1]) * ext + c[..., 2]
        pos = torch.searchsorted(sorted_keys, q.reshape(-1)).clamp_(max=n - 1).view_as(q)
        neighbors[a : a + step] = torch.where(sorted_keys[pos] == q, perm[pos], n)
    pairs = []
    for j in range(len(offsets)):
        out_rows = torch.nonzero(neighbors[:, j] != n).squeeze(1)
        pairs.append((out_rows, neighbors[out_rows, j]))
    return KernelMap(n, kernel_size, neighbors, pairs)


def _per_offset(weight: torch.Tensor) -> torch.Tensor:
    """[Cout, k, k, k, Cin] -> view [k^3, Cin, Cout] (offset index x slowest).

    A strided view, not a copy: each [Cin, Cout] slice has a unit stride, which
    BLAS takes as a transposed operand with a leading dimension.
    """
    cout, cin = weight.shape[0], weight.shape[-1]
    return weight.reshape(cout, -1, cin).permute(1, 2, 0)


def _pair_conv(feat: torch.Tensor, w: torch.Tensor, pairs, transpose: bool = False) -> torch.Tensor:
    """out[o] += feat[i] @ w[j] over the pairs (o, i) of every offset j (swapped when ``transpose``).

    The centre offset pairs every voxel with itself: one dense GEMM starts the sum.
    """
    centre = len(pairs) // 2
    out = feat @ w[centre]
    for j, (o, i) in enumerate(pairs):
        if j == centre or o.numel() == 0:
            continue
        if transpose:
            o, i = i, o
        out.index_add_(0, o, feat.index_select(0, i) @ w[j])
    return out


class _SubmanifoldConv(torch.autograd.Function):
    """Gather -> GEMM -> scatter-add per kernel offset over existing pairs, forward and backward.

    The input gradient is the same sum with every pair reversed and each
    offset's matrix transposed; nothing but the inputs is stored for backward.
    """

    @staticmethod
    def forward(ctx, feat, weight, kmap):
        ctx.save_for_backward(feat, weight)
        ctx.kmap = kmap
        return _pair_conv(feat, _per_offset(weight), kmap.pairs)

    @staticmethod
    def backward(ctx, grad_out):
        feat, weight = ctx.saved_tensors
        pairs = ctx.kmap.pairs
        grad_out = grad_out.contiguous()
        grad_feat = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_feat = _pair_conv(grad_out, _per_offset(weight).transpose(1, 2), pairs, transpose=True)
        if ctx.needs_input_grad[1]:
            # written straight into the parameter's layout [Cout, k^3, Cin]
            centre = len(pairs) // 2
            gw = feat.new_zeros(weight.shape[0], len(pairs), feat.shape[1])
            torch.mm(grad_out.t(), feat, out=gw[:, centre])
            for j, (o, i) in enumerate(pairs):
                if j != centre and o.numel():
                    torch.mm(grad_out.index_select(0, o).t(), feat.index_select(0, i), out=gw[:, j])
            grad_weight = gw.view(weight.shape)
        return grad_feat, grad_weight, None


def submanifold_conv_torch(
    feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kmap: KernelMap
) -> torch.Tensor:
    """Submanifold conv of ``feat`` [N, Cin] with ``weight`` [Cout, k, k, k, Cin] -> [N, Cout]."""
    if feat.shape[0] != kmap.num_points:
        raise ValueError(f"sparse conv: {feat.shape[0]} feature rows for a kernel map of {kmap.num_points} voxels")
    out = _SubmanifoldConv.apply(feat, weight.to(feat.dtype), kmap)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return out


class SubMConv3d(nn.Module):
    """Submanifold sparse conv with spconv's parameter layout.

    ``weight`` [out, k, k, k, in], ``bias`` [out]. ``forward(feat, grid_coord,
    batch, cache=None)``: ``cache`` is a dict shared by the convs of one
    resolution (the reference's ``indice_key``) so the kernel map is built once.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        backend: SparseConvBackend = "auto",
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, kernel_size, kernel_size, kernel_size, in_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight.view(out_channels, -1), a=math.sqrt(5))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, backend={self.backend}"

    def forward(
        self,
        feat: torch.Tensor,
        grid_coord: torch.Tensor,
        batch: torch.Tensor,
        cache: dict | None = None,
    ) -> torch.Tensor:
        cache = {} if cache is None else cache
        backend = resolve_backend(self.backend, feat.device)
        if backend == "torch":
            key = ("torch_kmap", self.kernel_size)
            if key not in cache:
                cache[key] = build_kernel_map(grid_coord, batch, self.kernel_size)
            return submanifold_conv_torch(feat, self.weight, self.bias, cache[key])
        return self._forward_spconv(feat, grid_coord, batch, cache)

    def _forward_spconv(self, feat, grid_coord, batch, cache) -> torch.Tensor:
        sp = spconv_module()
        key = ("spconv_tensor", self.kernel_size)
        if key not in cache:
            indices = torch.cat([batch.view(-1, 1).int(), grid_coord.int()], 1).contiguous()
            shape = (grid_coord.max(0).values + self.kernel_size).tolist()
            cache[key] = sp.SparseConvTensor(
                feat, indices, spatial_shape=shape, batch_size=int(batch.max()) + 1 if batch.numel() else 1
            )
        x = cache[key].replace_feature(feat)
        conv = self._spconv_op(feat.device)
        # spconv keeps its own parameter; point it at ours so gradients land here
        conv.weight = self.weight
        y = conv(x)
        # reuse the indice pairs built by the first conv of this resolution
        cache[key] = y
        out = y.features
        if self.bias is not None:
            out = out + self.bias
        return out

    def _spconv_op(self, device: torch.device):
        sp = spconv_module()
        algo_name = "cpu" if device.type == "cpu" else "cuda"
        op = self.__dict__.get("_spconv_ops", {}).get(algo_name)
        if op is None:
            from spconv.core import ConvAlgo  # noqa: PLC0415

            kwargs = {"algo": ConvAlgo.Native} if device.type == "cpu" else {}
            op = sp.SubMConv3d(
                self.in_channels,
                self.out_channels,
                self.kernel_size,
                bias=False,
                indice_key=f"subm{self.kernel_size}",
                **kwargs,
            )
            # stored outside _modules so it adds no state-dict entries
            self.__dict__.setdefault("_spconv_ops", {})[algo_name] = op
        op.train(self.training)
        return op
