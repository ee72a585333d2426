"""ScanNet v2 in its published layout.

    <path>/scans/<scene>/            (or <path>/scans_test/<scene>/, or <path> = the scans folder)
        <scene>.sens                           RGB-D stream (SensReader format, version 4)
        <scene>_vh_clean_2.ply                 mesh: its vertices are the point cloud
        <scene>_vh_clean_2.labels.ply          optional: per-vertex `label` = NYU40 id
        <scene>_vh_clean_2.0.010000.segs.json  optional: per-vertex over-segment ids
        <scene>.aggregation.json               optional: segment groups = instances

``.sens`` layout (little endian; ScanNet's SensReader): uint32 version (4);
uint64 n + sensor name; 4 float32[16] (colour intrinsic, colour extrinsic,
depth intrinsic, depth extrinsic); int32 colour compression (-1 unknown, 0 raw,
1 png, 2 jpeg); int32 depth compression (0 raw_ushort, 1 zlib_ushort); uint32
colour W, H, depth W, H; float32 depth shift (units per metre, 1000); uint64
frame count; per frame: float32[16] camera-to-world, uint64 colour and depth
timestamps, uint64 colour and depth byte sizes, the two payloads. Poses are in
OpenCV camera axes already; lost-tracking frames carry -inf and are skipped.

Labels: "scannet20" (NYU40 ids of the labels PLY -> 20 benchmark classes),
"scannet200" (each aggregation group's raw label -> category id through
``scannetv2-labels.combined.tsv`` -> 200 benchmark classes, as Pointcept's
ScanNet preprocessing does), "nyu40" or "none".

Frames are the colour images at full resolution with the colour intrinsics.
Depth is left None for the renderer (the paper renders ScanNet depth from the
mesh); ``use_sensor_depth=True`` instead reads the sensor depth and reprojects it
into the colour camera.
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import numpy as np

from preprocess.scene import Frame, Scene
from preprocess.sources._common import (
    LEGACY_FRAME_GAP,
    AdapterBase,
    decode_rgb,
    fill_holes_min,
    point_cloud_from_ply,
    pose_is_valid,
    read_ply,
    reproject_depth,
    require_file,
)
from preprocess.sources.base import SceneRef, SourceError, register_source

# NYU40 ids of the 20 ScanNet benchmark classes, in benchmark order.
SCANNET20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
# ScanNet category ids ("id" column of scannetv2-labels.combined.tsv) of the 200
# ScanNet200 benchmark classes, in benchmark order (the benchmark's definition).
SCANNET200_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 26, 27, 28, 29, 31, 32, 33, 34,
    35, 36, 38, 39, 40, 41, 42, 44, 45, 46, 47, 48, 49, 50, 51, 52, 54, 55, 56, 57, 58, 59, 62, 63, 64, 65, 66, 67,
    68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 82, 84, 86, 87, 88, 89, 90, 93, 95, 96, 97, 98, 99, 100, 101,
    102, 103, 104, 105, 106, 107, 110, 112, 115, 116, 118, 120, 121, 122, 125, 128, 130, 131, 132, 134, 136, 138,
    139, 140, 141, 145, 148, 154, 155, 156, 157, 159, 161, 163, 165, 166, 168, 169, 170, 177, 180, 185, 188, 191,
    193, 195, 202, 208, 213, 214, 221, 229, 230, 232, 233, 242, 250, 261, 264, 276, 283, 286, 300, 304, 312, 323,
    325, 331, 342, 356, 370, 392, 395, 399, 408, 417, 488, 540, 562, 570, 572, 581, 609, 748, 776, 1156, 1163, 1164,
    1165, 1166, 1167, 1168, 1169, 1170, 1171, 1172, 1173, 1174, 1175, 1176, 1178, 1179, 1180, 1181, 1182, 1183,
    1184, 1185, 1186, 1187, 1188, 1189, 1190, 1191,
)
LABEL_MAP_NAME = "scannetv2-labels.combined.tsv"

_COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
_DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_FRAME_HEADER = struct.Struct("<16f4Q")


@dataclass
class SensHeader:
    """Everything in a .sens file before the frames. Matrices float32 [4,4]."""

    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: str
    depth_compression: str
    color_size: tuple[int, int]  # (H, W)
    depth_size: tuple[int, int]  # (H, W)
    depth_shift: float
    num_frames: int


@dataclass
class SensFrame:
    index: int
    camera_to_world: np.ndarray  # float32 [4,4]
    color_data: bytes
    depth_data: bytes


def _read_exact(f: BinaryIO, n: int, scene: str, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SourceError(scene, str(path), f"truncated .sens file while reading {what} (wanted {n} bytes, got {len(data)})")
    return data


def read_sens_header(f: BinaryIO, scene: str, path: Path) -> SensHeader:
    (version,) = struct.unpack("<I", _read_exact(f, 4, scene, path, "version"))
    if version != 4:
        raise SourceError(scene, str(path), f"unsupported .sens version {version} (expected 4)")
    (name_len,) = struct.unpack("<Q", _read_exact(f, 8, scene, path, "sensor name length"))
    if name_len > 4096:
        raise SourceError(scene, str(path), f"implausible sensor name length {name_len}: not a .sens file?")
    name = _read_exact(f, name_len, scene, path, "sensor name").decode("utf-8", "replace")
    mats = [
        np.frombuffer(_read_exact(f, 64, scene, path, "calibration"), "<f4").reshape(4, 4).astype(np.float32)
        for _ in range(4)
    ]
    cc, dc = struct.unpack("<ii", _read_exact(f, 8, scene, path, "compression types"))
    cw, ch, dw, dh = struct.unpack("<4I", _read_exact(f, 16, scene, path, "image sizes"))
    (shift,) = struct.unpack("<f", _read_exact(f, 4, scene, path, "depth shift"))
    (n,) = struct.unpack("<Q", _read_exact(f, 8, scene, path, "frame count"))
    if cc not in _COLOR_COMPRESSION or dc not in _DEPTH_COMPRESSION:
        raise SourceError(scene, str(path), f"unknown compression types (colour {cc}, depth {dc})")
    return SensHeader(name, mats[0], mats[1], mats[2], mats[3], _COLOR_COMPRESSION[cc], _DEPTH_COMPRESSION[dc],
                      (ch, cw), (dh, dw), float(shift), int(n))


def read_sens(path: Path, scene: str, indices: Optional[set[int]] = None) -> tuple[SensHeader, list[SensFrame]]:
    """Header and the frames whose index is in ``indices`` (all if None).
    Unselected frames are skipped with seeks, so reading every 75th frame of a
    GB-sized file touches only those frames' bytes."""
    path = Path(path)
    frames: list[SensFrame] = []
    with open(path, "rb") as f:
        header = read_sens_header(f, scene, path)
        for i in range(header.num_frames):
            raw = _read_exact(f, _FRAME_HEADER.size, scene, path, f"frame {i} header")
            vals = _FRAME_HEADER.unpack(raw)
            c2w = np.asarray(vals[:16], np.float32).reshape(4, 4)
            csize, dsize = vals[18], vals[19]
            if indices is None or i in indices:
                cdata = _read_exact(f, csize, scene, path, f"frame {i} colour")
                ddata = _read_exact(f, dsize, scene, path, f"frame {i} depth")
                frames.append(SensFrame(i, c2w, cdata, ddata))
            else:
                f.seek(csize + dsize, 1)
            if indices is not None and len(frames) == len(indices):
                break
    return header, frames


