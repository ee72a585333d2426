"""Random ProcessedScenes for tests and benchmarks of the store (no dataset,
no rendering): random clouds, random images, random correspondences."""
from __future__ import annotations

import numpy as np

from preprocess import geometry
from preprocess.geometry import look_at
from preprocess.records import Correspondence, ProcessedScene
from preprocess.scene import Frame, PointCloud, Scene


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def project(coord: np.ndarray, K: np.ndarray, pose: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the points of coord [N,3] in front of the camera and inside the
    h x w image, and their pixels uint16 [M,2] (u, v), nearest pixel centre.
    No occlusion test: good enough for pictures and benchmarks."""
    uv, z = geometry.project(coord, K, pose)
    px = np.floor(uv + 0.5)
    ok = (z > 0.1) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
    idx = np.nonzero(ok)[0].astype(np.int32)
    return idx, px[ok].astype(np.uint16)


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 [h,w,3]: colour gradients plus mild noise (compresses like a photo
    more than white noise does)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0.5, 3, 3)
    img = 127 + 100 * np.sin(xx[..., None] / w * a * np.pi + yy[..., None] / h * a[::-1] * np.pi + rng.uniform(0, 6, 3))
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def random_processed_scene(
    rng: np.random.Generator,
    source: str,
    scene_id: str,
    n_points: int = 1000,
    image_sizes: list[tuple[int, int]] | None = None,
    n_image_groups: int = 2,
    corr_per_image: int = 200,
    labels: bool = True,
    content_hash: str | None = None,
    geometric: bool = False,
) -> ProcessedScene:
    """A valid ProcessedScene. image_sizes: (H, W) per frame; [] gives a scene
    without images (one image group of shape [1, 0]); default four 24x32 frames.
    geometric: cameras on a circle look at the cloud, correspondences are the
    real projections and images are smooth (else everything is random)."""
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
        K = np.array([[w, 0, w / 2], [0, w, h / 2], [0, 0, 1]], np.float32)
        if geometric:
            angle = 2 * np.pi * i / max(len(image_sizes), 1) + rng.uniform(0, 0.3)
            pose = look_at(np.array([8 * np.cos(angle), 8 * np.sin(angle), 1.5]), rng.uniform(-0.5, 0.5, 3)).astype(np.float32)
            rgb = smooth_image(rng, h, w)
            idx, px = project(pts.coord, K, pose, h, w)
            corrs.append(Correspondence(point_index=idx, pixel=px))
        else:
            pose = np.eye(4, dtype=np.float32)
            pose[:3, :3] = random_rotation(rng)
            pose[:3, 3] = rng.uniform(-1, 1, 3)
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            m = int(rng.integers(corr_per_image // 2, corr_per_image + 1))
            corrs.append(Correspondence(
                point_index=rng.integers(0, n_points, m).astype(np.int32),
                pixel=np.stack([rng.integers(0, w, m), rng.integers(0, h, m)], 1).astype(np.uint16),
            ))
        frames.append(Frame(name=f"frame{i:04d}", rgb=rgb, K=K, pose=pose))
    if frames:
        groups = np.stack([rng.choice(len(frames), size=min(4, len(frames)), replace=False) for _ in range(n_image_groups)]).astype(np.int32)
    else:
        groups = np.zeros((1, 0), np.int32)
    scene = Scene(
        scene_id=scene_id, source=source, points=pts, frames=frames,
        content_hash=content_hash or f"{source}-{scene_id}-{rng.integers(1 << 30)}",
        meta={"room": scene_id, "scale": 1.5, "tags": ["a", "b"]},
    )
    return ProcessedScene(scene=scene, correspondences=corrs, image_groups=groups, stats={"n_visible": int(sum(len(c) for c in corrs))})
