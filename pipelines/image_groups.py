"""Cut a scene into image groups: the four frames that, with the scene's point
cloud, form one training sample.

An image group is int32 [4] frame indices. ``ProcessedScene.image_groups`` and the
store's ``segments/`` arrays hold them as rows [G, 4] (the store format keeps
that name; not to be confused with ``PointCloud.segment``, the semantic labels).

``process_scene`` is the one call the pipeline makes per scene once depth
exists: validate, depth-checked correspondences, frame selection, image groups,
keep only the frames some group uses, optionally downsize images, drop depth.

Frame selection: every ``frame_gap``-th frame (0, gap, 2 gap, ...) is a
candidate; candidates with fewer than ``min_correspondences`` pairs are skipped.
The kept frames, in order, are cut into consecutive groups of 4.

Remainder policy (n kept frames, n % 4 != 0): every kept frame is used once
more rather than dropped, because frames are scarce after the gap (a ScanNet
scene at gap 75 keeps ~20) and a frame that sees the cloud is a free
cross-modal target:
- n >= 4: one extra group made of the last 4 kept frames (it overlaps the
  previous group; no frame repeats inside a group);
- 0 < n < 4: one group repeating the kept frames cyclically ([a, b, c, a]);
- n == 0 (no frames, or none sees the cloud): one group of 0 images, shape
  [1, 0], so the point cloud still trains the self-distillation losses.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from pipelines.correspondence import scene_correspondences
from preprocess.geometry import DEPTH_EPS
from preprocess.records import Correspondence, ProcessedScene
from preprocess.scene import Frame, Scene, SceneValidationError

IMAGES_PER_GROUP = 4
# A frame must see at least this many cloud points to be worth an image slot.
DEFAULT_MIN_CORRESPONDENCES = 100
# Reference frame gaps (Concerto's released preprocessing).
FRAME_GAP = {"scannet": 75, "scannetpp": 20, "arkitscenes": 50, "s3dis": 5}


def select_frames(correspondences: Sequence[Correspondence], frame_gap: int = 1, min_correspondences: int = DEFAULT_MIN_CORRESPONDENCES) -> np.ndarray:
    """Indices (int64, ascending) of the frames to use: every ``frame_gap``-th
    frame starting at 0, minus those with fewer than ``min_correspondences``."""
    if frame_gap < 1:
        raise ValueError(f"frame_gap must be >= 1, got {frame_gap}")
    candidates = np.arange(0, len(correspondences), frame_gap, dtype=np.int64)
    counts = np.array([len(correspondences[i]) for i in candidates], dtype=np.int64)
    return candidates[counts >= min_correspondences]


def group_frames(frame_indices: Sequence[int], images_per_group: int = IMAGES_PER_GROUP) -> np.ndarray:
    """Image groups int32 [G, images_per_group] over the given frame indices (in
    the given order); remainder handling as in the module docstring. No frames
    -> int32 [1, 0]."""
    idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
    k = int(images_per_group)
    if k < 1:
        raise ValueError(f"images_per_group must be >= 1, got {k}")
    n = idx.size
    if n == 0:
        return np.zeros((1, 0), np.int32)
    if n < k:
        return idx[np.arange(k) % n][None].astype(np.int32)
    full = n // k
    groups = idx[: full * k].reshape(full, k)
    if n % k:
        groups = np.concatenate([groups, idx[n - k :][None]], axis=0)
    return groups.astype(np.int32)


def _resize_frame(frame: Frame, corr: Correspondence, max_side: int) -> tuple[Frame, Correspondence]:
    """Downsize so max(H, W) <= max_side; K and pixels follow.

    Continuous image coordinates map as x' = (x + 0.5) * s - 0.5 (pixel centres
    at integers), so fx' = fx sx, cx' = (cx + 0.5) sx - 0.5 (same for y), and a
    stored pixel goes to the new pixel containing its centre,
    floor((u + 0.5) sx) (nearest neighbour; several may merge).
    """
    from PIL import Image

    H, W = frame.height, frame.width
    if max(H, W) <= max_side:
        return frame, corr
    scale = max_side / max(H, W)
    new_w, new_h = max(1, int(round(W * scale))), max(1, int(round(H * scale)))
    sx, sy = new_w / W, new_h / H
    rgb = np.asarray(Image.fromarray(frame.rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
    K = frame.K.astype(np.float64).copy()
    K[0, :] *= sx
    K[1, :] *= sy
    K[0, 2] = (frame.K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (frame.K[1, 2] + 0.5) * sy - 0.5
    px = corr.pixel.astype(np.int64)
    u = np.minimum(((2 * px[:, 0] + 1) * new_w) // (2 * W), new_w - 1)
    v = np.minimum(((2 * px[:, 1] + 1) * new_h) // (2 * H), new_h - 1)
    new_frame = dataclasses.replace(frame, rgb=np.ascontiguousarray(rgb), K=K.astype(np.float32))
    return new_frame, Correspondence(corr.point_index, np.stack([u, v], axis=1).astype(np.uint16))


def process_scene(
    scene: Scene,
    eps: float = DEPTH_EPS,
    frame_gap: int = 1,
    min_correspondences: int = DEFAULT_MIN_CORRESPONDENCES,
    max_image_side: Optional[int] = None,
    images_per_group: int = IMAGES_PER_GROUP,
    chunk_points: Optional[int] = None,
) -> ProcessedScene:
    """Scene with depth -> ProcessedScene (only the frames some image group uses,
    depth dropped, correspondences and groups re-indexed to the kept frames;
    the groups go to ``ProcessedScene.image_groups``).

    Raises SceneValidationError (naming scene and field) for bad input.
    stats: points, frames_in, frames_candidates (after the gap), frames_selected
    (after min_correspondences), frames_out, segments (number of image groups; the
    stats key is stored in shard metadata, so it keeps that name),
    correspondences
    (per output frame), correspondences_total, coverage (fraction of points seen
    by >= 1 output frame), frame_names_out.
    """
    scene.validate(require_depth=True)
    stored = scene.meta.get("correspondences") if scene.meta.get("correspondence_mode") == "stored" else None
    if stored is not None:  # a recipe that fixes its own pairs (RE10K "released": each point's own pixel)
        missing = [f.name for f in scene.frames if f.name not in stored]
        if missing:
            raise SceneValidationError(scene.key, "meta.correspondences", f"no stored correspondences for frames {missing}")
        corrs = [stored[f.name] for f in scene.frames]
    else:
        corrs = scene_correspondences(scene, eps=eps, chunk_points=chunk_points, validate=False)
    selected = select_frames(corrs, frame_gap, min_correspondences)
    groups = group_frames(selected, images_per_group)
    used = np.unique(groups)  # sorted frame indices into scene.frames
    remap = np.full(len(scene.frames), -1, np.int64)
    remap[used] = np.arange(used.size)
    groups = remap[groups].astype(np.int32).reshape(groups.shape)

    frames_out, corr_out = [], []
    for i in used.tolist():
        frame = dataclasses.replace(scene.frames[i], depth=None)
        corr = corrs[i]
        if max_image_side is not None:
            frame, corr = _resize_frame(frame, corr, int(max_image_side))
        frames_out.append(frame)
        corr_out.append(corr)

    n_points = len(scene.points)
    seen = np.zeros(n_points, bool)
    for c in corr_out:
        seen[c.point_index] = True
    counts = [len(c) for c in corr_out]
    stats = dict(
        points=n_points,
        frames_in=len(scene.frames),
        frames_candidates=int(len(range(0, len(scene.frames), frame_gap))),
        frames_selected=int(selected.size),
        frames_out=len(frames_out),
        segments=int(groups.shape[0]),
        correspondences=counts,
        correspondences_total=int(sum(counts)),
        coverage=float(seen.mean()) if n_points else 0.0,
        frame_names_out=[f.name for f in frames_out],
        eps=float(eps),
        frame_gap=int(frame_gap),
        min_correspondences=int(min_correspondences),
    )
    # stored correspondences (Correspondence objects) now live in corr_out; they are not JSON metadata
    meta = {k: v for k, v in scene.meta.items() if k != "correspondences"}
    return ProcessedScene(scene=scene.replace(frames=frames_out, meta=meta), correspondences=corr_out, image_groups=groups,
                          stats=stats)
