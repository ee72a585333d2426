"""RealEstate10K adapter: published camera files + frames you extracted, lifted
to scenes view group by view group (Concerto lifts RE10K with VGGT).

Expected layout under the dataset path::

    <root>/<split>/<clip_id>.txt             camera files exactly as published
                                             (split: "train" or "test")
    <root>/frames/<clip_id>/<timestamp>.png  frames extracted from the video at the
                                             camera file's timestamps (.jpg too;
                                             <root>/frames/<split>/<clip_id>/ also works)
    <root>/depth/<clip_id>/<timestamp>.npy   optional, only for lifter="given-depth":
                                             float32 z-depth [H,W] at the frame size,
                                             in the camera file's units

Camera file format (google.github.io/realestate10k): line 1 is the YouTube URL;
every further line has 19 columns: timestamp (int, microseconds since the start
of the video), fx fy cx cy (normalised: the image's top-left corner is (0,0),
bottom-right (1,1)), two unused zeros, then the 3x4 world-to-camera matrix
[R|t] row-major (OpenCV axes). In pixels of a W x H frame with pixel centres at
integers: fx*W, fy*H, cx*W - 0.5, cy*H - 0.5.

View groups (Concerto's RE10K preprocessing): start at a random frame, then grow
the group to ``num_views`` by stepping outward from its first/last frame by at
least ``view_gap_min`` (15) frames; a candidate j for anchor i is valid if the
score |euler_i - euler_j| (degrees, xyz, L2) + 20 |c_i - c_j| (camera centres)
lies in [``overlap_min``, ``overlap_max``] (5, 40); the scan stops when the
score drops below the range or the gap exceeds ``view_gap_max`` (135); one
valid candidate is drawn at random. (The option is not called ``frame_gap``:
that name is the build's per-source image gap, 1 for RE10K groups.)
The first ``groups_per_clip`` complete groups are kept (the reference keeps
one). Only frames present on disk can be chosen. Euler differences are wrapped
to [-180, 180) (the reference does not wrap).

Each group becomes one scene ``<clip_id>-g<k>``, lifted by a ``Lifter``
(``VGGTLifter`` by default; ``GivenDepthLifter`` when depth comes with the data)
and normalised by ``preprocess.lift.lifter.scene_from_views``.

``recipe`` (default "released"): "released" follows Pointcept's released
``preprocessing/concerto/re10k`` script: VGGT's point head, confidence > 0,
no subsampling, each point paired with its own pixel only (the lifting options
conf_threshold, conf_percentile, voxel_size, max_points are then not used);
"paper" follows the paper's text: depth head, the 50th-percentile confidence
(``conf_percentile``), voxel subsampling, and correspondences by the build's
cross-view depth check. The content hash
covers the camera file, the group's frames (and depth files) and the options.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from preprocess.scene import Scene
from preprocess.sources._common import AdapterBase, hashed_options, read_rgb, require_file, scene_hash
from preprocess.sources.base import SceneRef, SourceError, register_source

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
EULER_DISTANCE_WEIGHT = 20.0  # metres -> "degrees" in the overlap score


@dataclass
class Re10kClip:
    """One camera file. timestamps int64 [N] (microseconds); intrinsics float64
    [N,4] normalised (fx, fy, cx, cy); w2c float64 [N,3,4] world-to-camera."""

    clip_id: str
    url: str
    timestamps: np.ndarray
    intrinsics: np.ndarray
    w2c: np.ndarray

    def __len__(self) -> int:
        return int(len(self.timestamps))

    def pixel_K(self, i: int, width: int, height: int) -> np.ndarray:
        """[3,3] pixel intrinsics of frame i for a W x H image (pixel centres at
        integer coordinates)."""
        fx, fy, cx, cy = self.intrinsics[i]
        return np.array([[fx * width, 0, cx * width - 0.5], [0, fy * height, cy * height - 0.5], [0, 0, 1]])

    def poses(self) -> np.ndarray:
        """Camera-to-world [N,4,4] (rigid inverse of the world-to-camera rows)."""
        from preprocess.geometry import extrinsic_to_pose

        return extrinsic_to_pose(self.w2c)


def parse_camera_file(path: Path, scene: str = "") -> Re10kClip:
    """Read a RealEstate10K camera file; SourceError names the file and line."""
    scene = scene or path.stem
    require_file(scene, path, "RealEstate10K camera file")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(scene, str(path), f"cannot read camera file ({e})") from e
    if not lines or not lines[0].strip():
        raise SourceError(scene, str(path), "empty camera file (line 1 should be the video URL)")
    url = lines[0].strip()
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split()
        if len(cols) != 19:
            raise SourceError(scene, f"{path}:{n}", f"expected 19 columns (timestamp, 4 intrinsics, 2 zeros, 12 pose values), got {len(cols)}")
        try:
            ts = int(cols[0])
            vals = [float(c) for c in cols[1:]]
        except ValueError as e:
            raise SourceError(scene, f"{path}:{n}", f"non-numeric value ({e})") from e
        if not np.all(np.isfinite(vals)):
            raise SourceError(scene, f"{path}:{n}", "NaN/inf in intrinsics or pose")
        if vals[0] <= 0 or vals[1] <= 0:
            raise SourceError(scene, f"{path}:{n}", f"focal lengths must be positive, got fx={vals[0]}, fy={vals[1]}")
        rows.append((ts, vals))
    if not rows:
        raise SourceError(scene, str(path), "no frame lines after the URL")
    ts = np.array([r[0] for r in rows], np.int64)
    vals = np.array([r[1] for r in rows], np.float64)
    if np.any(np.diff(ts) <= 0):
        bad = int(np.argmax(np.diff(ts) <= 0)) + 3
        raise SourceError(scene, f"{path}:{bad}", "timestamps are not strictly increasing")
    return Re10kClip(path.stem, url, ts, vals[:, :4], vals[:, 6:].reshape(-1, 3, 4))


def write_camera_file(path: Path, url: str, timestamps: Sequence[int], intrinsics: np.ndarray, w2c: np.ndarray) -> None:
    """Write a camera file in the published format (for tests and tools)."""
    lines = [url]
    for t, k, P in zip(timestamps, np.asarray(intrinsics), np.asarray(w2c)):
        vals = [*(f"{x:.9g}" for x in k), "0", "0", *(f"{x:.9g}" for x in np.asarray(P).reshape(12))]
        lines.append(" ".join([str(int(t))] + vals))
    Path(path).write_text("\n".join(lines) + "\n")


# --- view-group selection ------------------------------------------------------

def overlap_score(euler_a: np.ndarray, euler_b: np.ndarray, centre_a: np.ndarray, centre_b: np.ndarray) -> float:
    """|delta euler| (degrees, wrapped, L2) + 20 * |delta centre| (L2)."""
    d = (np.asarray(euler_a) - np.asarray(euler_b) + 180.0) % 360.0 - 180.0
    return float(np.linalg.norm(d) + EULER_DISTANCE_WEIGHT * np.linalg.norm(np.asarray(centre_a) - centre_b))


def select_view_groups(poses: np.ndarray, num_views: int = 4, view_gap: tuple[int, int] = (15, 135),
                       overlap_range: tuple[float, float] = (5.0, 40.0), max_groups: int = 1,
                       available: Optional[np.ndarray] = None, rng: Optional[np.random.Generator] = None) -> list[list[int]]:
    """Groups of ``num_views`` frame indices (ascending) from camera-to-world
    ``poses`` [N,4,4], chosen as described in the module docstring."""
    from scipy.spatial.transform import Rotation

    poses = np.asarray(poses, np.float64)
    n = len(poses)
    rng = rng or np.random.default_rng(0)
    avail = np.ones(n, bool) if available is None else np.asarray(available, bool)
    euler = Rotation.from_matrix(poses[:, :3, :3]).as_euler("xyz", degrees=True)
    centre = poses[:, :3, 3]
    gap_min, gap_max = view_gap
    lo, hi = overlap_range
    groups: list[list[int]] = []
    for start in rng.permutation(n):
        if not avail[start]:
            continue
        chosen = [int(start)]
        while len(chosen) < num_views:
            candidates = []
            for step in (1, -1):
                anchor = max(chosen) if step > 0 else min(chosen)
                j = anchor + step * gap_min
                while 0 <= j < n:
                    score = overlap_score(euler[anchor], euler[j], centre[anchor], centre[j])
                    if avail[j] and lo <= score <= hi:
                        candidates.append(j)
                    if score < lo or abs(j - anchor) > gap_max:
                        break
                    j += step
            if not candidates:
                break
            chosen.append(int(candidates[rng.integers(len(candidates))]))
        group = sorted(chosen)
        if len(group) == num_views and group not in groups:
            groups.append(group)
            if len(groups) >= max_groups:
                break
    return groups


# --- adapter ---------------------------------------------------------------------

@register_source("re10k")
class Re10kSource(AdapterBase):
    """RealEstate10K clips -> one lifted scene per view group (see module doc).

    Options: split, lifter ("vggt", "given-depth" or a ``Lifter`` object),
    checkpoint and device (for "vggt"), num_views, view_gap_min/max (frames
    between neighbouring views, 15/135), overlap_min/max (score range, 5/40),
    groups_per_clip, seed, recipe ("released" | "paper"), and the lifting
    options of ``LiftOptions`` (conf_threshold, conf_percentile, target_height,
    height_percentile, voxel_size, max_points, require_floor; the "released"
    recipe fixes the confidence and subsampling ones). ``frame_gap`` keeps every Nth
    camera-file row before selection (gaps then count kept rows)."""

    OPTIONS = {
        "split": "train", "lifter": "vggt", "checkpoint": "facebook/VGGT-1B", "device": None,
        "num_views": 4, "view_gap_min": 15, "view_gap_max": 135, "overlap_min": 5.0, "overlap_max": 40.0,
        "groups_per_clip": 1, "seed": 123,
        "conf_threshold": None, "conf_percentile": 50.0, "target_height": 3.0, "height_percentile": 0.0,
        "voxel_size": 0.02,
        "max_points": 200_000, "require_floor": True, "recipe": "released",
    }

    def __init__(self, path, name=None, **options):
        super().__init__(path, name=name, **options)
        lifter = self.options["lifter"]
        if isinstance(lifter, str) and lifter not in ("vggt", "given-depth"):
            raise ValueError(f"source '{self.name}' (re10k): option lifter must be 'vggt', 'given-depth' or a Lifter, got {lifter!r}")
        self._lifter = None if isinstance(lifter, str) else lifter
        from preprocess.lift.lifter import RECIPES

        if self.options["recipe"] not in RECIPES:
            raise ValueError(f"source '{self.name}' (re10k): option recipe must be one of {RECIPES}, got {self.options['recipe']!r}")
        self._groups: dict[str, list[list[int]]] = {}

    def __getstate__(self):  # a loaded network is not shipped to workers
        state = dict(self.__dict__)
        if isinstance(self.options["lifter"], str):
            state["_lifter"] = None
        return state

    def options_key(self) -> str:
        opts = hashed_options(self.options)
        lifter = opts["lifter"]
        opts["lifter"] = lifter if isinstance(lifter, str) else getattr(lifter, "name", type(lifter).__name__)
        opts.pop("device")  # where it runs does not change what it computes
        return "re10k|" + "|".join(f"{k}={opts[k]!r}" for k in sorted(opts))

    @property
    def lifter_name(self) -> str:
        lifter = self.options["lifter"]
        return lifter if isinstance(lifter, str) else getattr(lifter, "name", "")

    # -- layout
    def _camera_dir(self) -> Path:
        d = self.path / str(self.options["split"])
        return d if d.is_dir() else self.path

    def _frame_dir(self, clip_id: str) -> Path:
        for d in (self.path / "frames" / clip_id, self.path / "frames" / str(self.options["split"]) / clip_id):
            if d.is_dir():
                return d
        return self.path / "frames" / clip_id

    def _frame_files(self, clip_id: str) -> dict[int, Path]:
        d = self._frame_dir(clip_id)
        out = {}
        if d.is_dir():
            for f in d.iterdir():
                if f.suffix.lower() in IMAGE_SUFFIXES and f.stem.isdigit():
                    out[int(f.stem)] = f
        return out

    def _depth_file(self, clip_id: str, ts: int) -> Path:
        return self.path / "depth" / clip_id / f"{ts}.npy"

    def clip_ids(self) -> list[str]:
        return sorted(p.stem for p in self._camera_dir().glob("*.txt"))

    def read_clip(self, clip_id: str) -> Re10kClip:
        clip = parse_camera_file(self._camera_dir() / f"{clip_id}.txt", scene=self.key(clip_id))
        if self.frame_gap > 1:
            keep = slice(None, None, self.frame_gap)
            clip = Re10kClip(clip.clip_id, clip.url, clip.timestamps[keep], clip.intrinsics[keep], clip.w2c[keep])
        return clip

    def _clip_rng(self, clip_id: str) -> np.random.Generator:
        # per-clip stream: a clip's groups do not depend on which other clips exist
        digest = hashlib.sha1(f"{self.options['seed']}|{clip_id}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def groups(self, clip_id: str, clip: Optional[Re10kClip] = None) -> list[list[int]]:
        """View groups (row indices into the camera file) of a clip, cached."""
        if clip_id not in self._groups:
            clip = clip or self.read_clip(clip_id)
            files = self._frame_files(clip_id)
            available = np.array([int(t) in files for t in clip.timestamps])
            if self.lifter_name == "given-depth":
                available &= np.array([self._depth_file(clip_id, int(t)).is_file() for t in clip.timestamps])
            self._groups[clip_id] = select_view_groups(
                clip.poses(), int(self.options["num_views"]),
                (int(self.options["view_gap_min"]), int(self.options["view_gap_max"])),
                (float(self.options["overlap_min"]), float(self.options["overlap_max"])),
                int(self.options["groups_per_clip"]), available,
                self._clip_rng(clip_id),
            )
        return self._groups[clip_id]

    def _group_files(self, clip_id: str, clip: Re10kClip, group: Sequence[int]) -> list[Path]:
        files = self._frame_files(clip_id)
        out = [self._camera_dir() / f"{clip_id}.txt"] + [files[int(clip.timestamps[i])] for i in group]
        if self.lifter_name == "given-depth":
            out += [self._depth_file(clip_id, int(clip.timestamps[i])) for i in group]
        return out

    def discover(self) -> list[SceneRef]:
        refs = []
        for clip_id in self.clip_ids():
            try:
                clip = self.read_clip(clip_id)
                groups = self.groups(clip_id, clip)
            except SourceError as e:  # one bad camera file never sinks the build
                log.warning("skipping clip: %s", e)
                continue
            if not groups:
                log.info("clip %s: no %d-view group satisfies the gap/overlap rules with the frames on disk",
                         self.key(clip_id), self.options["num_views"])
            for k, group in enumerate(groups):
                scene_id = f"{clip_id}-g{k}"
                refs.append(SceneRef(self.name, scene_id, scene_hash(self._group_files(clip_id, clip, group),
                                                                     self.options_key(), self.options["hash_mode"])))
        return refs

    def _get_lifter(self):
        if self._lifter is None:
            from preprocess.lift.lifter import GivenDepthLifter, VGGTLifter

            if self.options["lifter"] == "given-depth":
                self._lifter = GivenDepthLifter()
            else:
                self._lifter = VGGTLifter(checkpoint=self.options["checkpoint"], device=self.options["device"],
                                          point_head=self.options["recipe"] == "released")
        return self._lifter

    def lift_options(self):
        from preprocess.lift.lifter import LiftOptions

        o = self.options
        return LiftOptions(conf_threshold=o["conf_threshold"], conf_percentile=o["conf_percentile"],
                           target_height=o["target_height"], height_percentile=float(o["height_percentile"]),
                           voxel_size=o["voxel_size"], max_points=o["max_points"],
                           require_floor=o["require_floor"], seed=int(o["seed"]), recipe=o["recipe"])

    def load(self, ref: SceneRef) -> Scene:
        from preprocess.lift.lifter import LiftError, scene_from_views

        key = self.key(ref.scene_id)
        clip_id, sep, k = ref.scene_id.rpartition("-g")
        if not sep or not k.isdigit():
            raise SourceError(key, "scene id", "expected '<clip_id>-g<k>'")
        clip = self.read_clip(clip_id)
        groups = self.groups(clip_id, clip)
        if int(k) >= len(groups):
            raise SourceError(key, "view group", f"clip has {len(groups)} group(s) with the frames on disk")
        group = groups[int(k)]
        files = self._frame_files(clip_id)
        images, Ks, depth = [], [], []
        for i in group:
            ts = int(clip.timestamps[i])
            rgb = read_rgb(files[ts], key)
            if images and rgb.shape != images[0].shape:
                raise SourceError(key, str(files[ts]), f"frame size {rgb.shape[:2]} differs from {images[0].shape[:2]}")
            images.append(rgb)
            Ks.append(clip.pixel_K(i, rgb.shape[1], rgb.shape[0]))
            if self.lifter_name == "given-depth":
                depth.append(self._read_depth(key, self._depth_file(clip_id, ts), rgb.shape[:2]))
        poses = clip.poses()[group]
        lifter = self._get_lifter()
        try:
            views = lifter.lift(images, K=np.stack(Ks), pose=poses, depth=depth or None)
        except ValueError as e:
            raise SourceError(key, f"lifter '{self.lifter_name}'", str(e)) from e
        views.names = [str(int(clip.timestamps[i])) for i in group]
        meta = dict(clip=clip_id, url=clip.url, group=k, frame_rows=[int(i) for i in group],
                    timestamps=[int(clip.timestamps[i]) for i in group])
        try:
            return scene_from_views(views, ref.scene_id, self.name, self.lift_options(),
                                    content_hash=ref.content_hash, meta=meta)
        except LiftError as e:
            raise SourceError(key, e.step, str(e)) from e

    @staticmethod
    def _read_depth(key: str, path: Path, hw: tuple[int, int]) -> np.ndarray:
        require_file(key, path, "depth map")
        try:
            d = np.load(path, allow_pickle=False)
        except Exception as e:
            raise SourceError(key, str(path), f"cannot read depth ({type(e).__name__}: {e})") from e
        if d.shape != tuple(hw):
            raise SourceError(key, str(path), f"depth is {list(d.shape)}, frame is {list(hw)}")
        return d.astype(np.float32)
