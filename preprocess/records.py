"""What the dataset-agnostic stages hand to the shard store.

A ``ProcessedScene`` is a scene after correspondences and image grouping: its
point cloud, the frames that some image group uses (rgb, K, pose; depth no longer
needed), per-frame point<->pixel correspondences, and the image groups (4 frame
indices each).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from preprocess.scene import Scene


@dataclass
class Correspondence:
    """Pairs of (point, pixel) for one frame.

    point_index int32 [M]: index into the scene's point cloud.
    pixel uint16 [M, 2]: integer pixel (u = column, v = row) in the frame's
    stored rgb image (pixel centres at integer coordinates, see preprocess.scene).
    """

    point_index: np.ndarray
    pixel: np.ndarray

    def __len__(self) -> int:
        return int(self.point_index.shape[0])

    @staticmethod
    def empty() -> "Correspondence":
        return Correspondence(np.zeros(0, np.int32), np.zeros((0, 2), np.uint16))


@dataclass
class ProcessedScene:
    """scene.frames are only the frames used by some image group; correspondences[i]
    belongs to scene.frames[i]; image_groups int32 [G, 4] indexes scene.frames.
    A scene without images has no frames and one image group of shape [1, 0]."""

    scene: Scene
    correspondences: list[Correspondence]
    image_groups: np.ndarray
    stats: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.scene.key
