"""Undistorting images of COLMAP's OPENCV and OPENCV_FISHEYE camera models to
a pinhole camera, in numpy (no OpenCV dependency).

Conventions: K in OpenCV pixel convention (pixel centres at integer
coordinates). The pinhole output keeps the input's K and size: every output
pixel (u, v) is the ray K^-1 [u, v, 1], pushed through the distortion model to
the input pixel it came from, and sampled bilinearly. With the same focal
length a fisheye's pinhole view is narrower than the fisheye, so the output has
no empty border.
"""
from __future__ import annotations

import numpy as np


def distort_normalized(x: np.ndarray, y: np.ndarray, model: str, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ideal normalized image coordinates -> distorted normalized coordinates.

    OPENCV (k1, k2, p1, p2): radial-tangential (Brown-Conrady).
    OPENCV_FISHEYE (k1, k2, k3, k4): equidistant, theta_d = theta (1 + k1 t^2 + k2 t^4 + k3 t^6 + k4 t^8)."""
    p = np.asarray(params, dtype=np.float64)
    if model == "OPENCV":
        k1, k2, p1, p2 = p[:4]
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return xd, yd
    if model == "OPENCV_FISHEYE":
        k1, k2, k3, k4 = p[:4]
        r = np.sqrt(x * x + y * y)
        theta = np.arctan(r)
        t2 = theta * theta
        theta_d = theta * (1 + k1 * t2 + k2 * t2 ** 2 + k3 * t2 ** 3 + k4 * t2 ** 4)
        scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
        return x * scale, y * scale
    if model in ("PINHOLE", "SIMPLE_PINHOLE"):
        return x, y
    raise ValueError(f"unsupported camera model {model}")


def undistort_image(img: np.ndarray, K: np.ndarray, model: str, params: np.ndarray) -> np.ndarray:
    """uint8 [H,W,C] image of a distorted camera -> the pinhole image with the
    same K and size (bilinear sampling; samples outside the input clamp to the
    border)."""
    from scipy.ndimage import map_coordinates

    H, W = img.shape[:2]
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    xd, yd = distort_normalized(x, y, model, params)
    us = K[0, 0] * xd + K[0, 2]
    vs = K[1, 1] * yd + K[1, 2]
    chans = img[..., None] if img.ndim == 2 else img
    out = np.stack([map_coordinates(chans[..., c].astype(np.float32), [vs, us], order=1, mode="nearest")
                    for c in range(chans.shape[-1])], axis=-1)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out[..., 0] if img.ndim == 2 else out
