"""Submanifold sparse 3D convolution (the CPE of every PTv3 block).

Math (spconv's, weight layout (out, kx, ky, kz, in)): for every active voxel p,
``out(p) = b + sum_d W[:, d + r] @ f(p + d)`` over offsets d in [-r, r]^3 whose
voxel p + d is active in the same sample; outputs exist only at active voxels.

Two backends compute the same function with the same parameters:

- ``"torch"``: kernel map by sorting int64 voxel keys and binary search, then
  gather -> one GEMM per chunk of rows (im2col over the k^3 neighbours); the
  backward is the same gather-GEMM with the flipped kernel, so it needs no
  scatter-add and stores no im2col block. CPU and CUDA.
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
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

SparseConvBackend = Literal["auto", "torch", "spconv"]


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
    that voxel is empty (a zero row is appended to the features).
    """

    num_points: int
    kernel_size: int
    neighbors: torch.Tensor


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
        return KernelMap(n, kernel_size, torch.zeros((0, len(offsets)), dtype=torch.long, device=device))
    neighbors = torch.empty((n, len(offsets)), dtype=torch.long, device=device)
    # one binary search over all offsets of a chunk of rows keeps the call count low
    step = max(1, (1 << 22) // len(offsets))
    for a in range(0, n, step):
        bb = b[a : a + step, None]
        c = g[a : a + step, None, :] + offsets[None]
        q = ((bb * ext + c[..., 0]) * ext + c[..., 1]) * ext + c[..., 2]
        pos = torch.searchsorted(sorted_keys, q.reshape(-1)).clamp_(max=n - 1).view_as(q)
        neighbors[a : a + step] = torch.where(sorted_keys[pos] == q, perm[pos], n)
    return KernelMap(n, kernel_size, neighbors)


# Elements of the gathered [rows, k^3 * C_in] block processed at once; bounds
# the working memory (64 MB in float32) whatever the point count.
IM2COL_BUDGET = 1 << 24


def _row_chunks(n: int, width: int):
    step = max(1, IM2COL_BUDGET // max(width, 1))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _gather_gemm(feat: torch.Tensor, w2: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """out[p] = concat_j feat[neighbors[p, j]] @ w2, zero rows for missing neighbours; chunked over p."""
    n, c = feat.shape
    padded = torch.cat([feat, feat.new_zeros(1, c)])
    out = feat.new_empty(n, w2.shape[1])
    for a, b in _row_chunks(n, w2.shape[0]):
        torch.mm(padded[neighbors[a:b]].reshape(b - a, -1), w2, out=out[a:b])
    return out


class _SubmanifoldConv(torch.autograd.Function):
    """Gather -> GEMM per row chunk, forward and backward.

    The neighbour relation is symmetric (q is p's neighbour at offset d iff p
    is q's at -d, same sample), so the input gradient is again a submanifold
    conv, of the output gradient with the flipped, transposed kernel: no
    scatter-add, and nothing but the inputs is stored for backward.
    """

    @staticmethod
    def forward(ctx, feat, weight, neighbors):
        cout = weight.shape[0]
        ctx.save_for_backward(feat, weight, neighbors)
        # [k^3 * C_in, C_out], rows ordered (offset, c_in)
        return _gather_gemm(feat, weight.reshape(cout, -1).t(), neighbors)

    @staticmethod
    def backward(ctx, grad_out):
        feat, weight, neighbors = ctx.saved_tensors
        n, cin = feat.shape
        cout = weight.shape[0]
        grad_out = grad_out.contiguous()
        grad_feat = grad_weight = None
        if ctx.needs_input_grad[0]:
            # offset j of q pairs with offset (k^3 - 1 - j) of p: flip the kernel, swap in/out
            w_back = weight.reshape(cout, -1, cin).flip(1).permute(1, 0, 2).reshape(-1, cin)
            grad_feat = _gather_gemm(grad_out, w_back, neighbors)
        if ctx.needs_input_grad[1]:
            padded = torch.cat([feat, feat.new_zeros(1, cin)])
            grad_w2 = feat.new_zeros(neighbors.shape[1] * cin, cout)
            for a, b in _row_chunks(n, grad_w2.shape[0]):
                grad_w2.addmm_(padded[neighbors[a:b]].reshape(b - a, -1).t(), grad_out[a:b])
            grad_weight = grad_w2.t().reshape(weight.shape)
        return grad_feat, grad_weight, None


def submanifold_conv_torch(
    feat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kmap: KernelMap
) -> torch.Tensor:
    """Submanifold conv of ``feat`` [N, Cin] with ``weight`` [Cout, k, k, k, Cin] -> [N, Cout]."""
    if feat.shape[0] != kmap.num_points:
        raise ValueError(f"sparse conv: {feat.shape[0]} feature rows for a kernel map of {kmap.num_points} voxels")
    out = _SubmanifoldConv.apply(feat, weight.to(feat.dtype), kmap.neighbors)
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
