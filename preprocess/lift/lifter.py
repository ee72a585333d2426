"""Lifting a group of video frames to a scene record.

A ``Lifter`` turns S RGB images (plus whatever cameras/depth the data has) into
``LiftedViews``: the images at the resolution depth is predicted at, per-view
z-depth with a confidence, intrinsics and camera-to-world poses in one common
(arbitrary, un-normalised) world frame.

- ``VGGTLifter`` runs our VGGT implementation (cameras and depth predicted).
- ``GivenDepthLifter`` uses depth and cameras that come with the data (e.g. a
  capture with a depth sensor or synthetic renders); confidence is 1 where the
  depth is valid.

``scene_from_views`` then makes the scene: z-up from the first camera, scale so
the scene is ``target_height`` metres tall, floor found by RANSAC and moved to
z = 0 with normal +z, points unprojected from confident depth, voxel
subsampled, coloured from the images, normals by PCA facing the cameras.

Recipes (``LiftOptions.recipe``): "paper" is the above (the paper's text:
depth head, 50th-percentile confidence, correspondences by the build's
cross-view depth check). "released" follows Pointcept's released
``preprocessing/concerto/re10k`` script: the point head's world points
(``LiftedViews.points``; unprojected depth when the lifter has none), every
pixel with confidence > 0, no subsampling, and each point paired with its own
pixel only (``scene.meta["correspondences"]`` with
``meta["correspondence_mode"] = "stored"``, which the build uses as they are).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from preprocess import geometry
from preprocess.lift import alignment as align
from preprocess.scene import Frame, PointCloud, Scene


@dataclass
class LiftedViews:
    """S views in one world frame (units arbitrary until ``scene_from_views``).

    rgb uint8 [S,H,W,3]; depth float32 [S,H,W] z-depth, NaN invalid; conf
    float32 [S,H,W] (higher = more reliable); K float32 [S,3,3]; pose float32
    [S,4,4] camera-to-world, OpenCV axes."""

    rgb: np.ndarray
    depth: np.ndarray
    conf: np.ndarray
    K: np.ndarray
    pose: np.ndarray
    names: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    points: Optional[np.ndarray] = None  # float32 [S,H,W,3] point-head world points (same frame as pose)

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


class LiftError(ValueError):
    """Lifting failed for a scene (names the scene and the step)."""

    def __init__(self, scene: str, step: str, message: str):
        self.scene, self.step = scene, step
        super().__init__(f"scene '{scene}': {step}: {message}")


@runtime_checkable
class Lifter(Protocol):
    name: str

    def lift(self, images: Sequence[np.ndarray], K: Optional[np.ndarray] = None, pose: Optional[np.ndarray] = None,
             depth: Optional[Sequence[np.ndarray]] = None) -> LiftedViews:
        """images: S uint8 [H,W,3]; K [S,3,3] and pose [S,4,4] (camera-to-world)
        of those images if the data has them; depth S float [H,W] if any."""
        ...


# --- VGGT ---------------------------------------------------------------------

def vggt_input_size(height: int, width: int, target: int = 518, patch: int = 14) -> tuple[int, int, int]:
    """VGGT "crop" preprocessing size: width -> ``target``, height scaled and
    rounded to a multiple of ``patch``, then centre-cropped to ``target`` if
    taller. Returns (resized_h, crop_top, final_h)."""
    new_h = int(round(height * (target / width) / patch) * patch)
    new_h = max(new_h, patch)
    top = max(0, (new_h - target) // 2)
    return new_h, top, min(new_h, target)


def preprocess_for_vggt(images: Sequence[np.ndarray], target: int = 518, patch: int = 14) -> np.ndarray:
    """S uint8 [H,W,3] (same size) -> uint8 [S, h, target, 3] resized (bicubic)
    and centre-cropped as VGGT's loader does."""
    from PIL import Image

    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"all views must have the same size, got {sorted(shapes)}")
    H, W = images[0].shape[:2]
    new_h, top, out_h = vggt_input_size(H, W, target, patch)
    out = []
    for im in images:
        r = np.asarray(Image.fromarray(im).resize((target, new_h), Image.Resampling.BICUBIC))
        out.append(r[top:top + out_h])
    return np.stack(out)


