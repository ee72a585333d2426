"""Data-efficient protocols: a fraction of the training scenes, N labelled points per scene.

As in the papers' "limited scenes" (1 / 5 / 10 / 20 % of the training scenes)
and "limited annotations" (20 / 50 / 100 / 200 labelled points per scene)
settings. Both selections are pure functions of (scene keys / labels, seed):
the same seed gives the same selection whatever the input order, on every
machine. A selection is recorded as JSON (``Selection.to_dict``) next to the
results so that a run can be repeated or compared on exactly the same labels.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

IGNORE_INDEX = -1


def _rng(seed: int, *parts: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and strings (stable across processes, unlike hash())."""
    digest = hashlib.sha256("|".join([str(seed), *parts]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def select_scenes(keys: Sequence[str], fraction: float, seed: int) -> list[str]:
    """Sorted ``max(1, round(fraction * n))`` keys of ``keys`` drawn by a seeded permutation of the sorted keys."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"scene fraction must be in (0, 1], got {fraction}")
    keys = sorted(set(keys))
    if not keys:
        raise ValueError("scene selection: no scenes to select from")
    n = min(max(int(round(fraction * len(keys))), 1), len(keys))
    perm = _rng(seed, "scenes").permutation(len(keys))
    return sorted(keys[i] for i in perm[:n])


def select_points(key: str, label: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of ``count`` labelled points (label != -1) of scene ``key``
    (all of them when it has fewer), drawn uniformly with a generator of (seed, key)."""
    if count < 1:
        raise ValueError(f"labelled points per scene must be >= 1, got {count}")
    rows = np.nonzero(np.asarray(label) != IGNORE_INDEX)[0]
    if len(rows) <= count:
        return rows.astype(np.int64)
    return np.sort(_rng(seed, "points", key).choice(rows, count, replace=False)).astype(np.int64)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, np.int64).tobytes()).hexdigest()[:16]


@dataclass
class Selection:
    """Which training scenes and which of their labels a run may use.

    ``points``: {scene key: sorted point indices} (None = every labelled point).
    """

    seed: int
    scene_fraction: Optional[float]
    points_per_scene: Optional[int]
    scenes: list[str]
    points: Optional[dict[str, np.ndarray]] = field(default=None)

    def mask_labels(self, key: str, label: np.ndarray) -> np.ndarray:
        """``label`` with every point outside the selection set to -1 (a copy)."""
        if self.points is None:
            return label
        out = np.full_like(label, IGNORE_INDEX)
        idx = self.points[key]
        out[idx] = label[idx]
        return out

    def to_dict(self) -> dict:
        d = {"seed": self.seed, "scene_fraction": self.scene_fraction, "points_per_scene": self.points_per_scene,
             "scenes": list(self.scenes)}
        if self.points is not None:
            d["points"] = {k: v.tolist() for k, v in self.points.items()}
            d["points_digest"] = {k: _digest(v) for k, v in self.points.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Selection":
        pts = d.get("points")
        return cls(int(d["seed"]), d.get("scene_fraction"), d.get("points_per_scene"), list(d["scenes"]),
                   None if pts is None else {k: np.asarray(v, np.int64) for k, v in pts.items()})

    def save(self, path) -> Path:
        from preprocess.atomic_file import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict())
        return atomic_write(path, lambda p: Path(p).write_text(text))


def make_selection(labels: dict[str, np.ndarray], seed: int, scene_fraction: Optional[float] = None,
                   points_per_scene: Optional[int] = None) -> Selection:
    """Selection over the training scenes ``labels`` ({key: label [N]}); None disables a protocol."""
    keys = sorted(labels)
    scenes = select_scenes(keys, scene_fraction, seed) if scene_fraction is not None else keys
    points = None
    if points_per_scene is not None:
        points = {k: select_points(k, labels[k], points_per_scene, seed) for k in scenes}
    return Selection(seed, scene_fraction, points_per_scene, scenes, points)
