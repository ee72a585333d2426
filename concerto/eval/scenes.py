"""Labelled scenes for evaluation: read from a shard store or a Pointcept-layout folder, split, selected.

- ``read_labelled_scenes(store)``: scenes of a ShardStore with labelled points.
- ``read_pointcept_scenes(root, splits)``: ``<root>/<split>/<scene>/{coord,color,normal,segment*}.npy``
  (the layout of ``preprocess.sources.pointcept``; its reader is used).
- ``load_scenes(data)``: either, by what ``data`` is.
- ``split_scenes``: the seeded train / held-out split of scene keys.

Labels are int64 class ids, -1 = unlabelled.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

IGNORE_INDEX = -1


class ProbeError(RuntimeError):
    """An evaluation cannot run (no labelled scenes, too few to split, ...); one line."""


@dataclass
class LabelledScene:
    """One scene's cloud and labels."""

    key: str
    content_hash: str
    coord: np.ndarray  # float32 [N, 3] metres
    color: np.ndarray  # uint8 [N, 3]
    normal: np.ndarray  # float32 [N, 3]
    label: np.ndarray  # int64 [N], -1 = unlabelled


# ----------------------------------------------------------------------------- data


def read_labelled_scenes(store, max_scenes: Optional[int] = None) -> tuple[list[LabelledScene], list[str] | None]:
    """Scenes of ``store`` (a ShardStore) that have labelled points, and the class names if the scenes record them.

    Reads one image group (the first) per scene. A scene whose arrays cannot be read or are
    malformed is skipped with a warning naming it.
    """
    scenes: list[LabelledScene] = []
    class_names = None
    seen: set[str] = set()
    for i in range(len(store)):
        shard, scene_index, group = store.locate(i)
        if group != 0:
            continue
        attrs = store.reader(shard).scene_attrs[scene_index]
        key = str(attrs.get("key", f"{shard}/{scene_index}"))
        if key in seen:
            continue
        seen.add(key)
        try:
            raw = store[i]
            coord = np.asarray(raw["coord"], np.float32)
            label = np.asarray(raw["segment_label"], np.int64)
            if coord.ndim != 2 or coord.shape[1] != 3 or label.shape != (len(coord),):
                raise ValueError(f"field 'segment_label' has shape {list(label.shape)} for coord {list(coord.shape)}")
            if not np.isfinite(coord).all():
                raise ValueError("field 'coord' has non-finite values")
        except Exception as exc:  # noqa: BLE001 - one bad scene must not sink the probe
            warnings.warn(f"linear probe: scene '{key}' skipped ({type(exc).__name__}: {exc})", stacklevel=2)
            continue
        if not (label != IGNORE_INDEX).any():
            continue
        meta = attrs.get("meta") or {}
        if class_names is None and isinstance(meta.get("class_names"), list):
            class_names = [str(n) for n in meta["class_names"]]
        scenes.append(LabelledScene(key, str(attrs.get("content_hash", "")), coord,
                                    np.asarray(raw["color"]), np.asarray(raw["normal"], np.float32), label))
        if max_scenes is not None and len(scenes) >= max_scenes:
            break
    return scenes, class_names


def split_scenes(keys: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train keys, held-out keys): a seeded permutation of the sorted keys, the
    first ``round(val_fraction * n)`` (at least 1, at most n - 1) held out."""
    keys = sorted(set(keys))
    if len(keys) < 2:
        raise ProbeError(f"linear probe: need at least 2 labelled scenes to split, found {len(keys)}")
    if not 0.0 < val_fraction < 1.0:
        raise ProbeError(f"linear probe: --val-fraction must be in (0, 1), got {val_fraction}")
    n_val = min(max(int(round(val_fraction * len(keys))), 1), len(keys) - 1)
    perm = np.random.default_rng(seed).permutation(len(keys))
    val = sorted(keys[i] for i in perm[:n_val])
    train = sorted(keys[i] for i in perm[n_val:])
    return train, val


def is_pointcept_layout(data: str) -> bool:
    """True for a local folder holding ``<split>/<scene>/coord.npy`` (and no store manifest)."""
    root = Path(str(data))
    if not root.is_dir():
        return False
    for split in root.iterdir():
        if split.is_dir() and split.name not in ("images", "splits") and next(split.rglob("coord.npy"), None):
            return True
    return False


def read_pointcept_scenes(root: str, splits: Optional[Sequence[str]] = None,
                          max_scenes: Optional[int] = None) -> tuple[list[LabelledScene], dict[str, str]]:
    """Labelled scenes of a Pointcept-layout folder and {scene key: split name}.

    ``splits``: folders to read (default: all). A scene whose arrays are bad is
    skipped with a warning naming it; a scene without labels is left out.
    """
    from preprocess.sources.base import SourceError
    from preprocess.sources.pointcept import PointceptSource

    src = PointceptSource(root, splits=list(splits) if splits else None)
    scenes, split_of = [], {}
    for scene_id, (split, rel) in src._scenes().items():
        key = src.key(scene_id)
        try:
            pc = src._points(src.path / split / rel, key)
        except SourceError as exc:
            warnings.warn(f"pointcept scenes: scene '{key}' skipped ({exc})", stacklevel=2)
            continue
        if pc.segment is None or not (pc.segment != IGNORE_INDEX).any():
            continue
        scenes.append(LabelledScene(key, "", pc.coord, pc.color, pc.normal, pc.segment.astype(np.int64)))
        split_of[key] = split
        if max_scenes is not None and len(scenes) >= max_scenes:
            break
    return scenes, split_of


def load_scenes(data: str, max_scenes: Optional[int] = None) -> tuple[list[LabelledScene], Optional[list[str]], dict]:
    """(scenes, class names or None, info) from a store URL or a Pointcept-layout folder.

    ``info``: {"kind": "store" | "pointcept", "split_of": {key: split} (pointcept),
    "store_version": manifest version (store)}.
    """
    if is_pointcept_layout(data):
        scenes, split_of = read_pointcept_scenes(data, max_scenes=max_scenes)
        if not scenes:
            raise ProbeError(f"data '{data}': no scene with labels (segment*.npy) in the Pointcept layout")
        return scenes, None, {"kind": "pointcept", "split_of": split_of}
    from concerto.data import open_store

    store = open_store(str(data))
    scenes, names = read_labelled_scenes(store, max_scenes)
    if not scenes:
        raise ProbeError(f"data store '{data}': no scene has labelled points (field 'segment_label')")
    return scenes, names, {"kind": "store", "store_version": getattr(store, "version", None)}


def class_names_for(scenes: Sequence[LabelledScene], names: Optional[list[str]]) -> list[str]:
    """Class names covering every label present (numbers for the unnamed ones)."""
    max_label = max(int(s.label.max()) for s in scenes)
    k = max(max_label + 1, len(names) if names else 0)
    names = list(names or [])
    return names + [str(i) for i in range(len(names), k)]
