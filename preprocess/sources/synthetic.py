"""``synthetic``: procedurally generated indoor rooms, written to disk like a
real dataset so the whole pipeline can run without downloads.

On ``discover()`` each room ``room{i:03d}_seed{seed}`` is generated (only if its
files are missing or were made with other settings) under ``path/<scene_id>/``:

- ``mesh.ply``: binary PLY, per-face colour, semantic ``label`` and ``instance``
  (see ``preprocess.procedural.labeled_ply``); classes in ``CLASS_NAMES``.
- ``cameras.json``: width, height and per frame K [3,3] and a camera-to-world
  pose [4,4] in OpenCV axes (x right, y down, z forward), metres, z-up world.
- ``params.json``: the generation settings (written last: marks the room done).

``load(ref)`` returns a Scene whose points are sampled from the mesh surface
(area-weighted, seeded) with the face's colour, normal, label and instance;
frames carry rgb rendered from the mesh colours and ``depth=None``, so the
depth stage (``preprocess.render.complete_depth``) fills depth exactly as it
does for real datasets with a ground-truth mesh.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from preprocess.procedural.labeled_ply import LabeledMesh, LabeledPlyError, read_labeled_ply, write_labeled_ply
from preprocess.procedural.rooms import CLASS_NAMES, RoomConfig, generate_room
from preprocess.scene import Frame, PointCloud, Scene, SceneValidationError
from preprocess.sources.base import SceneRef, SourceError, hash_files, register_source
from preprocess.atomic_file import atomic_write

GENERATOR_VERSION = 1
MESH_FILE, CAMERA_FILE, PARAMS_FILE = "mesh.ply", "cameras.json", "params.json"


@register_source("synthetic")
class SyntheticSource:
    """Procedural rooms under ``path``. Sizes are small by default so a full
    pipeline run takes seconds; every one is configurable."""

    def __init__(
        self,
        path,
        name: str | None = None,
        num_scenes: int = 4,
        seed: int = 0,
        room_size_min=(4.0, 3.5, 2.5),
        room_size_max=(7.0, 5.5, 3.1),
        num_objects=(5, 9),
        frames_per_scene: int = 16,
        image_width: int = 320,
        image_height: int = 240,
        hfov_deg: float = 75.0,
        camera_height: float = 1.5,
        cell_size: float = 0.25,
        points_per_scene: int = 30_000,
        render_backend: str = "auto",
        palette: str = "class",
    ):
        self.path = Path(path)
        self.name = name or self.kind
        self.num_scenes = int(num_scenes)
        self.seed = int(seed)
        self.points_per_scene = int(points_per_scene)
        self.render_backend = render_backend
        if self.num_scenes < 0 or self.points_per_scene <= 0:
            raise ValueError("synthetic source: num_scenes must be >= 0 and points_per_scene > 0")
        self.config = RoomConfig(
            room_size_min=tuple(float(x) for x in room_size_min),
            room_size_max=tuple(float(x) for x in room_size_max),
            num_objects=(int(num_objects[0]), int(num_objects[1])),
            frames=int(frames_per_scene),
            width=int(image_width),
            height=int(image_height),
            hfov_deg=float(hfov_deg),
            camera_height=float(camera_height),
            cell_size=float(cell_size),
            palette=str(palette),
        )

    # -- discovery / generation -------------------------------------------------
    def scene_id(self, index: int) -> str:
        return f"room{index:03d}_seed{self.seed}"

    def _params(self, index: int) -> dict:
        config = asdict(self.config)
        if config["palette"] == "class":  # the default: rooms generated before the option stay current
            del config["palette"]
        return {"version": GENERATOR_VERSION, "seed": self.seed, "index": index, "config": config}

    def discover(self) -> list[SceneRef]:
        refs = []
        for i in range(self.num_scenes):
            sid = self.scene_id(i)
            folder = self.path / sid
            if not self._is_current(folder, i):
                self._generate(folder, i)
            extra = json.dumps({"points_per_scene": self.points_per_scene, "seed": self.seed}, sort_keys=True)
            refs.append(SceneRef(self.name, sid, hash_files([folder / MESH_FILE, folder / CAMERA_FILE], extra=extra)))
        return refs

    def _is_current(self, folder: Path, index: int) -> bool:
        try:
            params = json.loads((folder / PARAMS_FILE).read_text())
        except (OSError, ValueError):
            return False
        return params == json.loads(json.dumps(self._params(index))) and all(
            (folder / f).is_file() for f in (MESH_FILE, CAMERA_FILE)
        )

    def _generate(self, folder: Path, index: int) -> None:
        room = generate_room(self.seed, index, self.config)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PARAMS_FILE).unlink(missing_ok=True)  # not done until rewritten
        cameras = {
            "width": room.width,
            "height": room.height,
            "convention": "K: pixel centres at integer coords; pose: camera-to-world, OpenCV axes, metres",
            "frames": [
                {"name": f"frame{i:04d}", "K": room.K.tolist(), "pose": pose.tolist()} for i, pose in enumerate(room.poses)
            ],
        }
        atomic_write(folder / MESH_FILE, lambda p: write_labeled_ply(p, room.mesh))
        atomic_write(folder / CAMERA_FILE, lambda p: p.write_text(json.dumps(cameras, indent=1, sort_keys=True)))
        atomic_write(folder / PARAMS_FILE, lambda p: p.write_text(json.dumps(self._params(index), indent=1, sort_keys=True)))

    # -- loading -------------------------------------------------------------------
    def load(self, ref: SceneRef) -> Scene:
        folder = self.path / ref.scene_id
        key = f"{self.name}/{ref.scene_id}"
        try:
            mesh = read_labeled_ply(folder / MESH_FILE)
        except LabeledPlyError as exc:
            raise SourceError(key, MESH_FILE, str(exc)) from exc
        frames_meta = _read_cameras(key, folder / CAMERA_FILE)
        index = _index_of(ref.scene_id)
        points = sample_surface_points(mesh, self.points_per_scene, np.random.default_rng([self.seed, index, 1]))

        from preprocess.render import CameraError, make_renderer  # heavy backends load lazily

        frames = []
        with make_renderer(mesh.to_trimesh(), backend=self.render_backend, with_color=True) as renderer:
            for name, K, pose, (w, h) in frames_meta:
                try:
                    rgb = renderer.render(K, pose, w, h).rgb
                except CameraError as exc:  # e.g. a NaN pose: name the scene and the camera
                    raise SourceError(key, f"{CAMERA_FILE}: frame {name}", str(exc)) from exc
                frames.append(Frame(name=name, rgb=rgb, K=K.astype(np.float32), pose=pose.astype(np.float32), depth=None))
        scene = Scene(
            scene_id=ref.scene_id,
            source=self.name,
            points=points,
            frames=frames,
            mesh_path=folder / MESH_FILE,
            content_hash=ref.content_hash,
            meta={"class_names": list(CLASS_NAMES), "generator_version": GENERATOR_VERSION, "render_rgb": False},
        )
        try:
            return scene.validate()
        except SceneValidationError as exc:
            raise SourceError(key, exc.field, exc.message) from exc


def sample_surface_points(mesh: LabeledMesh, count: int, rng: np.random.Generator) -> PointCloud:
    """``count`` points uniform over the surface area: coord float32 [N,3] m, the
    face's colour, unit normal (u x v winding: into the room for walls, out of
    objects), semantic label and instance id."""
    v = mesh.vertices.astype(np.float64)
    tri = v[mesh.faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    cross = np.cross(e1, e2)
    area = 0.5 * np.linalg.norm(cross, axis=1)
    face = rng.choice(len(area), size=count, p=area / area.sum())
    r = rng.random((count, 2))
    flip = r.sum(axis=1) > 1.0
    r[flip] = 1.0 - r[flip]  # fold the square onto the triangle
    coord = tri[face, 0] + r[:, :1] * e1[face] + r[:, 1:] * e2[face]
    normal = cross[face] / (2.0 * area[face, None])
    return PointCloud(
        coord=coord.astype(np.float32),
        color=mesh.face_colors[face].copy(),
        normal=normal.astype(np.float32),
        segment=mesh.face_labels[face].copy(),
        instance=mesh.face_instances[face].copy(),
    )


def _read_cameras(key: str, path: Path) -> list[tuple[str, np.ndarray, np.ndarray, tuple[int, int]]]:
    try:
        data = json.loads(path.read_text())
        w, h = int(data["width"]), int(data["height"])
        out = []
        for i, f in enumerate(data["frames"]):
            K, pose = np.asarray(f["K"], np.float64), np.asarray(f["pose"], np.float64)
            if K.shape != (3, 3) or pose.shape != (4, 4):
                raise ValueError(f"frame {i}: K must be [3,3] and pose [4,4], got {list(K.shape)}, {list(pose.shape)}")
            out.append((str(f["name"]), K, pose, (w, h)))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(key, str(path), f"bad camera file ({type(exc).__name__}: {exc})") from exc
    return out


def _index_of(scene_id: str) -> int:
    return int(scene_id.split("_")[0][len("room"):])

