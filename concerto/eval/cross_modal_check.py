"""Does the cross-modal path carry a 2D teacher's semantics into the point encoder?

The measure (``patch_agreement``): on images the run never saw, every stored
correspondence maps a point to the teacher's patch (``concerto.patches``, the
training crop); the run's point features at the cross-modal level
(``cross_modal.upcast_level``, full resolution through ``concerto.inference.Encoder``)
are averaged per patch, mapped by the run's own patch predictor and compared with
the frozen teacher's patch feature. ``centred_cosine`` subtracts the mean teacher
feature of those patches from both sides first, so a predictor that only learned
the average feature (what shuffled correspondences allow) scores about 0; the raw
``cosine`` is reported beside it.

``short_pretrain`` runs the ordinary training state and step (``concerto.train``)
for a few steps; ``zero_weight`` keeps the image encoder and predictor but sets
``cross_modal.weight = 0`` for the steps (so the predictor gets no gradient).
``ShuffledCorrespondences`` wraps a store so every stored correspondence points at
a wrong point (one fixed random permutation of each scene's point indices): the
same counts, pixels and images, no geometry.
"""
from __future__ import annotations

import copy
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from concerto.eval.teacher2d import sample_patch_features


class ShuffledCorrespondences:
    """A store (``__len__``, ``__getitem__``, ``samples_by_shard``) whose ``corr_point`` indices
    go through a fixed random permutation of the scene's points (seeded by ``seed`` and the scene key)."""

    def __init__(self, store, seed: int = 0):
        self.store, self.seed = store, int(seed)
        self.version = getattr(store, "version", None)
        self.url = f"shuffled-correspondences({getattr(store, 'url', type(store).__name__)})"

    def __len__(self) -> int:
        return len(self.store)

    def samples_by_shard(self):
        return self.store.samples_by_shard()

    def __getitem__(self, i: int) -> dict:
        raw = dict(self.store[i])
        n = len(raw["coord"])
        perm = np.random.default_rng([self.seed, zlib.crc32(str(raw["key"]).encode())]).permutation(n)
        raw["corr_point"] = [perm[np.asarray(p, np.int64)] for p in raw["corr_point"]]
        return raw


@torch.no_grad()
def patch_agreement(backbone: torch.nn.Module, predictor: torch.nn.Module, image_encoder, store, level: int,
                    max_groups: Optional[int] = None) -> dict:
    """Agreement of ``predictor(mean point feature per patch)`` with ``image_encoder``'s patch features
    over the images of ``store`` (see module doc): {"cosine", "centred_cosine", "patches"}."""
    from concerto.inference import Encoder

    enc = Encoder(copy.deepcopy(backbone), levels=level)
    predictor = copy.deepcopy(predictor).eval()
    grid = image_encoder.grid
    preds, targets = [], []
    n_groups = len(store) if max_groups is None else min(len(store), max_groups)
    for i in range(n_groups):
        raw = store[i]
        if not raw["rgb"]:
            continue
        feat = torch.from_numpy(enc.embed(raw["coord"], raw["color"], raw["normal"]))
        teacher, pairs = sample_patch_features(image_encoder, raw)
        for v, (pts, patch) in enumerate(pairs):
            if len(pts) == 0:
                continue
            pts, patch = torch.from_numpy(pts), torch.from_numpy(patch)
            sums = feat.new_zeros((grid.num_patches, feat.shape[1])).index_add_(0, patch, feat[pts])
            count = torch.bincount(patch, minlength=grid.num_patches)
            used = count > 0
            preds.append(predictor(sums[used] / count[used, None].float()))
            targets.append(teacher[v][used])
    p, t = torch.cat(preds), torch.cat(targets)
    mu = t.mean(0, keepdim=True)
    cos = torch.nn.functional.cosine_similarity
    return {"cosine": float(cos(p, t, dim=1).mean()), "centred_cosine": float(cos(p - mu, t - mu, dim=1).mean()),
            "patches": int(len(t))}


def short_pretrain(cfg, data: Any, output, zero_weight: bool = False, before: Optional[dict] = None,
                   eval_store=None, progress: bool = False) -> dict:
    """Train ``cfg.run.steps`` steps on ``data`` with the ordinary training state and step; returns
    {"before", "after"} agreement on ``eval_store`` (see ``patch_agreement``) and the last losses."""
    from concerto.train.state import build_state, resolve_config, start_run
    from concerto.train.step import train_step

    start = start_run(cfg, data, Path(output), resume=False)
    cfg = resolve_config(cfg, start.store_info)
    s = build_state(cfg, data, start)
    level = cfg.cross_modal.upcast_level

    def measure():
        return patch_agreement(s.student.backbone, s.student.patch_predictor, s.image_encoder, eval_store, level)

    out = {"before": measure() if eval_store is not None else None}
    if zero_weight:
        s.cfg.cross_modal.weight = 0.0  # image encoder and predictor exist; the term adds nothing
    batches = iter(s.loader)
    s.student.train()
    steps = range(cfg.run.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="pretrain", unit="step", dynamic_ncols=True)
    last = {}
    for _ in steps:
        last, _ = train_step(s, batches)
    out["after"] = measure() if eval_store is not None else None
    out["last"] = {k: float(v) for k, v in last.items()}
    return out