def decode_sens_color(header: SensHeader, frame: SensFrame, scene: str, path: Path) -> np.ndarray:
    what = f"{path} (frame {frame.index} colour)"
    if header.color_compression in ("jpeg", "png"):
        rgb = decode_rgb(frame.color_data, scene, what)
    elif header.color_compression == "raw":
        h, w = header.color_size
        if len(frame.color_data) != h * w * 3:
            raise SourceError(scene, what, f"raw colour has {len(frame.color_data)} bytes, expected {h * w * 3}")
        rgb = np.frombuffer(frame.color_data, np.uint8).reshape(h, w, 3).copy()
    else:
        raise SourceError(scene, what, f"unsupported colour compression '{header.color_compression}'")
    if rgb.shape[:2] != header.color_size:
        raise SourceError(scene, what, f"colour image is {rgb.shape[:2]}, header says {header.color_size}")
    return rgb


def decode_sens_depth(header: SensHeader, frame: SensFrame, scene: str, path: Path) -> np.ndarray:
    """float32 [depth H, W] metres, NaN where the sensor read 0."""
    what = f"{path} (frame {frame.index} depth)"
    if header.depth_compression == "zlib_ushort":
        try:
            data = zlib.decompress(frame.depth_data)
        except zlib.error as exc:
            raise SourceError(scene, what, f"corrupt zlib depth ({exc})") from exc
    elif header.depth_compression == "raw_ushort":
        data = frame.depth_data
    else:
        raise SourceError(scene, what, f"unsupported depth compression '{header.depth_compression}'")
    h, w = header.depth_size
    if len(data) != h * w * 2:
        raise SourceError(scene, what, f"depth has {len(data)} bytes, expected {h * w * 2}")
    raw = np.frombuffer(data, "<u2").reshape(h, w)
    depth = raw.astype(np.float32) / np.float32(header.depth_shift)
    depth[raw == 0] = np.nan
    return depth