class VGGTLifter:
    """Cameras and depth from our VGGT. The model's world frame is the first
    view's camera frame; pose encoding -> extrinsics/intrinsics at the model's
    input resolution (principal point at the centre)."""

    name = "vggt"

    def __init__(self, model=None, checkpoint: str = "facebook/VGGT-1B", device: Optional[str] = None,
                 autocast_dtype=None, point_head: bool = False):
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if model is None:
            from preprocess.lift.vggt_model import load_vggt

            model = load_vggt(checkpoint, device=self.device)
        self.model = model.to(self.device).eval()
        self.autocast_dtype = autocast_dtype
        self.point_head = point_head  # also return the point head's world points and their confidence

    def lift(self, images, K=None, pose=None, depth=None) -> LiftedViews:
        import torch

        cfg = self.model.config
        rgb = preprocess_for_vggt(list(images), cfg.img_size, cfg.patch_size)
        x = torch.from_numpy(rgb).to(self.device).permute(0, 3, 1, 2).float().div(255.0)
        with torch.inference_mode():
            out = self.model(x, with_points=self.point_head, autocast_dtype=self.autocast_dtype)
        S, h, w = rgb.shape[:3]
        enc = out.pose_enc[0].double().cpu().numpy()
        fov = enc[:, 7:]
        if not np.isfinite(enc).all() or (fov <= 1e-3).any() or (fov >= np.pi - 1e-3).any():
            raise ValueError(f"VGGT predicted unusable cameras (fov_h, fov_w per view: {np.round(fov, 4).tolist()})")
        extr, Kp = align.pose_encoding_to_cameras(enc, (h, w))
        d = out.depth[0].float().cpu().numpy()
        c = out.depth_conf[0].float().cpu().numpy()
        d = np.where(np.isfinite(d) & (d > 0), d, np.nan).astype(np.float32)
        poses = geometry.extrinsic_to_pose(extr)
        points = None
        if self.point_head:
            points = out.world_points[0].float().cpu().numpy()
            c = out.world_points_conf[0].float().cpu().numpy()
        return LiftedViews(rgb=rgb, depth=d, conf=c.astype(np.float32), K=Kp.astype(np.float32),
                           pose=poses.astype(np.float32), meta={"lifter": self.name}, points=points)


class GivenDepthLifter:
    """Depth and cameras supplied by the data (no network). Depth must be at the
    images' resolution; values <= 0 or non-finite are invalid."""

    name = "given-depth"

    def lift(self, images, K=None, pose=None, depth=None) -> LiftedViews:
        if K is None or pose is None or depth is None:
            raise ValueError("GivenDepthLifter needs K, pose and depth for every view")
        rgb = np.stack(list(images))
        d = np.stack([np.asarray(x, np.float32) for x in depth])
        if d.shape != rgb.shape[:3]:
            raise ValueError(f"depth maps {list(d.shape)} do not match the images {list(rgb.shape[:3])}")
        valid = np.isfinite(d) & (d > 0)
        return LiftedViews(rgb=rgb, depth=np.where(valid, d, np.nan).astype(np.float32),
                           conf=valid.astype(np.float32), K=np.asarray(K, np.float32),
                           pose=np.asarray(pose, np.float32), meta={"lifter": self.name})


# --- views -> scene ---------------------------------------------------------------

RECIPES = ("paper", "released")

@dataclass
class LiftOptions:
    """How ``scene_from_views`` turns views into a scene.

    conf_threshold / conf_percentile: keep depth pixels at or above (see
    ``geometry.confidence_mask``); target_height: metres from lowest to highest
    point; align_floor / require_floor: RANSAC floor alignment, and whether a
    missing floor is an error (the reference drops such clips); voxel_size
    (metres) and max_points: subsampling; normal_k / normal_backend: normals
    (``geometry.estimate_normals``)."""

    conf_threshold: Optional[float] = None
    conf_percentile: Optional[float] = 50.0
    target_height: float = 3.0
    height_percentile: float = 0.0
    align_floor: bool = True
    require_floor: bool = True
    floor_lowest_fraction: float = 0.2
    floor_threshold: float = 0.01
    floor_iterations: int = 1000
    floor_max_angle_deg: float = 40.0
    voxel_size: float = 0.02
    max_points: Optional[int] = 200_000
    normal_k: int = 16
    normal_backend: str = "auto"
    visibility_eps: float = geometry.DEPTH_EPS
    seed: int = 0
    recipe: str = "paper"  # "paper" | "released" (see the module docstring)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.recipe == "released":  # the released script's fixed choices
            self.conf_threshold, self.conf_percentile, self.voxel_size, self.max_points = None, None, None, None
            self.height_percentile = 0.0


def _visible_count(points: np.ndarray, frame: Frame, eps: float) -> int:
    """Points of ``points`` that ``frame`` sees by the depth check (the one the
    pipeline's correspondences use). float32 first: the scene record stores
    float32 coordinates, so the count matches the built scene's."""
    vis, _ = geometry.depth_visibility(points.astype(np.float32), frame.K, frame.pose, frame.depth, eps)
    return int(vis.sum())


