"""Space-filling-curve codes for voxel grids: z-order (Morton) and Hilbert.

Codes match the Pointcept/Sonata reference bit for bit:

- z-order: bit ``3*i + 2`` of the code is bit ``i`` of x, ``3*i + 1`` of y,
  ``3*i`` of z (x most significant within each level).
- Hilbert: Skilling's "axes to transpose" transform of (x, y, z) with
  ``depth`` bits per axis, then the same interleave of the transposed axes.
- ``"-trans"`` variants swap x and y before encoding.
- Batched codes put the sample index above the spatial bits:
  ``batch << 3*depth | code``, so sorting keeps samples contiguous.
- ``depth`` defaults to ``int(max(grid_coord) + 1).bit_length()`` over the whole
  batch (the reference's rule), and must be <= 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
MAX_DEPTH = 16


def _spread_bits(v: torch.Tensor) -> torch.Tensor:
    """Move bit i of v (int64, < 2**21) to bit 3*i."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def interleave3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """int64 code whose bit 3i+2 / 3i+1 / 3i is bit i of a / b / c."""
    return (_spread_bits(a.long()) << 2) | (_spread_bits(b.long()) << 1) | _spread_bits(c.long())


def z_order_encode(grid_coord: torch.Tensor, depth: int = MAX_DEPTH) -> torch.Tensor:
    """Morton code int64 [N] of voxel indices int [N, 3] (each in [0, 2**depth))."""
    g = grid_coord.long()
    return interleave3(g[:, 0], g[:, 1], g[:, 2])


def hilbert_encode(grid_coord: torch.Tensor, depth: int = MAX_DEPTH) -> torch.Tensor:
    """Hilbert index int64 [N] of voxel indices int [N, 3] (each in [0, 2**depth)).

    Skilling (2004), "Programming the Hilbert curve": undo the excess work
    level by level from the top bit, Gray-encode, then interleave.
    """
    g = grid_coord.long()
    x = [g[:, 0].clone(), g[:, 1].clone(), g[:, 2].clone()]
    for level in range(depth - 1, 0, -1):
        p = (1 << level) - 1  # the bits below this level
        for i in range(3):
            on = -((x[i] >> level) & 1)  # all ones where axis i has this bit set
            if i == 0:
                x[0] ^= on & p  # bit set: invert the low bits of axis 0
                continue
            # bit set: invert the low bits of axis 0; bit clear: swap low bits of axes 0 and i
            t = (x[0] ^ x[i]) & p & ~on
            x[0] ^= (on & p) | t
            x[i] ^= t
    x[1] ^= x[0]
    x[2] ^= x[1]
    t = torch.zeros_like(x[0])
    for level in range(depth - 1, 0, -1):
        t ^= -((x[2] >> level) & 1) & ((1 << level) - 1)
    return interleave3(x[0] ^ t, x[1] ^ t, x[2] ^ t)


def encode(
    grid_coord: torch.Tensor,
    batch: torch.Tensor | None = None,
    depth: int = MAX_DEPTH,
    order: str = "z",
) -> torch.Tensor:
    """Code int64 [N] for one curve ``order``; with ``batch`` [N] the sample index is put above."""
    if order not in ORDERS:
        raise ValueError(f"unknown serialization order {order!r}; expected one of {ORDERS}")
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"serialization depth must be in [1, {MAX_DEPTH}], got {depth}")
    g = grid_coord
    if order.endswith("-trans"):
        g = g[:, [1, 0, 2]]
    code = z_order_encode(g, depth) if order.startswith("z") else hilbert_encode(g, depth)
    if batch is not None:
        code = (batch.long() << (3 * depth)) | code
    return code


def default_depth(grid_coord: torch.Tensor) -> int:
    """The reference's adaptive depth: bit length of (max voxel index + 1)."""
    return int(grid_coord.max() + 1).bit_length() if grid_coord.numel() else 1


@dataclass
class Serialization:
    """Codes of k curves over N points: ``code``, ``order`` (argsort) and ``inverse``, each int64 [k, N]."""

    depth: int
    code: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor


@torch.no_grad()
def serialize(
    grid_coord: torch.Tensor,
    batch: torch.Tensor,
    orders: tuple[str, ...] | list[str],
    depth: int | None = None,
) -> Serialization:
    """Sort points along each curve in ``orders``.

    ``order[j]`` lists point indices in curve order; ``inverse[j][i]`` is the
    rank of point i, so ``x[order[j]][inverse[j]] == x``.
    """
    if grid_coord.numel() and int(grid_coord.min()) < 0:
        raise ValueError("grid_coord must be >= 0")
    depth = default_depth(grid_coord) if depth is None else depth
    if depth > MAX_DEPTH:
        raise ValueError(
            f"grid extent needs serialization depth {depth} > {MAX_DEPTH}; use a coarser grid or crop"
        )
    num_samples = int(batch.max()) + 1 if batch.numel() else 1
    if 3 * depth + num_samples.bit_length() > 63:
        raise ValueError(f"{num_samples} samples at depth {depth} overflow a 63-bit code")
    code = torch.stack([encode(grid_coord, batch, depth, o) for o in orders])
    order = torch.argsort(code, dim=1, stable=True)
    inverse = torch.empty_like(order)
    ranks = torch.arange(code.shape[1], device=code.device).expand_as(order)
    inverse.scatter_(1, order, ranks)
    return Serialization(depth=depth, code=code, order=order, inverse=inverse)