def scannet20_from_nyu40(nyu40: np.ndarray) -> np.ndarray:
    """int32 [N]: index into SCANNET20_NYU40_IDS, -1 for every other id."""
    lut = np.full(256, -1, np.int32)
    lut[list(SCANNET20_NYU40_IDS)] = np.arange(len(SCANNET20_NYU40_IDS), dtype=np.int32)
    nyu40 = np.asarray(nyu40).astype(np.int64)
    out = np.full(nyu40.shape, -1, np.int32)
    ok = (nyu40 >= 0) & (nyu40 < 256)
    out[ok] = lut[nyu40[ok]]
    return out


def read_label_map(path: Path, scene: str) -> dict[str, int]:
    """{raw_category: id} from ScanNet's scannetv2-labels.combined.tsv."""
    require_file(scene, path, "label map scannetv2-labels.combined.tsv")
    lines = path.read_text().splitlines()
    head = lines[0].split("\t") if lines else []
    if "raw_category" not in head or "id" not in head:
        raise SourceError(scene, str(path), "expected a tab-separated header with 'id' and 'raw_category'")
    i_id, i_raw = head.index("id"), head.index("raw_category")
    out = {}
    for n, ln in enumerate(lines[1:], 2):
        tok = ln.split("\t")
        if len(tok) <= max(i_id, i_raw):
            continue
        try:
            out[tok[i_raw]] = int(tok[i_id])
        except ValueError as exc:
            raise SourceError(scene, f"{path}:{n}", f"id is not an integer ({tok[i_id]!r})") from exc
    return out


def scannet200_from_aggregation(num_points: int, segs_path: Path, agg_path: Path, label_map: dict[str, int],
                                scene: str) -> np.ndarray:
    """int32 [N] ScanNet200 class index per vertex: each segment group's raw
    label -> category id (label map) -> index in SCANNET200_IDS; -1 for other
    categories and vertices of no group (later groups win, as Pointcept's
    preprocessing writes them)."""
    seg_indices, pairs = _segment_groups(num_points, segs_path, agg_path, scene, with_labels=True)
    lut = {cid: i for i, cid in enumerate(SCANNET200_IDS)}
    out = np.full(num_points, -1, np.int32)
    for _, segs, label in pairs:
        out[np.isin(seg_indices, segs)] = lut.get(label_map.get(label, 0), -1)
    return out


def _segment_groups(num_points: int, segs_path: Path, agg_path: Path, scene: str, with_labels: bool = False):
    try:
        seg_indices = np.asarray(json.loads(segs_path.read_text())["segIndices"], np.int64)
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(scene, str(segs_path), f"malformed segments json ({type(exc).__name__}: {exc})") from exc
    if len(seg_indices) != num_points:
        raise SourceError(scene, str(segs_path), f"segIndices has {len(seg_indices)} entries, mesh has {num_points} vertices")
    try:
        groups = json.loads(agg_path.read_text())["segGroups"]
        pairs = [(int(g["id"]), np.asarray(g["segments"], np.int64), str(g["label"]) if with_labels else None)
                 for g in groups]
    except (ValueError, KeyError, TypeError) as exc:
        raise SourceError(scene, str(agg_path), f"malformed aggregation json ({type(exc).__name__}: {exc})") from exc
    return seg_indices, pairs


def instances_from_aggregation(num_points: int, segs_path: Path, agg_path: Path, scene: str) -> np.ndarray:
    """int32 [N] instance id per vertex (the aggregation's group ``id``), -1 where
    no group claims the vertex's over-segment."""
    seg_indices, pairs = _segment_groups(num_points, segs_path, agg_path, scene)
    instance = np.full(num_points, -1, np.int32)
    for gid, segs, _ in pairs:
        instance[np.isin(seg_indices, segs)] = gid
    return instance


