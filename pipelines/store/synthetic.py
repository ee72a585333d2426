"""Random ProcessedScenes for tests and benchmarks of the store (no dataset,
no rendering): random clouds, random images, random correspondences."""
from __future__ import annotations

import numpy as np

from pipelines.records import Correspondence, ProcessedScene
from preprocess.scene import Frame, PointCloud, Scene


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def synthetic_scene(
    rng: np.random.Generator,
    source: str,
    scene_id: str,
    n_points: int = 1000,
    image_sizes: list[tuple[int, int]] | None = None,
    n_segments: int = 2,
    corr_per_image: int = 200,
    labels: bool = True,
    content_hash: str | None = None,
) -> ProcessedScene:
    """A valid ProcessedScene. image_sizes: (H, W) per frame; [] gives a scene
    without images (one segment of shape [1, 0]); default four 24x32 frames."""
    image_sizes = [(24, 32)] * 4 if image_sizes is None else image_sizes
    pts = PointCloud(
        coord=rng.uniform(-3, 3, (n_points, 3)).astype(np.float32),
        color=rng.integers(0, 256, (n_points, 3), dtype=np.uint8),
        normal=(lambda n: (n / np.linalg.norm(n, axis=1, keepdims=True)).astype(np.float32))(rng.normal(size=(n_points, 3))),
        segment=rng.integers(-1, 20, n_points).astype(np.int32) if labels else None,
        instance=rng.integers(-1, 50, n_points).astype(np.int32) if labels else None,
    )
    frames, corrs = [], []
    for i, (h, w) in enumerate(image_sizes):
        pose = np.eye(4, dtype=np.float32)
        pose[:3, :3] = random_rotation(rng)
        pose[:3, 3] = rng.uniform(-1, 1, 3)
        K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], np.float32)
        frames.append(Frame(name=f"frame{i:04d}", rgb=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), K=K, pose=pose))
        m = int(rng.integers(corr_per_image // 2, corr_per_image + 1))
        corrs.append(Correspondence(
            point_index=rng.integers(0, n_points, m).astype(np.int32),
            pixel=np.stack([rng.integers(0, w, m), rng.integers(0, h, m)], 1).astype(np.uint16),
        ))
    if frames:
        segments = np.stack([rng.choice(len(frames), size=min(4, len(frames)), replace=False) for _ in range(n_segments)]).astype(np.int32)
    else:
        segments = np.zeros((1, 0), np.int32)
    scene = Scene(
        scene_id=scene_id, source=source, points=pts, frames=frames,
        content_hash=content_hash or f"{source}-{scene_id}-{rng.integers(1 << 30)}",
        meta={"room": scene_id, "scale": 1.5, "tags": ["a", "b"]},
    )
    return ProcessedScene(scene=scene, correspondences=corrs, segments=segments, stats={"n_visible": int(sum(len(c) for c in corrs))})
