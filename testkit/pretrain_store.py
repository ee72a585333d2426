"""Small real shard stores for the pretraining tests and the loader benchmark
(written with ShardWriter)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.store import ShardWriter, commit
from testkit.random_store_scenes import random_processed_scene


def room_scene(rng: np.random.Generator, scene_id: str, n_points: int, with_images: bool, n_image_groups: int = 2):
    """A synthetic ProcessedScene whose cloud is a 2 m x 2 m x 1 m box of points
    (denser than the 0.02 m grid), with images seeing part of it."""
    sizes = [(28, 42)] * 4 if with_images else []
    ps = random_processed_scene(rng, "synthetic", scene_id, n_points=n_points, image_sizes=sizes,
                         n_image_groups=n_image_groups, corr_per_image=300)
    ps.scene.points.coord[:] = rng.uniform([0, 0, 0], [2, 2, 1], (n_points, 3)).astype(np.float32)
    return ps


def write_store(root: Path, shard_sizes=(3, 2), n_points: int = 1500, seed: int = 0,
                without_images: int = 1) -> str:
    """Store with one shard per entry of shard_sizes (scenes per shard, 2 image
    groups each, except the last ``without_images`` scenes: no images, 1 image group)."""
    rng = np.random.default_rng(seed)
    url = str(root)
    writer = ShardWriter(url)
    infos = []
    total = sum(shard_sizes)
    k = 0
    for size in shard_sizes:
        scenes = []
        for _ in range(size):
            imgs = k < total - without_images
            scenes.append(room_scene(rng, f"s{k:03d}", n_points, imgs))
            k += 1
        infos.append(writer.write(scenes))
    commit(url, None, infos)
    return url