def view_overlap(points_per_view: Sequence[np.ndarray], frames: Sequence[Frame], eps: float = geometry.DEPTH_EPS) -> np.ndarray:
    """[S, S] fraction of view i's lifted points that view j sees by the depth
    check (diagonal ~1 by construction)."""
    S = len(frames)
    out = np.zeros((S, S), np.float32)
    for i, pts in enumerate(points_per_view):
        if len(pts) == 0:
            continue
        for j, fr in enumerate(frames):
            out[i, j] = _visible_count(pts, fr, eps) / len(pts)
    return out


def _confident_depth(views: LiftedViews, o: LiftOptions, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Pixels the recipe keeps: bool [S,H,W], and depth float64 [S,H,W] (the
    views' units) NaN outside them. "released": every pixel with confidence
    > 0; "paper": ``align.confidence_mask``. Both need finite depth > 0.
    Raises LiftError (step "confidence") when no pixel is kept."""
    depth = views.depth.astype(np.float64)
    if o.recipe == "released":  # every pixel with confidence > 0
        keep = np.isfinite(views.conf) & (views.conf > 0) & np.isfinite(depth) & (depth > 0)
    else:
        keep = align.confidence_mask(views.conf, o.conf_threshold, o.conf_percentile) & np.isfinite(depth) & (depth > 0)
    if not keep.any():
        raise LiftError(key, "confidence", "no depth pixel passes the confidence threshold")
    return keep, np.where(keep, depth, np.nan)


def _view_points(views: LiftedViews, depth: np.ndarray, keep: np.ndarray, T: np.ndarray, poses: np.ndarray,
                 recipe: str) -> tuple[np.ndarray, np.ndarray]:
    """Kept pixels as points float64 [N,3] in the frame ``T`` [4,4] maps the
    views' world to (``poses`` [S,4,4] camera-to-world are already there),
    ordered by view then row-major pixel; and ``keep`` bool [S,H,W] narrowed to
    pixels with a finite point. "released" with a point head: its world points;
    otherwise ``depth`` [S,H,W] unprojected."""
    S, H, W = depth.shape
    if recipe == "released" and views.points is not None:  # the point head, not the depth head
        keep = keep & np.isfinite(views.points).all(-1)
        per_view = [geometry.transform_points(T, views.points[i].reshape(-1, 3).astype(np.float64)).reshape(H, W, 3)
                    for i in range(S)]
    else:
        per_view = [geometry.unproject_depth(depth[i], views.K[i], poses[i]) for i in range(S)]
    return np.concatenate([p[m] for p, m in zip(per_view, keep)]), keep


def _height_transform(z: np.ndarray, o: LiftOptions) -> tuple[float, np.ndarray]:
    """(scale s, similarity [4,4]) taking point heights ``z`` [N] to a scene
    ``o.target_height`` metres tall with its lowest point at z = 0."""
    s = align.height_scale(z, o.target_height, o.height_percentile)
    return s, geometry.similarity(scale=s, t=(0.0, 0.0, -s * z.min()))


def _floor_transform(pts: np.ndarray, o: LiftOptions, key: str) -> tuple[Optional[np.ndarray], Optional[dict]]:
    """Rigid [4,4] moving the RANSAC floor of ``pts`` [N,3] (metres, z up) to
    z = 0 with normal +z, and {angle_deg, inliers}; (None, None) when floor
    alignment is off, or no floor is found and ``o.require_floor`` is False
    (else LiftError, step "floor alignment")."""
    if not o.align_floor:
        return None, None
    try:
        Tf, fit = align.floor_alignment(pts, lowest_fraction=o.floor_lowest_fraction, threshold=o.floor_threshold,
                                        iterations=o.floor_iterations, max_angle_deg=o.floor_max_angle_deg, seed=o.seed)
    except align.FloorNotFound as e:
        if o.require_floor:
            raise LiftError(key, "floor alignment", str(e)) from e
        return None, None
    return Tf, dict(angle_deg=fit.angle_deg, inliers=int(len(fit.inliers)))


def _moved(Tx: np.ndarray, T: np.ndarray, pts: np.ndarray, poses: np.ndarray):
    """Apply ``Tx`` [4,4] after the world transform ``T`` [4,4], to points
    [N,3] and camera-to-world poses [S,4,4]: (Tx @ T, points, poses)."""
    return Tx @ T, geometry.transform_points(Tx, pts), geometry.transform_poses(Tx, poses)


def _pixel_sources(conf: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each kept point came from, in ``_view_points`` order: view index
    int [N], pixel int [N,2] (row, col) and its confidence [N], from ``conf``
    and ``keep`` [S,H,W]."""
    src_view = np.concatenate([np.full(int(m.sum()), i) for i, m in enumerate(keep)])
    src_pix = np.concatenate([np.argwhere(m) for m in keep])  # (row, col)
    return src_view, src_pix, np.concatenate([c[m] for c, m in zip(conf, keep)])


def _subsample(pts: np.ndarray, conf: np.ndarray, o: LiftOptions) -> np.ndarray:
    """Sorted indices into ``pts`` [N,3] (metres) kept: one per ``o.voxel_size``
    voxel (most confident first, by ``conf`` [N]), then at most ``o.max_points``
    drawn with ``default_rng(o.seed)``."""
    idx = align.voxel_subsample(pts, o.voxel_size, priority=conf) if o.voxel_size else np.arange(len(pts))
    if o.max_points is not None and len(idx) > o.max_points:
        rng = np.random.default_rng(o.seed)
        idx = np.sort(rng.choice(idx, o.max_points, replace=False))
    return idx


def _frames(views: LiftedViews, poses: np.ndarray, depth: np.ndarray, names: Sequence[str]) -> list[Frame]:
    """One Frame per view: float32 K, float32 camera-to-world pose (``poses``
    [S,4,4], rotations re-orthonormalised in place after the float math) and
    depth [S,H,W] in metres."""
    poses[:, :3, :3] = geometry.orthonormalize(poses[:, :3, :3])
    return [Frame(name=names[i], rgb=np.ascontiguousarray(views.rgb[i]), K=views.K[i].astype(np.float32),
                  pose=poses[i].astype(np.float32), depth=depth[i].astype(np.float32)) for i in range(len(views))]


def _stored_correspondences(names: Sequence[str], view: np.ndarray, pix: np.ndarray) -> dict:
    """{frame name: Correspondence} pairing each point (index into the scene's
    points) with the pixel it came from: ``view`` int [N], ``pix`` [N,2]
    (row, col) -> stored (u = column, v = row)."""
    from preprocess.records import Correspondence

    return {names[i]: Correspondence(point_index=np.nonzero(view == i)[0].astype(np.int32),
                                     pixel=pix[view == i][:, ::-1].astype(np.uint16)) for i in range(len(names))}


def scene_from_views(views: LiftedViews, scene_id: str, source: str, options: Optional[LiftOptions] = None,
                     content_hash: str = "", meta: Optional[dict] = None) -> Scene:
    """Lifted views -> validated Scene (frames carry rgb, K, pose, depth in metres).

    Raises LiftError naming the scene and the step when nothing confident is
    left or no floor is found (with ``require_floor``)."""
    o = options or LiftOptions()
    key = f"{source}/{scene_id}"
    keep, depth = _confident_depth(views, o, key)
    T = align.first_camera_zup(views.pose[0])  # world -> first camera, z up
    poses = geometry.transform_poses(T, views.pose.astype(np.float64))
    pts, keep = _view_points(views, depth, keep, T, poses, o.recipe)
    s, Ts = _height_transform(pts[:, 2], o)
    T, pts, poses = _moved(Ts, T, pts, poses)
    depth = depth * s
    Tf, floor_info = _floor_transform(pts, o, key)
    if Tf is not None:
        T, pts, poses = _moved(Tf, T, pts, poses)
    src_view, src_pix, conf = _pixel_sources(views.conf, keep)
    idx = _subsample(pts, conf, o)
    coord, view, pix = pts[idx], src_view[idx], src_pix[idx]
    color = views.rgb[view, pix[:, 0], pix[:, 1]]
    normal = align.estimate_normals(coord, o.normal_k, viewpoints=poses[view, :3, 3], backend=o.normal_backend)
    names = views.names or [f"view{i}" for i in range(len(views))]
    frames = _frames(views, poses, depth, names)
    scene_meta = dict(meta or {})
    scene_meta.update(
        lifter=views.meta.get("lifter", "?"), scale=s, world_transform=T.tolist(), floor=floor_info,
        view_overlap=view_overlap([coord[view == i] for i in range(len(views))], frames, o.visibility_eps).tolist(),
        recipe=o.recipe,
    )
    if o.recipe == "released":  # each point with the pixel it came from, and nothing else
        scene_meta.update(correspondence_mode="stored", correspondences=_stored_correspondences(names, view, pix))
    scene = Scene(scene_id=scene_id, source=source,
                  points=PointCloud(coord=coord.astype(np.float32), color=color.astype(np.uint8), normal=normal),
                  frames=frames, content_hash=content_hash, meta=scene_meta)
    return scene.validate(require_depth=True)
