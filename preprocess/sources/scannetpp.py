"""ScanNet++ (v1/v2) DSLR captures in the published layout.

    <path>/[data/]<scene_id>/
        scans/mesh_aligned_0.05.ply                   mesh: its vertices are the point cloud
        scans/segments.json, scans/segments_anno.json optional: instances (segGroups)
        dslr/colmap/images.txt                        poses: "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"
                                                      (world-to-camera, OpenCV axes) + one POINTS2D line each
        dslr/colmap/cameras.txt                       the (fisheye) camera of the raw images
        dslr/undistorted_images/<NAME>                undistorted pinhole images   (option image_dir)
        dslr/undistorted_anon_masks/<stem>.png        their anonymisation masks, 255 = keep, 0 = masked (option mask_dir)
        dslr/nerfstudio/transforms_undistorted.json   their pinhole fl_x, fl_y, cx, cy, w, h (option transforms)
        dslr/resized_images/<NAME>                    fisheye images, used if the above are absent
        dslr/resized_anon_masks/<stem>.png            their masks (option distorted_mask_dir)

The raw DSLR images are fisheye (OPENCV_FISHEYE). Preferred: the undistorted
pinhole images and their intrinsics made by the ScanNet++ toolkit
(``dslr/undistort.py`` with its default config writes ``undistorted_images``,
``undistorted_anon_masks`` and ``nerfstudio/transforms_undistorted.json``;
OpenCV convention). Without the transforms file, the
undistorted folder's intrinsics come from ``cameras.txt`` if its model is
pinhole. Without the undistorted folder, the fisheye ``dslr/resized_images``
are undistorted here (numpy, ``_undistort.py``) to a pinhole camera with the
calibrated K. COLMAP puts pixel centres at +0.5: its K is shifted to OpenCV's
integer centres.

Anonymisation masks (faces, screens blurred in the images) are honoured:
the masked pixels of a frame are listed in ``scene.meta["invalid_pixels"]``
({frame name: bool [H,W], True = masked}) and get NaN depth when depth is
rendered (``preprocess.render.complete_depth``), so they get no
correspondences. An undistorted mask counts every pixel below 255 as masked,
as the toolkit thresholds it.

Depth is left None for the renderer (the paper renders ScanNet++ depth from the
mesh). Semantic labels need the benchmark's class mapping and are not read;
instances are (``segGroups[].objectId`` over ``segIndices``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.scene import Frame, Scene
from preprocess.geometry import quaternion_to_matrix
from preprocess.sources._common import (
    LEGACY_FRAME_GAP,
    AdapterBase,
    intrinsics,
    point_cloud_from_ply,
    pose_from_world_to_camera,
    read_gray,
    read_rgb,
    require_dir,
    require_file,
)
from preprocess.sources._undistort import undistort_image
from preprocess.sources.base import SceneRef, SourceError, register_source


def read_colmap_images(path: Path, scene: str) -> dict[str, tuple[np.ndarray, int]]:
    """{image NAME: (camera-to-world float32 [4,4], CAMERA_ID)} from COLMAP's
    images.txt (two lines per image; the second, POINTS2D, may be empty)."""
    require_file(scene, path, "COLMAP images.txt")
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    out = {}
    for i in range(0, len(lines), 2):
        if not lines[i].strip():
            continue
        tok = lines[i].split()
        try:
            qw, qx, qy, qz, tx, ty, tz = (float(t) for t in tok[1:8])
            cam_id = int(tok[8])
            name = " ".join(tok[9:])
        except (ValueError, IndexError):
            raise SourceError(scene, f"{path}", f"malformed image line {lines[i]!r} (expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME')")
        if not name or not np.isfinite([qw, qx, qy, qz, tx, ty, tz]).all() or np.linalg.norm([qw, qx, qy, qz]) < 1e-9:
            raise SourceError(scene, f"{path}", f"malformed image line {lines[i]!r}")
        out[name] = (pose_from_world_to_camera(quaternion_to_matrix([qw, qx, qy, qz]), np.array([tx, ty, tz])), cam_id)
    return out


@dataclass
class ColmapCamera:
    model: str
    hw: tuple[int, int]  # (H, W)
    K: np.ndarray  # float32 [3,3], OpenCV convention (COLMAP's +0.5 pixel-centre offset removed)
    params: np.ndarray  # distortion coefficients (empty for pinhole models)


_COLMAP_NPARAMS = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "OPENCV": 8, "OPENCV_FISHEYE": 8}


def read_colmap_cameras(path: Path, scene: str) -> dict[int, ColmapCamera]:
    """{CAMERA_ID: ColmapCamera} from COLMAP's cameras.txt
    ("CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]"); models SIMPLE_PINHOLE, PINHOLE,
    OPENCV (fx fy cx cy k1 k2 p1 p2), OPENCV_FISHEYE (fx fy cx cy k1 k2 k3 k4)."""
    require_file(scene, path, "COLMAP cameras.txt")
    out = {}
    for ln in path.read_text().splitlines():
        if ln.startswith("#") or not ln.strip():
            continue
        tok = ln.split()
        model = tok[1] if len(tok) > 1 else "?"
        if model not in _COLMAP_NPARAMS:
            raise SourceError(scene, str(path), f"unsupported camera model {model} (supported: {sorted(_COLMAP_NPARAMS)})")
        try:
            cam_id, w, h = int(tok[0]), int(tok[2]), int(tok[3])
            p = np.array([float(t) for t in tok[4:]])
        except (ValueError, IndexError) as exc:
            raise SourceError(scene, str(path), f"malformed camera line {ln!r}") from exc
        if len(p) != _COLMAP_NPARAMS[model] or not np.isfinite(p).all():
            raise SourceError(scene, str(path), f"camera {cam_id}: {model} takes {_COLMAP_NPARAMS[model]} parameters, got {len(p)}")
        f_x, f_y, cx, cy = (p[0], p[0], p[1], p[2]) if model == "SIMPLE_PINHOLE" else tuple(p[:4])
        dist = p[4:] if model in ("OPENCV", "OPENCV_FISHEYE") else np.zeros(0)
        out[cam_id] = ColmapCamera(model, (h, w), intrinsics(f_x, f_y, cx - 0.5, cy - 0.5), dist)
    return out


def read_transforms_intrinsics(path: Path, scene: str) -> tuple[np.ndarray, tuple[int, int]]:
    """(K float32 [3,3], (H, W)) from a nerfstudio transforms json of pinhole images."""
    try:
        t = json.loads(path.read_text())
        K = intrinsics(float(t["fl_x"]), float(t["fl_y"]), float(t["cx"]), float(t["cy"]))
        hw = (int(t["h"]), int(t["w"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(scene, str(path), f"malformed transforms json ({type(exc).__name__}: {exc})") from exc
    model = t.get("camera_model", "PINHOLE")
    if model != "PINHOLE":
        raise SourceError(scene, str(path), f"camera_model is {model}, expected PINHOLE (undistorted images)")
    return K, hw


def scale_intrinsics(K: np.ndarray, hw_from: tuple[int, int], hw_to: tuple[int, int]) -> np.ndarray:
    """K for the same camera resized from hw_from to hw_to (OpenCV integer pixel
    centres: the image edge at -0.5 stays the edge)."""
    sy, sx = hw_to[0] / hw_from[0], hw_to[1] / hw_from[1]
    return intrinsics(K[0, 0] * sx, K[1, 1] * sy, (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5)


@register_source("scannetpp")
class ScanNetPPSource(AdapterBase):
    """Options: frame_gap (1), image_dir ("undistorted_images", the toolkit's
    default), mask_dir ("undistorted_anon_masks"), transforms
    ("nerfstudio/transforms_undistorted.json"), distorted_image_dir
    ("resized_images"; used, and undistorted here, only when image_dir is
    absent), distorted_mask_dir ("resized_anon_masks"), use_masks (True);
    folders relative to dslr/. hash_mode ("stat")."""

    OPTIONS = {"image_dir": "undistorted_images", "mask_dir": "undistorted_anon_masks",
               "transforms": "nerfstudio/transforms_undistorted.json",
               "distorted_image_dir": "resized_images", "distorted_mask_dir": "resized_anon_masks", "use_masks": True}

    def _scenes(self) -> dict[str, Path]:
        root = self.path / "data" if (self.path / "data").is_dir() else self.path
        return {d.name: d for d in sorted(root.iterdir())
                if d.is_dir() and (d / "scans" / "mesh_aligned_0.05.ply").is_file()}

    def _files(self, d: Path) -> dict[str, Path]:
        dslr = d / "dslr"
        return {"mesh": d / "scans" / "mesh_aligned_0.05.ply", "segs": d / "scans" / "segments.json",
                "anno": d / "scans" / "segments_anno.json", "images_txt": dslr / "colmap" / "images.txt",
                "cameras_txt": dslr / "colmap" / "cameras.txt", "transforms": dslr / self.options["transforms"],
                "image_dir": dslr / self.options["image_dir"], "mask_dir": dslr / self.options["mask_dir"],
                "distorted_dir": dslr / self.options["distorted_image_dir"],
                "distorted_mask_dir": dslr / self.options["distorted_mask_dir"]}

    @staticmethod
    def _images_dir(files: dict[str, Path]) -> tuple[Path, bool]:
        """(folder the frames come from, whether they need undistorting)."""
        if files["image_dir"].is_dir():
            return files["image_dir"], False
        if files["distorted_dir"].is_dir():
            return files["distorted_dir"], True
        return files["image_dir"], False

    def discover(self) -> list[SceneRef]:
        refs = []
        for sid, d in self._scenes().items():
            f = self._files(d)
            hashed = [f[k] for k in ("mesh", "segs", "anno", "images_txt", "cameras_txt", "transforms") if f[k].is_file()]
            img_dir, distorted = self._images_dir(f)
            if img_dir.is_dir():
                hashed += sorted(p for p in img_dir.iterdir() if p.is_file())
            mask_dir = f["distorted_mask_dir" if distorted else "mask_dir"]
            if self.options["use_masks"] and mask_dir.is_dir():
                hashed += sorted(p for p in mask_dir.iterdir() if p.is_file())
            refs.append(self.ref(sid, hashed))
        return refs

    def load(self, ref: SceneRef) -> Scene:
        key = self.key(ref.scene_id)
        scenes = self._scenes()
        if ref.scene_id not in scenes:
            raise SourceError(key, str(self.path), "scene folder (with scans/mesh_aligned_0.05.ply) not found")
        files = self._files(scenes[ref.scene_id])
        points, _ = point_cloud_from_ply(files["mesh"], key)
        if files["segs"].is_file() and files["anno"].is_file():
            points.instance = self._instances(len(points), files, key)
        img_dir, distorted = self._images_dir(files)
        require_dir(key, img_dir, "DSLR images (undistorted, or the fisheye resized_images)")
        poses = read_colmap_images(files["images_txt"], key)
        names = sorted(poses)[:: self.frame_gap]
        pinhole = None
        if not distorted and files["transforms"].is_file():
            pinhole = read_transforms_intrinsics(files["transforms"], key)
        else:
            cams = read_colmap_cameras(files["cameras_txt"], key)
        frames, skipped, invalid = [], [], {}
        mask_dir = files["distorted_mask_dir" if distorted else "mask_dir"]
        for name in names:
            pose, cam_id = poses[name]
            if not (img_dir / name).is_file():
                skipped.append(name)  # e.g. held-out test images that are not distributed
                continue
            rgb = read_rgb(img_dir / name, key)
            if pinhole is not None:
                K, hw = pinhole
            else:
                if cam_id not in cams:
                    raise SourceError(key, str(files["cameras_txt"]), f"no camera {cam_id} (used by {name})")
                cam = cams[cam_id]
                if not distorted and cam.params.size and np.any(cam.params != 0):
                    raise SourceError(key, str(files["cameras_txt"]), f"camera model {cam.model} is distorted but "
                                      f"{img_dir.name} has no {files['transforms'].relative_to(files['transforms'].parents[1])}")
                K, hw = cam.K, cam.hw
            if rgb.shape[:2] != hw:
                # resized images with full-size intrinsics: scale K to the image
                K, hw = scale_intrinsics(K, hw, rgb.shape[:2]), rgb.shape[:2]
            mask_path = mask_dir / f"{Path(name).stem}.png"
            masked = None
            if self.options["use_masks"] and mask_path.is_file():
                masked = self._mask(mask_path, key, rgb.shape[:2], K if distorted else None, cam if distorted else None)
            if distorted:
                rgb = undistort_image(rgb, K.astype(np.float64), cam.model, cam.params)
            if masked is not None and masked.any():
                invalid[Path(name).stem] = masked
            frames.append(Frame(name=Path(name).stem, rgb=rgb, K=K.copy(), pose=pose.copy(), depth=None))
        if names and not frames:
            raise SourceError(key, str(img_dir / names[0]), f"none of the {len(names)} images listed in images.txt exist")
        scene = Scene(scene_id=ref.scene_id, source=self.name, points=points, frames=frames, mesh_path=files["mesh"],
                      content_hash=ref.content_hash,
                      meta={"dataset": "scannetpp", LEGACY_FRAME_GAP: self.frame_gap, "undistorted_here": distorted,
                            "skipped_frames": skipped, "invalid_pixels": invalid})
        return scene.validate()

    @staticmethod
    def _mask(path: Path, key: str, hw: tuple[int, int], K=None, cam=None) -> np.ndarray:
        """bool [H,W], True = masked (anonymised), from a toolkit mask (255 = keep);
        undistorted like its image when K and the distorted camera are given."""
        m = read_gray(path, key)
        if m.shape != hw:
            raise SourceError(key, str(path), f"mask is {m.shape[1]}x{m.shape[0]}, image is {hw[1]}x{hw[0]}")
        if cam is not None:
            m = undistort_image(np.repeat(m[..., None], 3, 2), K.astype(np.float64), cam.model, cam.params)[..., 0]
        return m < 255

    @staticmethod
    def _instances(n: int, files: dict[str, Path], key: str) -> np.ndarray:
        try:
            seg = np.asarray(json.loads(files["segs"].read_text())["segIndices"], np.int64)
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(key, str(files["segs"]), f"malformed segments json ({type(exc).__name__}: {exc})") from exc
        if len(seg) != n:
            raise SourceError(key, str(files["segs"]), f"segIndices has {len(seg)} entries, mesh has {n} vertices")
        try:
            groups = [(int(g["objectId"]), np.asarray(g["segments"], np.int64))
                      for g in json.loads(files["anno"].read_text())["segGroups"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise SourceError(key, str(files["anno"]), f"malformed annotation json ({type(exc).__name__}: {exc})") from exc
        inst = np.full(n, -1, np.int32)
        for oid, segs in groups:
            inst[np.isin(seg, segs)] = oid
        return inst