@register_source("scannet")
class ScanNetSource(AdapterBase):
    """Options: frame_gap (1), use_sensor_depth (False), labels ("scannet20" |
    "scannet200" | "nyu40" | "none"), label_map (None: <path>/scannetv2-labels.combined.tsv,
    or its parent's; used by scannet200), hash_mode ("stat")."""

    OPTIONS = {"use_sensor_depth": False, "labels": "scannet20", "label_map": None}

    def __init__(self, path, name=None, **options):
        super().__init__(path, name, **options)
        if self.options["labels"] not in ("scannet20", "scannet200", "nyu40", "none"):
            raise ValueError(f"source '{self.name}' (scannet): option labels must be scannet20, scannet200, nyu40 or none, got {self.options['labels']!r}")

    def _label_map_path(self) -> Path:
        if self.options["label_map"] is not None:
            return Path(self.options["label_map"])
        cands = [self.path / LABEL_MAP_NAME, self.path.parent / LABEL_MAP_NAME]
        return next((c for c in cands if c.is_file()), cands[0])

    def _scene_dirs(self) -> list[Path]:
        roots = [self.path / "scans", self.path / "scans_test"]
        roots = [r for r in roots if r.is_dir()] or [self.path]
        return sorted(d for r in roots for d in r.iterdir() if d.is_dir() and d.name.startswith("scene"))

    def _files(self, d: Path) -> dict[str, Path]:
        s = d.name
        return {
            "sens": d / f"{s}.sens",
            "mesh": d / f"{s}_vh_clean_2.ply",
            "labels": d / f"{s}_vh_clean_2.labels.ply",
            "segs": d / f"{s}_vh_clean_2.0.010000.segs.json",
            "aggregation": d / f"{s}.aggregation.json",
        }

    def discover(self) -> list[SceneRef]:
        refs = []
        extra = [self._label_map_path()] if self.options["labels"] == "scannet200" else []
        for d in self._scene_dirs():
            files = [p for p in list(self._files(d).values()) + extra if p.is_file()]
            refs.append(self.ref(d.name, files))
        return refs

    def _scene_dir(self, scene_id: str) -> Path:
        for d in self._scene_dirs():
            if d.name == scene_id:
                return d
        raise SourceError(self.key(scene_id), str(self.path), "scene directory not found")

    def load(self, ref: SceneRef) -> Scene:
        key = self.key(ref.scene_id)
        files = self._files(self._scene_dir(ref.scene_id))
        require_file(key, files["mesh"], "mesh _vh_clean_2.ply")
        require_file(key, files["sens"], "RGB-D stream .sens")
        points, _ = point_cloud_from_ply(files["mesh"], key)
        n = len(points)
        if self.options["labels"] == "scannet200":
            if files["segs"].is_file() and files["aggregation"].is_file():
                label_map = read_label_map(self._label_map_path(), key)
                points.segment = scannet200_from_aggregation(n, files["segs"], files["aggregation"], label_map, key)
        elif self.options["labels"] != "none" and files["labels"].is_file():
            props = read_ply(files["labels"], key)["vertex"]
            if "label" not in props:
                raise SourceError(key, str(files["labels"]), "no per-vertex 'label' property")
            if len(props["label"]) != n:
                raise SourceError(key, str(files["labels"]), f"{len(props['label'])} labels for {n} mesh vertices")
            nyu = props["label"].astype(np.int32)
            points.segment = scannet20_from_nyu40(nyu) if self.options["labels"] == "scannet20" else np.where(nyu > 0, nyu, -1).astype(np.int32)
        if files["segs"].is_file() and files["aggregation"].is_file():
            points.instance = instances_from_aggregation(n, files["segs"], files["aggregation"], key)

        frames, skipped = self._frames(files["sens"], key)
        scene = Scene(
            scene_id=ref.scene_id, source=self.name, points=points, frames=frames,
            mesh_path=files["mesh"], content_hash=ref.content_hash,
            meta={"dataset": "scannet", "skipped_frames": skipped, LEGACY_FRAME_GAP: self.frame_gap},
        )
        return scene.validate()

    def _frames(self, sens: Path, key: str) -> tuple[list[Frame], list[str]]:
        with open(sens, "rb") as f:
            header = read_sens_header(f, key, sens)
        wanted = set(range(0, header.num_frames, self.frame_gap))
        header, raw_frames = read_sens(sens, key, wanted)
        K = header.intrinsic_color[:3, :3].astype(np.float32)
        K_depth = header.intrinsic_depth[:3, :3].astype(np.float64)
        depth_to_color = np.linalg.inv(header.extrinsic_color.astype(np.float64)) @ header.extrinsic_depth.astype(np.float64)
        frames, skipped = [], []
        for fr in raw_frames:
            name = str(fr.index)
            if not pose_is_valid(fr.camera_to_world):
                skipped.append(name)  # lost tracking: ScanNet writes -inf poses
                continue
            rgb = decode_sens_color(header, fr, key, sens)
            depth = None
            if self.options["use_sensor_depth"]:
                depth = decode_sens_depth(header, fr, key, sens)
                if depth.shape != rgb.shape[:2] or not np.allclose(K_depth, K) or not np.allclose(depth_to_color, np.eye(4)):
                    depth = reproject_depth(depth, K_depth, K.astype(np.float64), rgb.shape[:2], depth_to_color)
                    scale = K[0, 0] / K_depth[0, 0]
                    depth = fill_holes_min(depth, iterations=max(0, math.ceil(scale) - 1))
            frames.append(Frame(name=name, rgb=rgb, K=K.copy(), pose=fr.camera_to_world.copy(), depth=depth))
        return frames, skipped
