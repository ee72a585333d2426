"""Turn one stored segment into a training sample: views plus encoder-ready images.

The principal (first global) view's points are tied to image patches here, in the
worker: every stored correspondence (point index, pixel) whose point survives in
the principal view and whose pixel survives the encoder's centre crop becomes a
triple (row in the principal view, image, row-major patch).
Images with no surviving pair are dropped (the encoder would compute them for
nothing).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from concerto.config import MaskConfig, ViewConfig
from concerto.ssl.masking import MaskShape
from concerto.ssl.views import make_views
from pipelines.patches import PatchGrid, normalize_image, pixel_to_patch, prepare_image


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

    def mask_at(self, step: int) -> MaskShape:
        """The cube-mask size / ratio / jitter of optimiser step ``step``."""
        return MaskShape.at(self.mask, step, self.total_steps)


class SampleError(ValueError):
    """A stored segment that cannot become a sample; names the segment and field."""


def _check(raw: dict, name: str) -> None:
    coord = np.asarray(raw["coord"])
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise SampleError(f"segment '{name}': field 'coord': expected [N,3] with N > 0, got {list(coord.shape)}")
    if not np.isfinite(coord).all():
        raise SampleError(f"segment '{name}': field 'coord': non-finite values")
    for field in ("color", "normal"):
        if np.asarray(raw[field]).shape != coord.shape:
            raise SampleError(f"segment '{name}': field '{field}': shape {list(np.shape(raw[field]))} != coord {list(coord.shape)}")


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
            raise SampleError(f"segment '{name}': field 'corr_point': {len(corr_point)} lists for {len(rgbs)} images")
        seen = np.zeros(n, bool)
        for v, pts in enumerate(corr_point):
            pts = np.asarray(pts, np.int64)
            if len(pts) and (pts.min() < 0 or pts.max() >= n):
                raise SampleError(f"segment '{name}': field 'corr_point[{v}]': index out of range [0, {n})")
            seen[pts] = True
    out = make_views(coord, np.asarray(raw["color"]), np.asarray(raw["normal"], np.float32),
                     spec.views, spec.mask_at(step), rng, has_correspondence=seen)
    out["name"] = name
    images, rows, image_ids, patches = [], [], [], []
    if rgbs:
        principal = out["global_index"][: out["global_count"][0]]
        row_of = np.full(n, -1, np.int64)
        row_of[principal] = np.arange(len(principal))
        for v, rgb in enumerate(rgbs):
            rgb = np.asarray(rgb)
            row = row_of[np.asarray(corr_point[v], np.int64)]
            patch = pixel_to_patch(np.asarray(corr_pixel[v]), rgb.shape[:2], spec.grid)
            ok = (row >= 0) & (patch >= 0)
            if not ok.any():
                continue
            rows.append(row[ok])
            image_ids.append(np.full(int(ok.sum()), len(images), np.int64))
            patches.append(patch[ok])
            images.append(normalize_image(np.array(prepare_image(rgb, spec.grid)), spec.image_mean, spec.image_std).numpy())
    out["images"] = np.stack(images) if images else np.zeros((0, 3) + spec.grid.image_hw, np.float32)
    out["corr_row"] = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    out["corr_image"] = np.concatenate(image_ids) if image_ids else np.zeros(0, np.int64)
    out["corr_patch"] = np.concatenate(patches) if patches else np.zeros(0, np.int64)
    return out
