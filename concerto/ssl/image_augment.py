"""Image augmentation of the released recipe (Pointcept ``ImgChromaticJitter`` then
``ImgGaussianBlur``), applied to all images of one sample at once, before the
encoder's normalisation. Drawing and applying are split so a recorded draw can be
replayed (golden tests).

- with probability ``shift_p``: one shift per channel U(0, shift_std) (positive
  only, as released) added to every image in [0, 1], then clipped to [0, 1];
- with probability ``blur_p``: a Gaussian blur, one sigma U(*blur_sigma) for all
  images, separable kernel of ``blur_kernel`` taps (the normalised Gaussian pdf at
  integer offsets), edges mirrored (torch ``reflect`` padding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.ndimage import correlate1d


@dataclass(frozen=True)
class ImageAugment:
    """Parameters (released defaults); a probability of 0 disables that step."""

    shift_p: float = 0.95
    shift_std: float = 0.05
    blur_p: float = 0.5
    blur_kernel: int = 9
    blur_sigma: tuple = (0.1, 2.0)


@dataclass
class ImageDraw:
    """One draw: ``shift`` [3] or None; ``sigma`` or None (no blur)."""

    shift: Optional[np.ndarray]
    sigma: Optional[float]


def draw_image_augment(aug: ImageAugment, rng: np.random.Generator) -> ImageDraw:
    shift = rng.random(3) * aug.shift_std if rng.random() < aug.shift_p else None
    sigma = float(rng.uniform(*aug.blur_sigma)) if rng.random() < aug.blur_p else None
    return ImageDraw(shift, sigma)


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """float32 [size]: exp(-x^2 / 2 sigma^2) at x = -(size-1)/2 .. (size-1)/2, summing to 1."""
    x = np.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=np.float32)
    k = np.exp(-0.5 * (x / np.float32(sigma)) ** 2)
    return (k / k.sum()).astype(np.float32)


def apply_image_augment(images: np.ndarray, draw: ImageDraw, blur_kernel: int = 9) -> np.ndarray:
    """images float32 [V,3,H,W] in [0,1] -> augmented copy (same shape and range)."""
    out = np.asarray(images, np.float32).copy()
    if draw.shift is not None:
        out = np.clip(out + draw.shift.astype(np.float32)[None, :, None, None], 0, 1)
    if draw.sigma is not None:
        k = gaussian_kernel(blur_kernel, draw.sigma)
        out = correlate1d(out, k, axis=2, mode="mirror")
        out = correlate1d(out, k, axis=3, mode="mirror")
    return out.astype(np.float32)


def augment_images(images: np.ndarray, aug: Optional[ImageAugment], rng: np.random.Generator) -> np.ndarray:
    """Released image augmentation of one sample's images [V,3,H,W] in [0,1]."""
    if aug is None or len(images) == 0:
        return images
    return apply_image_augment(images, draw_image_augment(aug, rng), aug.blur_kernel)
