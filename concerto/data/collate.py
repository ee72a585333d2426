"""Offset-batching of variable-size samples.

A batch of B samples with G global and L local views each becomes flat tensors:
``global_*`` concatenated view by view (sample 0 view 0, sample 0 view 1, sample 1
view 0, ...) with ``global_offset`` int64 [B*G] (cumulative end of each view),
likewise ``local_*``. The principal view of sample b is global view b*G.
Images of all samples are stacked into ``images`` float32 [I,3,h,w] (I may be 0);
``corr_row`` indexes the flat global arrays, ``corr_image`` the images and
``corr_patch`` the row-major patch inside its image, ``corr_rc`` float [K,2] its
continuous (row, col) in patch units.
"""
from __future__ import annotations

import numpy as np
import torch

GLOBAL_KEYS = ("coord", "masked_coord", "origin_coord", "feat", "mask", "index")
LOCAL_KEYS = ("coord", "origin_coord", "feat")


def collate_samples(samples: list[dict]) -> dict:
    """Samples -> one batch. Samples the dataset skipped (``{"skipped": msg}``,
    damaged shard data with ``skip_corrupt``) are left out and listed in
    ``batch["skipped"]``; a batch of only skipped samples is just that list."""
    skipped = [s["skipped"] for s in samples if "skipped" in s]
    samples = [s for s in samples if "skipped" not in s]
    if not samples:
        return {"names": [], "skipped": skipped}
    out: dict = {"skipped": skipped}
    for prefix, keys in (("global", GLOBAL_KEYS), ("local", LOCAL_KEYS)):
        for k in keys:
            out[f"{prefix}_{k}"] = torch.from_numpy(np.concatenate([s[f"{prefix}_{k}"] for s in samples]))
        counts = np.concatenate([s[f"{prefix}_count"] for s in samples])
        out[f"{prefix}_offset"] = torch.from_numpy(np.cumsum(counts))
    out["num_global"] = len(samples[0]["global_count"])
    out["num_local"] = len(samples[0]["local_count"])
    rows, image_ids, patches = [], [], []
    point_base, image_base = 0, 0
    for s in samples:
        rows.append(s["corr_row"] + point_base)
        image_ids.append(s["corr_image"] + image_base)
        patches.append(s["corr_patch"])
        point_base += int(s["global_count"].sum())
        image_base += len(s["images"])
    out["images"] = torch.from_numpy(np.concatenate([s["images"] for s in samples]))
    out["corr_row"] = torch.from_numpy(np.concatenate(rows))
    out["corr_image"] = torch.from_numpy(np.concatenate(image_ids))
    out["corr_patch"] = torch.from_numpy(np.concatenate(patches))
    out["corr_rc"] = torch.from_numpy(np.concatenate([s["corr_rc"] for s in samples]).astype(np.float32))
    out["image_count"] = torch.tensor([len(s["images"]) for s in samples], dtype=torch.int64)
    out["names"] = [s["name"] for s in samples]
    out["sample_index"] = torch.tensor([s["sample_index"] for s in samples], dtype=torch.int64)
    return out
