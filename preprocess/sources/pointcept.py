"""The Pointcept / Concerto preprocessed layout: read it (source kind
"pointcept") and write it (``export_pointcept``).

Layout (Pointcept's ``pointcept/datasets/preprocessing/concerto/*`` output)::

    <root>/<split>/<scene>/coord.npy          float32 [N,3] metres
                           color.npy          uint8 [N,3]
                           normal.npy         float32 [N,3]       (optional: estimated if missing)
                           segment*.npy       int [N] or [N,k]    (optional; first column used)
                           instance.npy       int [N] or [N,k]    (optional)
    <root>/images/<split>/<scene>/color/<frame>.png|jpg
                                  depth/<frame>.png               (optional, uint16, depth_scale units per metre, 0 / 65535 = none)
                                  pose/<frame>.npy                [4,4] camera-to-world, OpenCV axes
                                  intrinsic/<frame>.npy | intrinsic/intrinsic.npy   [3,3] or [4,4] (one shared file allowed)
                                  correspondence/<frame>.npy      float [M,3] rows (u = column, v = row, point index);
                                                                  -1 * ones((1,3)) when the frame sees no point
    <root>/splits/<split>.json     {"<scene>_<k>": {"pointclouds": dir, "images": [4 colour paths],
                                                     "correspondences": [4 paths]}}

A scene may sit deeper than one level (Structured3D: ``<split>/scene_XXXXX/room_YYY``);
its id joins the parts with "_". Colour images may sit in a sub-folder
(Structured3D ``color/prsp``); panoramas (``color/pano``) are skipped (not pinhole).
ARKitScenes correspondences are named by timestamp without the video id; that is
handled.

Layouts (option ``layout``, default "auto": detected per scene) where Concerto's
scripts (``pointcept/datasets/preprocessing/concerto/<dataset>``) depart from
the generic one above:

- "scannetpp": ``color/DSC<k>.JPG`` with ``pose/<i>.npy`` and ``intrinsic/<i>.npy``
  named by the image's index ``i`` in the (numerically sorted) colour folder. The
  saved K is COLMAP's (pixel centres at +0.5): 0.5 px is taken off cx and cy.
- "structured3d": ``color/prsp/<i>.png``; the saved pose is
  ``[[R, t], [0, 1]] @ P`` with R, t the camera in Concerto's y-up world and P the
  y/z swap (determinant -1), and ``coord.npy`` / ``normal.npy`` are the
  Structured3D world (metres) with x and y swapped (a mirror). The reader
  swaps x/y back (the scene is in the Structured3D world, z up, as the
  ``structured3d`` source gives it) and rebuilds the rigid OpenCV
  camera-to-world pose. K (principal point W/2, as Concerto backprojected its
  points) is kept. Concerto writes K and pose for every view that loads but
  colour only for views that keep points, numbered 0..n-1 for n kept views, so
  after a view that loaded but kept nothing the cameras sit at higher indices
  and the last ones are not saved at all. Each image is matched to the first
  following pose file whose camera reprojects the image's stored
  correspondences onto their pixels; an image whose camera was not saved is
  skipped (``meta["skipped_frames"]``); an image without correspondences is an
  error.
- "s3dis": ``<root>/Area_<N>/<room>/coord.npy`` and one folder per 2D-3D-S camera,
  ``images/Area_<N>/<room>/<camera>/{color,depth,pose,intrinsic,correspondence}``,
  ``pose/<i>.npy`` = world-to-camera (2D-3D-S ``camera_rt_matrix``) by frame-number
  index, depth in 1/512 m. Frames are named ``<camera>/<image stem>``.

The stored correspondences are kept in ``scene.meta["correspondences"]``
({frame name: preprocess.records.Correspondence}) so a build can reuse them when
the scene has neither depth nor a mesh.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

from preprocess.records import Correspondence, ProcessedScene
from preprocess.scene import Frame, PointCloud, Scene
from preprocess.geometry import orthonormalize, rigid_inverse
from preprocess.sources._common import (
    AdapterBase,
    depth_from_raw,
    estimate_normals,
    pose_is_valid,
    read_rgb,
    read_uint16_png,
    write_rgb,
    write_uint16_png,
)
from preprocess.sources.base import SceneRef, SourceError, register_source
from preprocess.atomic_file import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".PNG")
LAYOUTS = ("auto", "generic", "scannetpp", "structured3d", "s3dis")
_DSLR_NAME = re.compile(r"^DSC\d+\.JPG$")
_S3DIS_RGB_NAME = re.compile(r"^camera_[0-9A-Za-z]+_.+_frame_\d+_domain_rgb\.png$")
# Concerto's Structured3D script: P swaps y and z (its pose is T_yup @ P); its y-up world is
# Y = S s with s the Structured3D world; a camera's local axes (front, up, right) = A @ OpenCV axes
_S3D_P = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], np.float64)
_S3D_S = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float64)
_S3D_A = np.array([[0, 0, 1], [0, -1, 0], [1, 0, 0]], np.float64)
_DEPTH_SCALE = {"s3dis": 512.0}  # 2D-3D-S depth PNGs are copied as they are
_SEGMENT_KEYS = ("segment20", "segment", "segment25", "segment200")


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _load_npy(path: Path, scene: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise SourceError(scene, str(path), f"cannot read .npy ({type(exc).__name__}: {exc})") from exc


@register_source("pointcept")
class PointceptSource(AdapterBase):
    """Options: frame_gap (1), splits (None = every top-level folder except
    images/ and splits/), segment_key (None = first of segment20, segment,
    segment25, segment200), depth_scale (None = 1000 units per metre, 512 for
    the s3dis layout), read_depth (True), pose_convention (None = per layout;
    "camera_to_world" | "world_to_camera" for the generic layout), layout
    ("auto" | "generic" | "scannetpp" | "structured3d" | "s3dis"), hash_mode ("stat")."""

    OPTIONS = {"splits": None, "segment_key": None, "depth_scale": None, "read_depth": True,
               "pose_convention": None, "layout": "auto"}

    def __init__(self, path, name=None, **options):
        super().__init__(path, name, **options)
        if self.options["pose_convention"] not in (None, "camera_to_world", "world_to_camera"):
            raise ValueError(f"source '{self.name}' (pointcept): pose_convention must be camera_to_world or world_to_camera")
        if self.options["depth_scale"] is not None and float(self.options["depth_scale"]) <= 0:
            raise ValueError(f"source '{self.name}' (pointcept): depth_scale must be positive")
        if self.options["layout"] not in LAYOUTS:
            raise ValueError(f"source '{self.name}' (pointcept): layout must be one of {LAYOUTS}, got {self.options['layout']!r}")

    # ------------------------------------------------------------------ discovery
    def _splits(self) -> list[str]:
        if self.options["splits"] is not None:
            return list(self.options["splits"])
        return sorted(d.name for d in self.path.iterdir() if d.is_dir() and d.name not in ("images", "splits") and not d.name.startswith("."))

    def _scenes(self) -> dict[str, tuple[str, Path]]:
        """scene id -> (split, path of the folder relative to the split)."""
        out: dict[str, tuple[str, Path]] = {}
        for split in self._splits():
            base = self.path / split
            if not base.is_dir():
                continue
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                if "coord.npy" in filenames:
                    rel = Path(dirpath).relative_to(base)
                    out["_".join(rel.parts)] = (split, rel)
                    dirnames[:] = []
        return dict(sorted(out.items()))

    def _scene_files(self, split: str, rel: Path) -> list[Path]:
        pc = self.path / split / rel
        files = [p for p in pc.iterdir() if p.suffix == ".npy"]
        img = self.path / "images" / split / rel
        if img.is_dir():
            files += [Path(dp) / f for dp, _, fs in os.walk(img) for f in fs]
        return files

    def discover(self) -> list[SceneRef]:
        return [self.ref(sid, self._scene_files(split, rel)) for sid, (split, rel) in self._scenes().items()]

    # ------------------------------------------------------------------ loading
    def load(self, ref: SceneRef) -> Scene:
        key = self.key(ref.scene_id)
        scenes = self._scenes()
        if ref.scene_id not in scenes:
            raise SourceError(key, str(self.path), "scene folder (with coord.npy) not found")
        split, rel = scenes[ref.scene_id]
        groups = self._image_groups(self.path / "images" / split / rel)
        layout = self._layout(groups, key)
        points = self._points(self.path / split / rel, key, mirrored=layout == "structured3d")
        frames, corrs, skipped, depth_unused = [], {}, [], []
        for g, prefix in groups:
            f, c, s, d = self._frames(g, prefix, layout, key, points.coord)
            frames += f
            corrs.update(c)
            skipped += s
            depth_unused += d
        scene = Scene(
            scene_id=ref.scene_id, source=self.name, points=points, frames=frames, mesh_path=None,
            content_hash=ref.content_hash,
            meta={"dataset": "pointcept", "layout": layout, "split": split, "correspondences": corrs,
                  "skipped_frames": skipped, "depth_size_mismatch": depth_unused},
        )
        return scene.validate()

    # ------------------------------------------------------------------ layouts
    @staticmethod
    def _image_groups(d: Path) -> list[tuple[Path, str]]:
        """Folders holding a color/ folder, with the frame-name prefix: the scene's
        image folder itself, or (Concerto's S3DIS) one sub-folder per camera."""
        if (d / "color").is_dir():
            return [(d, "")]
        if not d.is_dir():
            return []
        return [(c, f"{c.name}/") for c in sorted(d.iterdir()) if (c / "color").is_dir()]

    @staticmethod
    def _color_files(g: Path) -> list[Path]:
        """Pinhole colour images, in natural order (panoramas skipped)."""
        return sorted(
            (p for p in (g / "color").rglob("*") if p.suffix in IMAGE_SUFFIXES and "pano" not in p.relative_to(g / "color").parts),
            key=lambda p: _natural_key(p.relative_to(g / "color").as_posix()),
        )

    def _layout(self, groups: list[tuple[Path, str]], key: str) -> str:
        if self.options["layout"] != "auto":
            return self.options["layout"]
        if not groups:
            return "generic"
        g, prefix = groups[0]
        files = self._color_files(g)
        first = g / "pose" / "0.npy"
        if (g / "color" / "prsp").is_dir() and first.is_file():
            pose = _load_npy(first, key).astype(np.float64)
            if pose.shape == (4, 4) and np.isfinite(pose).all() and np.linalg.det(pose[:3, :3]) < 0:
                return "structured3d"  # the y/z swap Concerto multiplies in
        if not files or (g / "pose" / f"{files[0].stem}.npy").is_file():
            return "generic"  # poses named like the images
        if prefix and all(_S3DIS_RGB_NAME.match(f.name) for f in files):
            return "s3dis"
        if all(_DSLR_NAME.match(f.name) for f in files):
            return "scannetpp"
        return "generic"

    def _points(self, d: Path, key: str, mirrored: bool = False) -> PointCloud:
        coord = _load_npy(d / "coord.npy", key)
        if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
            raise SourceError(key, str(d / "coord.npy"), f"expected [N,3] coordinates, got shape {list(coord.shape)}")
        if not np.isfinite(coord).all():
            raise SourceError(key, str(d / "coord.npy"), "NaN/inf coordinates")
        n = len(coord)

        def per_point(name, cols):
            p = d / f"{name}.npy"
            if not p.is_file():
                return None
            arr = _load_npy(p, key)
            if arr.shape[0] != n or (cols is not None and arr.shape[1:] != (cols,)):
                raise SourceError(key, str(p), f"expected {n} rows{'' if cols is None else f' x {cols}'}, got shape {list(arr.shape)}")
            return arr

        color = per_point("color", 3)
        if color is None:
            color = np.full((n, 3), 128, np.uint8)
        elif color.dtype != np.uint8:
            color = np.clip(np.round(color), 0, 255).astype(np.uint8)
        normal = per_point("normal", 3)
        if mirrored:  # Concerto's Structured3D world has x and y swapped: swap them back
            coord = coord[:, [1, 0, 2]]
            normal = None if normal is None else normal[:, [1, 0, 2]]
        normal = estimate_normals(coord) if normal is None else normal.astype(np.float32)
        seg_key = self.options["segment_key"] or next((k for k in _SEGMENT_KEYS if (d / f"{k}.npy").is_file()), None)
        segment = per_point(seg_key, None) if seg_key else None
        instance = per_point("instance", None)

        def labels(arr):
            if arr is None:
                return None
            arr = arr.reshape(n, -1)[:, 0].astype(np.int64)
            return np.where(arr < 0, -1, arr).astype(np.int32)

        return PointCloud(coord=np.ascontiguousarray(coord, np.float32), color=color, normal=normal,
                          segment=labels(segment), instance=labels(instance))

    # ------------------------------------------------------------------ cameras
    def _camera(self, g: Path, stem: str, index: int, layout: str, key: str, shared_K) -> tuple[Path, np.ndarray, np.ndarray]:
        """(pose file, camera-to-world float64 [4,4] (may be non-finite), K float64
        [3,3]) of one image: by name (generic) or by index (Concerto's layouts)."""
        name = stem if layout == "generic" else str(index)
        pose_path = g / "pose" / f"{name}.npy"
        if not pose_path.is_file():
            raise SourceError(key, str(pose_path), f"missing pose for colour image {stem}")
        pose = _load_npy(pose_path, key).astype(np.float64)
        if pose.shape != (4, 4):
            raise SourceError(key, str(pose_path), f"pose must be [4,4], got {list(pose.shape)}")
        K_path = g / "intrinsic" / f"{name}.npy"
        if K_path.is_file():
            K = _load_npy(K_path, key)
        elif shared_K is not None:
            K, K_path = shared_K
        else:
            raise SourceError(key, str(K_path), f"missing intrinsics for colour image {stem}")
        K = np.asarray(K, np.float64)
        if K.shape not in ((3, 3), (4, 4)):
            raise SourceError(key, str(K_path), f"intrinsics must be [3,3] or [4,4], got {list(K.shape)}")
        K = K[:3, :3].copy()
        if not np.isfinite(pose).all():
            return pose_path, pose, K
        convention = self.options["pose_convention"] or ("world_to_camera" if layout == "s3dis" else "camera_to_world")
        if layout == "structured3d":
            # saved T = [[R_yup, t_yup], [0, 1]] @ P  ->  OpenCV camera-to-world in the Structured3D world
            out = np.eye(4)
            out[:3, :3] = _S3D_S.T @ pose[:3, :3] @ _S3D_P @ _S3D_A
            out[:3, 3] = _S3D_S.T @ pose[:3, 3]
            pose = out
        elif convention == "world_to_camera":
            pose = rigid_inverse(pose)
        if layout == "scannetpp":
            K[0, 2] -= 0.5  # COLMAP's pixel centres are at +0.5
            K[1, 2] -= 0.5
        return pose_path, pose, K

    def _structured3d_index(self, g: Path, color_files: list[Path], key: str, coord: np.ndarray) -> list[Optional[int]]:
        """Pose/intrinsic file index of each colour image of Concerto's Structured3D
        output, None when its camera was not saved. The script saves K and pose
        number i for the i-th view that loaded and colour number i for the i-th
        view that kept points, as many of each as there are colour images: after a
        view that loaded but kept nothing, every colour image's camera sits at a
        higher index and the last ones are lost. Each image is matched to the first
        following file whose camera reprojects its stored correspondences."""
        n_pose = len(list((g / "pose").glob("*.npy")))
        out, j = [], 0
        for cf in color_files:
            arr, path = self._correspondence_array(g, cf.relative_to(g / "color").parent, cf.stem, key)
            if arr is None or (len(arr) == 1 and (arr == -1).all()):
                raise SourceError(key, str(cf), f"{n_pose} pose files for {len(color_files)} colour images and no "
                                  "correspondences to tell which pose is this image's (Concerto's index shift)")
            idx = arr[:50, 2].astype(np.int64)
            if (idx < 0).any() or (idx >= len(coord)).any():
                raise SourceError(key, str(path), "correspondence has point indices out of range")
            k = j
            while k < n_pose:
                _, pose, K = self._camera(g, cf.stem, k, "structured3d", key, None)
                if np.isfinite(pose).all() and _reprojects(coord[idx], arr[:50, :2], K, pose):
                    break
                k += 1
            out.append(k if k < n_pose else None)
            j = k + 1 if k < n_pose else j
        return out

    def _frames(self, g: Path, prefix: str, layout: str, key: str, coord: np.ndarray):
        all_files = self._color_files(g)
        index = (self._structured3d_index(g, all_files, key, coord) if layout == "structured3d"
                 else list(range(len(all_files))))
        chosen = list(range(len(all_files)))[:: self.frame_gap]
        shared_K = self._shared_intrinsic(g, key) if layout == "generic" else None
        depth_scale = float(self.options["depth_scale"] or _DEPTH_SCALE.get(layout, 1000.0))
        frames, corrs, skipped, depth_mismatch = [], {}, [], []
        for i in chosen:
            cf = all_files[i]
            sub = cf.relative_to(g / "color").parent  # "" or e.g. "prsp"
            stem = cf.stem
            name = prefix + (sub / stem).as_posix()
            if index[i] is None:
                skipped.append(name)  # its camera was never saved (Concerto's index shift)
                continue
            pose_path, pose, K = self._camera(g, stem, index[i], layout, key, shared_K)
            if not np.isfinite(pose).all():
                skipped.append(name)
                continue
            if not pose_is_valid(pose):
                raise SourceError(key, str(pose_path), "not a rigid camera-to-world transform")
            pose[:3, :3] = orthonormalize(pose[:3, :3])  # float32 files lose digits
            rgb = read_rgb(cf, key)
            depth = None
            depth_path = self._depth_path(g, sub, stem, layout)
            if self.options["read_depth"] and depth_path.is_file():
                raw = read_uint16_png(depth_path, key)
                if raw.shape == rgb.shape[:2]:
                    depth = depth_from_raw(raw, depth_scale, invalid=(0, 65535))
                else:
                    # Pointcept's ScanNet output keeps the 640x480 sensor depth next to
                    # 1296x968 colour: another camera, not a resize, so it is not used
                    depth_mismatch.append(name)
            frames.append(Frame(name=name, rgb=rgb, K=K.astype(np.float32), pose=pose.astype(np.float32), depth=depth))
            corr = self._correspondence(g, sub, stem, key, len(coord), rgb.shape[:2])
            if corr is not None:
                corrs[name] = corr
        return frames, corrs, skipped, depth_mismatch

    @staticmethod
    def _depth_path(g: Path, sub: Path, stem: str, layout: str) -> Path:
        if layout == "s3dis":  # 2D-3D-S names: ..._domain_rgb.png -> ..._domain_depth.png
            return g / "depth" / sub / f"{stem[: -len('_rgb')]}_depth.png"
        return g / "depth" / sub / f"{stem}.png"

    def _shared_intrinsic(self, d: Path, key: str) -> Optional[tuple[np.ndarray, Path]]:
        """(K, its file) when one intrinsics file serves every image."""
        kd = d / "intrinsic"
        if not kd.is_dir():
            return None
        if (kd / "intrinsic.npy").is_file():
            return _load_npy(kd / "intrinsic.npy", key), kd / "intrinsic.npy"
        files = list(kd.glob("*.npy"))
        return (_load_npy(files[0], key), files[0]) if len(files) == 1 else None

    def _correspondence_array(self, d: Path, sub: Path, stem: str, key: str):
        names = [stem] + ([stem.split("_", 1)[1]] if "_" in stem else [])  # ARKitScenes drops the video id
        folders = [d / "correspondence", d / "correspondence" / f"{sub.name}_correspondence", d / "correspondence" / sub]
        path = next((f / f"{nm}.npy" for f in folders for nm in names if (f / f"{nm}.npy").is_file()), None)
        if path is None:
            return None, None
        arr = _load_npy(path, key)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise SourceError(key, str(path), f"correspondence must be [M,3] (u, v, point index), got {list(arr.shape)}")
        return arr, path

    def _correspondence(self, d: Path, sub: Path, stem: str, key: str, n: int, hw) -> Optional[Correspondence]:
        arr, path = self._correspondence_array(d, sub, stem, key)
        if arr is None:
            return None
        if len(arr) == 1 and (arr == -1).all():
            return Correspondence.empty()
        idx = arr[:, 2].astype(np.int64)
        u, v = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
        h, w = hw
        if (idx < 0).any() or (idx >= n).any() or (u < 0).any() or (u >= w).any() or (v < 0).any() or (v >= h).any():
            raise SourceError(key, str(path), "correspondence has point indices or pixels out of range")
        return Correspondence(point_index=idx.astype(np.int32), pixel=np.stack([u, v], 1).astype(np.uint16))


def _reprojects(points: np.ndarray, pixels: np.ndarray, K: np.ndarray, pose: np.ndarray, tol: float = 1.0) -> bool:
    """Whether the camera (K, camera-to-world pose) sees ``points`` [M,3] at
    ``pixels`` [M,2] (u, v) within ``tol`` px (median)."""
    w2c = rigid_inverse(pose)
    xc = points.astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    if (xc[:, 2] <= 0).any():
        return False
    uv = (xc @ K.T)[:, :2] / xc[:, 2:3]
    return bool(np.median(np.linalg.norm(uv - pixels, axis=1)) < tol)


# ---------------------------------------------------------------------- export


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _export_inputs(scene_or_processed: Union[Scene, ProcessedScene]) -> tuple[Scene, list, list[list[int]]]:
    """(scene, correspondence or None per frame, frame-index groups of the
    split file). A ProcessedScene gives its own correspondences and image groups;
    a Scene its ``meta["correspondences"]`` by frame name and consecutive
    groups of 4 frames (as Pointcept's splits.py does)."""
    if isinstance(scene_or_processed, ProcessedScene):
        image_groups = np.asarray(scene_or_processed.image_groups)
        groups = [[int(j) for j in row] for row in image_groups.reshape(len(image_groups), -1)] if image_groups.size else []
        return scene_or_processed.scene, list(scene_or_processed.correspondences), groups
    scene = scene_or_processed
    by_name = scene.meta.get("correspondences") or {}
    n = len(scene.frames)
    return scene, [by_name.get(f.name) for f in scene.frames], [list(range(i, min(i + 4, n))) for i in range(0, n, 4)]


def _scene_dirs(out_dir: Path, split: str, sid: str) -> tuple[Path, Path]:
    """(point-cloud folder, image folder) of scene ``sid`` in ``split``."""
    return out_dir / split / sid, out_dir / "images" / split / sid


def _write_points(pc_dir: Path, pts: PointCloud) -> None:
    """coord/normal float32 [N,3] (metres), color uint8 [N,3], and
    segment/instance int32 [N] when present, as .npy files in ``pc_dir``."""
    pc_dir.mkdir(parents=True, exist_ok=True)
    np.save(pc_dir / "coord.npy", pts.coord.astype(np.float32))
    np.save(pc_dir / "color.npy", pts.color.astype(np.uint8))
    np.save(pc_dir / "normal.npy", pts.normal.astype(np.float32))
    if pts.segment is not None:
        np.save(pc_dir / "segment.npy", pts.segment.astype(np.int32))
    if pts.instance is not None:
        np.save(pc_dir / "instance.npy", pts.instance.astype(np.int32))


def _frame_file_names(frames: list[Frame]) -> list[str]:
    """File-safe frame names, a repeated one suffixed with its frame index."""
    names, used = [], set()
    for i, frame in enumerate(frames):
        name = _safe(frame.name)
        if name in used:
            name = f"{name}_{i}"
        used.add(name)
        names.append(name)
    return names


def _correspondence_rows(corr: Correspondence) -> np.ndarray:
    """float64 [M,3] rows (u = column, v = row, point index); -1 * ones((1,3))
    when the frame sees no point."""
    if len(corr) == 0:
        return -np.ones((1, 3))
    return np.concatenate([corr.pixel.astype(np.float64), corr.point_index.astype(np.float64)[:, None]], axis=1)


def _write_frame(img_dir: Path, name: str, frame: Frame, corr: Optional[Correspondence], depth_scale: float) -> None:
    """One frame's files under ``img_dir``: color PNG, pose [4,4] float32
    camera-to-world (OpenCV axes), intrinsic [3,3] float32, depth uint16 PNG in
    1/depth_scale m (0 = none) if any, correspondence if any."""
    write_rgb(img_dir / "color" / f"{name}.png", frame.rgb)
    (img_dir / "pose").mkdir(parents=True, exist_ok=True)
    (img_dir / "intrinsic").mkdir(parents=True, exist_ok=True)
    np.save(img_dir / "pose" / f"{name}.npy", frame.pose.astype(np.float32))
    np.save(img_dir / "intrinsic" / f"{name}.npy", frame.K.astype(np.float32))
    if frame.depth is not None:
        d = np.nan_to_num(frame.depth, nan=0.0) * depth_scale
        write_uint16_png(img_dir / "depth" / f"{name}.png", np.clip(np.round(d), 0, 65535))
    if corr is not None:
        (img_dir / "correspondence").mkdir(parents=True, exist_ok=True)
        np.save(img_dir / "correspondence" / f"{name}.npy", _correspondence_rows(corr))


def _write_split_entries(out_dir: Path, split: str, sid: str, groups: list[list[int]], names: list[str],
                         path_prefix: Optional[str]) -> None:
    """Replace scene ``sid``'s entries ("<sid>_<k>", one per group of frame
    indices) in ``<out_dir>/splits/<split>.json``, keeping other scenes'.
    Paths are absolute, or relative to ``out_dir`` under ``path_prefix``."""
    def shown(p: Path) -> str:
        if path_prefix is None:
            return str(p.resolve())
        return str(Path(path_prefix) / p.relative_to(out_dir))

    pc_dir, img_dir = _scene_dirs(out_dir, split, sid)
    split_path = out_dir / "splits" / f"{split}.json"
    split_path.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(split_path.read_text()) if split_path.is_file() else {}
    entries = {k: v for k, v in entries.items() if not k.startswith(f"{sid}_") or not k[len(sid) + 1:].isdigit()}
    for k, group in enumerate(groups):
        entries[f"{sid}_{k}"] = {
            "pointclouds": shown(pc_dir),
            "images": [shown(img_dir / "color" / f"{names[j]}.png") for j in group],
            "correspondences": [shown(img_dir / "correspondence" / f"{names[j]}.npy") for j in group],
        }
    atomic_write(split_path, lambda p: p.write_text(json.dumps(entries, indent=2)))


def export_pointcept(
    scene_or_processed: Union[Scene, ProcessedScene],
    out_dir: Union[str, Path],
    split: str = "train",
    depth_scale: float = 1000.0,
    path_prefix: Optional[str] = None,
    write_splits: bool = True,
) -> Path:
    """Write a scene in the Pointcept/Concerto layout under ``out_dir`` and
    return the point-cloud folder.

    For a ProcessedScene, its correspondences and image groups (4 frames each)
    are written; for a Scene, correspondences come from
    ``scene.meta["correspondences"]`` if present, and the split file groups
    consecutive frames by 4 (as Pointcept's splits.py does). Depth (if any) is
    stored as uint16 PNG in 1/depth_scale m, 0 = none. ``path_prefix`` replaces
    ``out_dir`` in the split json paths (e.g. "data/scannet", what Pointcept's
    configs expect); default: absolute paths."""
    out_dir = Path(out_dir)
    scene, corr_list, groups = _export_inputs(scene_or_processed)
    scene.validate()
    sid = _safe(scene.scene_id)
    pc_dir, img_dir = _scene_dirs(out_dir, split, sid)
    _write_points(pc_dir, scene.points)
    names = _frame_file_names(scene.frames)
    for i, frame in enumerate(scene.frames):
        _write_frame(img_dir, names[i], frame, corr_list[i] if i < len(corr_list) else None, depth_scale)
    if write_splits and groups:
        _write_split_entries(out_dir, split, sid, groups, names, path_prefix)
    return pc_dir
