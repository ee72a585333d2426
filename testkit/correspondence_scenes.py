"""Small synthetic scenes for the correspondence and image-group tests.

Cameras follow the scene convention (camera-to-world, OpenCV axes). Depth of mesh
scenes is ray-cast here with trimesh (embree when installed), independently of
the project's renderer.
"""
from __future__ import annotations

import numpy as np

from preprocess import geometry
from preprocess.scene import Frame, PointCloud, Scene


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """``preprocess.geometry.look_at`` as float32, the dtype frames store."""
    return geometry.look_at(eye, target, up).astype(np.float32)


def intrinsics(fx, fy, cx, cy, skew=0.0) -> np.ndarray:
    return np.array([[fx, skew, cx], [0, fy, cy], [0, 0, 1]], np.float32)


def make_cloud(coord: np.ndarray) -> PointCloud:
    coord = np.ascontiguousarray(coord, np.float32)
    n = coord.shape[0]
    normal = np.zeros((n, 3), np.float32)
    normal[:, 2] = 1.0
    return PointCloud(coord=coord, color=np.zeros((n, 3), np.uint8), normal=normal)


def make_frame(name, K, pose, depth=None, hw=None) -> Frame:
    h, w = depth.shape if depth is not None else hw
    rgb = np.zeros((h, w, 3), np.uint8)
    return Frame(name=name, rgb=rgb, K=np.asarray(K, np.float32), pose=np.asarray(pose, np.float32), depth=depth)


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def random_scene(rng, n_points=300, n_frames=5, hw=(30, 44), hit_fraction=0.5, nan_fraction=0.15, key="test/random") -> Scene:
    """Random points around the origin, random cameras looking roughly at them,
    random depth maps with NaN holes where a share of pixels is set near the
    depth of a point projecting there (so both passes and near-misses of the
    eps test occur)."""
    coord = rng.uniform(-1.5, 1.5, size=(n_points, 3))
    H, W = hw
    frames = []
    for f in range(n_frames):
        eye = rng.normal(size=3)
        eye = eye / np.linalg.norm(eye) * rng.uniform(3.0, 5.0)
        pose = look_at(eye, rng.normal(scale=0.3, size=3))
        # random roll about the optical axis
        a = rng.uniform(-np.pi, np.pi)
        roll = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        pose[:3, :3] = (pose[:3, :3].astype(np.float64) @ roll).astype(np.float32)
        K = intrinsics(rng.uniform(15, 40), rng.uniform(15, 40), rng.uniform(0.3, 0.7) * W, rng.uniform(0.3, 0.7) * H, skew=rng.uniform(-2, 2))
        depth = rng.uniform(0.5, 9.0, size=(H, W)).astype(np.float32)
        # Put near-surface depths under a random subset of the points.
        w2c = np.linalg.inv(pose.astype(np.float64))
        cam = coord @ w2c[:3, :3].T + w2c[:3, 3]
        z = cam[:, 2]
        ok = z > 0.1
        uv = (cam[ok] @ K.astype(np.float64).T)[:, :2] / z[ok, None]
        col = np.floor(uv[:, 0] + 0.5).astype(np.int64)
        row = np.floor(uv[:, 1] + 0.5).astype(np.int64)
        inside = (col >= 0) & (col < W) & (row >= 0) & (row < H)
        sel = inside & (rng.random(inside.size) < hit_fraction)
        depth[row[sel], col[sel]] = (z[ok][sel] + rng.uniform(-0.02, 0.02, size=int(sel.sum()))).astype(np.float32)
        depth[rng.random((H, W)) < nan_fraction] = np.nan
        frames.append(make_frame(f"f{f:03d}", K, pose, depth))
    source, scene_id = key.split("/")
    return Scene(scene_id=scene_id, source=source, points=make_cloud(coord), frames=frames)


def room_mesh(size=(2.0, 2.0, 2.0), box=((0.5, 0.6, 0.0), (0.9, 1.1, 0.6))):
    """A closed room (axis-aligned box [0, size]) with one box of furniture."""
    import trimesh

    room = trimesh.creation.box(extents=size)
    room.apply_translation(np.asarray(size) / 2)
    room.invert()  # faces point inward
    lo, hi = np.asarray(box[0]), np.asarray(box[1])
    furniture = trimesh.creation.box(extents=hi - lo)
    furniture.apply_translation((lo + hi) / 2)
    return trimesh.util.concatenate([room, furniture])


def raycast_depth(mesh, K, pose, hw) -> np.ndarray:
    """z-depth float32 [H,W] of ``mesh`` seen by a pinhole camera; NaN = no hit."""
    H, W = hw
    rows, cols = np.mgrid[0:H, 0:W]
    pix = np.stack([cols.ravel(), rows.ravel(), np.ones(H * W)], axis=1)
    dirs_cam = pix @ np.linalg.inv(K.astype(np.float64)).T  # z component 1
    R, t = pose[:3, :3].astype(np.float64), pose[:3, 3].astype(np.float64)
    dirs = dirs_cam @ R.T
    origins = np.broadcast_to(t, dirs.shape)
    locs, ray_idx, _ = mesh.ray.intersects_location(origins, dirs, multiple_hits=False)
    depth = np.full(H * W, np.nan)
    z = (locs - t) @ R[:, 2]  # distance along the optical axis
    # multiple_hits=False returns the first hit per ray, but guard anyway
    order = np.argsort(-z)
    depth[ray_idx[order]] = z[order]
    return depth.reshape(H, W).astype(np.float32)


def room_scene(n_points=60000, hw=(192, 256), f=320.0, seed=0, key="test/room") -> tuple[Scene, object]:
    """Points sampled on the room mesh; 4 cameras inside looking at walls and
    the furniture; depth ray-cast from the same mesh. The defaults give a
    pixel footprint (~0.4 cm at 1.3 m) well under the point spacing (~2 cm),
    as in real RGB-D scans."""
    import trimesh

    mesh = room_mesh()
    pts, _ = trimesh.sample.sample_surface(mesh, n_points, seed=seed)
    H, W = hw
    K = intrinsics(f, f, (W - 1) / 2, (H - 1) / 2)
    views = [((1.0, 1.0, 1.2), (0.7, 0.85, 0.3)), ((0.4, 0.4, 1.0), (2.0, 2.0, 0.8)), ((1.6, 1.5, 1.4), (0.0, 0.5, 0.5)), ((1.0, 0.3, 1.0), (1.0, 2.0, 0.9))]
    frames = []
    for i, (eye, target) in enumerate(views):
        pose = look_at(eye, target)
        frames.append(make_frame(f"v{i}", K, pose, raycast_depth(mesh, K, pose, hw)))
    source, scene_id = key.split("/")
    return Scene(scene_id=scene_id, source=source, points=make_cloud(pts), frames=frames), mesh
