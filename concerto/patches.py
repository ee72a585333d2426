"""Pixel -> ViT patch mapping, computed at load time from stored pixels.

The image encoder sees each stored image centre-cropped and resized to
``image_size``. The crop (``crop_box``) is, by default, the largest centred one
whose sides are a multiple of the patch grid (``crop="grid_multiple"``: 444 x 444
from 640 x 480 for a 37 x 37 grid, as the released Concerto data code), resized
bilinearly; ``crop="largest"`` takes the largest centred crop of the grid's
aspect instead. The patch
grid is ``image_size / patch_size`` per side (37 x 37 for 518/14, 32 x 32 for
512/16). ``prepare_image`` does that crop and resize, and ``pixel_to_patch``
maps a stored pixel (u = col, v = row, centres at integer coordinates) to the
row-major index of the patch its centre lands in, so pixels and image content
stay aligned. Both use the same geometry (``crop_box``), and resizing maps
continuous coordinates as x_out = (x_src + 0.5) * out / in - 0.5 (PIL and
torch's align_corners=False do the same).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PatchGrid:
    """An encoder's input geometry: ``image_size`` (int = square, or (h, w)) in
    pixels, divided into square patches of ``patch_size`` pixels."""

    image_size: Union[int, tuple[int, int]] = 518
    patch_size: int = 14

    def __post_init__(self):
        h, w = self.image_hw
        if self.patch_size < 1 or h < 1 or w < 1:
            raise ValueError(f"PatchGrid: sizes must be positive, got image_size={self.image_size}, patch_size={self.patch_size}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"PatchGrid: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def image_hw(self) -> tuple[int, int]:
        if isinstance(self.image_size, (tuple, list)):
            return int(self.image_size[0]), int(self.image_size[1])
        return int(self.image_size), int(self.image_size)

    @property
    def grid_hw(self) -> tuple[int, int]:
        h, w = self.image_hw
        return h // self.patch_size, w // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_hw
        return gh * gw


CROPS = ("grid_multiple", "largest")


def crop_box(src_hw: tuple[int, int], grid: PatchGrid, crop: str = "grid_multiple") -> tuple[int, int, int, int]:
    """Centre crop of a src_hw = (H, W) image (see module doc for ``crop``).

    Returns (x0, y0, w, h) in source pixels: columns x0 .. x0+w-1 and rows
    y0 .. y0+h-1 are kept.
    """
    H, W = int(src_hw[0]), int(src_hw[1])
    if crop == "grid_multiple":
        gh, gw = grid.grid_hw
        k = max(min(W // gw, H // gh), 1)
        w, h = k * gw, k * gh
        return int((W - w) / 2), int((H - h) / 2), w, h
    if crop != "largest":
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    out_h, out_w = grid.image_hw
    if W * out_h > H * out_w:  # source wider than the grid: trim columns
        h, w = H, max(1, int(round(H * out_w / out_h)))
    else:  # taller (or equal): trim rows
        h, w = max(1, int(round(W * out_h / out_w))), W
    return (W - w) // 2, (H - h) // 2, w, h


def pixel_to_patch(pixel: np.ndarray, src_hw: tuple[int, int], grid: PatchGrid,
                   crop: str = "grid_multiple") -> np.ndarray:
    """Patch of each stored pixel.

    pixel [M,2] integer (u = col, v = row) in an image of size src_hw = (H, W).
    Returns int64 [M]: row-major patch index in grid.grid_hw, or -1 for pixels
    the centre crop removes.
    """
    pixel = np.asarray(pixel).reshape(-1, 2).astype(np.int64)
    x0, y0, w, h = crop_box(src_hw, grid, crop)
    out_h, out_w = grid.image_hw
    gh, gw = grid.grid_hw
    p = grid.patch_size
    u = pixel[:, 0] - x0
    v = pixel[:, 1] - y0
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    # The pixel centre u + 0.5 lands at (u + 0.5) * out_w / w in output edge
    # coordinates; its patch column is that over p, floored. Integer arithmetic
    # keeps the floor exact: floor((2u + 1) * out_w / (2 w p)).
    pcol = ((2 * u + 1) * out_w) // (2 * w * p)
    prow = ((2 * v + 1) * out_h) // (2 * h * p)
    out = prow * gw + pcol
    out[~inside] = -1
    return out


def pixel_to_patch_coords(pixel: np.ndarray, src_hw: tuple[int, int], grid: PatchGrid,
                          crop: str = "grid_multiple") -> np.ndarray:
    """Continuous patch coordinates of stored pixels, as the released data code
    computes them: float32 [M,2] (row, col) = (pixel - crop corner) * out / crop /
    patch_size (no half-pixel shift), -1 for pixels the crop removes. Truncating
    gives ``pixel_to_patch``'s patch for integer pixels; the released pooling
    averages these before truncating (concerto.ssl.losses.pool_patches_coarse)."""
    pixel = np.asarray(pixel).reshape(-1, 2)
    x0, y0, w, h = crop_box(src_hw, grid, crop)
    out_h, out_w = grid.image_hw
    u = pixel[:, 0].astype(np.float32) - np.float32(x0)
    v = pixel[:, 1].astype(np.float32) - np.float32(y0)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    row = v * np.float32(out_h) / np.float32(h) / np.float32(grid.patch_size)
    col = u * np.float32(out_w) / np.float32(w) / np.float32(grid.patch_size)
    out = np.stack([row, col], 1).astype(np.float32)
    out[~inside] = -1
    return out


def prepare_image(rgb: np.ndarray, grid: PatchGrid, resample: str = "bilinear",
                  crop: str = "grid_multiple") -> np.ndarray:
    """Centre-crop ``rgb`` uint8 [H,W,3] (see ``crop_box``) and resize it to
    grid.image_hw. Returns uint8 [h, w, 3]. ``resample``: "bilinear" (the released
    data code), "bicubic" (DINOv2-style preprocessing) or "nearest"."""
    from PIL import Image

    modes = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
    if resample not in modes:
        raise ValueError(f"prepare_image: resample must be one of {sorted(modes)}, got {resample!r}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"prepare_image: expected uint8 [H,W,3], got {rgb.dtype} {list(rgb.shape)}")
    x0, y0, w, h = crop_box(rgb.shape[:2], grid, crop)
    out_h, out_w = grid.image_hw
    # crop first, then resize (as released): resizing with ``box`` would let the filter
    # read pixels outside the crop at its edges
    img = Image.fromarray(rgb).crop((x0, y0, x0 + w, y0 + h)).resize((out_w, out_h), modes[resample])
    return np.asarray(img)


def normalize_image(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 [h,w,3] (from ``prepare_image``) -> float32 torch tensor [3,h,w],
    (x / 255 - mean) / std per channel (ImageNet statistics by default, as
    DINOv2 expects)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s
