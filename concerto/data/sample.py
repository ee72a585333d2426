"""Turn one stored image group into a training sample: views plus encoder-ready images.

The principal (first global) view's points are tied to image patches here, in the
worker: every stored correspondence (point index, pixel) whose point survives in
the principal view and whose pixel survives the encoder's centre crop becomes a
triple (row in the principal view, image, row-major patch), with the continuous
patch coordinates beside it (one pixel per point and image: the last in (row,
col) order when a point has several, as the released data code keeps).
Images with no surviving pair are dropped (the encoder would compute them for
nothing). The principal view centres on the points every image sees (released).
Images are augmented together (concerto.ssl.image_augment) before normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from concerto.config import MaskConfig, ViewConfig
from concerto.ssl.image_augment import ImageAugment, augment_images
from concerto.ssl.masking import MaskShape
from concerto.ssl.views import make_views
from concerto.patches import PatchGrid, pixel_to_patch, pixel_to_patch_coords, prepare_image


@dataclass
class SampleSpec:
    """Everything a worker needs to build samples (picklable): the run's view and
    mask settings (``PretrainConfig.views`` / ``.mask``, not copies), the image
    encoder's patch grid and normalisation, and the step count the mask schedule spans."""

    views: ViewConfig
    mask: MaskConfig
    grid: PatchGrid
    image_mean: tuple = (0.485, 0.456, 0.406)
    image_std: tuple = (0.229, 0.224, 0.225)
    total_steps: int = 1
    with_images: bool = True
    image_augment: Optional[ImageAugment] = ImageAugment()
    image_crop: str = "grid_multiple"  # see concerto.patches.crop_box
    image_resample: str = "bilinear"

    def mask_at(self, step: int) -> MaskShape:
        """The cube-mask size / ratio / jitter of optimiser step ``step``."""
        return MaskShape.at(self.mask, step, self.total_steps)


class SampleError(ValueError):
    """A stored image group that cannot become a sample; names the sample and field."""


def _check(raw: dict, name: str) -> None:
    coord = np.asarray(raw["coord"])
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise SampleError(f"sample '{name}': field 'coord': expected [N,3] with N > 0, got {list(coord.shape)}")
    if not np.isfinite(coord).all():
        raise SampleError(f"sample '{name}': field 'coord': non-finite values")
    for field in ("color", "normal"):
        if np.asarray(raw[field]).shape != coord.shape:
            raise SampleError(f"sample '{name}': field '{field}': shape {list(np.shape(raw[field]))} != coord {list(coord.shape)}")


def build_sample(raw: dict, spec: SampleSpec, step: int, rng: np.random.Generator) -> dict:
    """raw: a store item (see pipelines.store); returns numpy views plus
    ``images`` float32 [V,3,h,w] and correspondences of the principal view:
    ``corr_row`` int64 [K] (row in the principal view), ``corr_image`` int64 [K]
    (index into images), ``corr_patch`` int64 [K] (row-major patch in the grid)."""
    name = str(raw.get("key", raw.get("scene_id", "?")))
    _check(raw, name)
    coord = np.asarray(raw["coord"], np.float32)
    n = len(coord)
    rgbs = list(raw.get("rgb") or []) if spec.with_images else []
    corr_point = list(raw.get("corr_point") or [])
    corr_pixel = list(raw.get("corr_pixel") or [])
    seen = None
    if rgbs:
        if len(corr_point) != len(rgbs) or len(corr_pixel) != len(rgbs):
            raise SampleError(f"sample '{name}': field 'corr_point': {len(corr_point)} lists for {len(rgbs)} images")
        seen_by = np.zeros(n, np.int64)
        for v, pts in enumerate(corr_point):
            pts = np.asarray(pts, np.int64)
            if len(pts) and (pts.min() < 0 or pts.max() >= n):
                raise SampleError(f"sample '{name}': field 'corr_point[{v}]': index out of range [0, {n})")
            inside = pixel_to_patch(np.asarray(corr_pixel[v]), np.asarray(rgbs[v]).shape[:2], spec.grid,
                                    spec.image_crop) >= 0
            seen_by[np.unique(pts[inside])] += 1
        seen = seen_by == len(rgbs)  # released: points seen by every image
    out = make_views(coord, np.asarray(raw["color"]), np.asarray(raw["normal"], np.float32),
                     spec.views, spec.mask_at(step), rng, has_correspondence=seen)
    out["name"] = name
    images, rows, image_ids, patches, coords = [], [], [], [], []
    if rgbs:
        principal = out["global_index"][: out["global_count"][0]]
        row_of = np.full(n, -1, np.int64)
        row_of[principal] = np.arange(len(principal))
        for v, rgb in enumerate(rgbs):
            rgb = np.asarray(rgb)
            row = row_of[np.asarray(corr_point[v], np.int64)]
            pixel = np.asarray(corr_pixel[v]).reshape(-1, 2)
            patch = pixel_to_patch(pixel, rgb.shape[:2], spec.grid, spec.image_crop)
            rc = pixel_to_patch_coords(pixel, rgb.shape[:2], spec.grid, spec.image_crop)
            ok = (row >= 0) & (patch >= 0)
            if not ok.any():
                continue
            row, patch, rc = row[ok], patch[ok], rc[ok]
            order = np.lexsort((rc[:, 1], rc[:, 0], row))
            last = np.r_[row[order][1:] != row[order][:-1], True]  # one pixel per point
            keep = order[last]
            rows.append(row[keep])
            image_ids.append(np.full(len(keep), len(images), np.int64))
            patches.append(patch[keep])
            coords.append(rc[keep])
            images.append(prepare_image(rgb, spec.grid, spec.image_resample, spec.image_crop))
    if images:
        stack = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        stack = augment_images(stack, spec.image_augment, rng)
        mean = np.asarray(spec.image_mean, np.float32)[None, :, None, None]
        std = np.asarray(spec.image_std, np.float32)[None, :, None, None]
        out["images"] = ((stack - mean) / std).astype(np.float32)
    else:
        out["images"] = np.zeros((0, 3) + spec.grid.image_hw, np.float32)
    out["corr_rc"] = np.concatenate(coords) if coords else np.zeros((0, 2), np.float32)
    out["corr_row"] = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    out["corr_image"] = np.concatenate(image_ids) if image_ids else np.zeros(0, np.int64)
    out["corr_patch"] = np.concatenate(patches) if patches else np.zeros(0, np.int64)
    return out
