"""Procedural indoor rooms: a floor, four walls, a ceiling and furniture built
from boxes and cylinders, with per-face colour patterns, semantic labels and
instance ids, plus a camera trajectory inside the room.

World frame: metres, z up, floor at z = 0, room spans [0, Lx] x [0, Ly] x [0, Lz].
Cameras: K [3,3] (pixel centres at integer coords) and camera-to-world poses in
OpenCV axes (x right, y down, z forward), ~1.5 m high, looking across the room.
Everything is a pure function of (config, seed): the same inputs give the same
arrays bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from preprocess.geometry import look_at
from preprocess.procedural.labeled_ply import LabeledMesh

CLASS_NAMES = ("floor", "wall", "ceiling", "table", "chair", "cabinet", "bed", "column", "sofa", "shelf")
CLASS_ID = {name: i for i, name in enumerate(CLASS_NAMES)}

# Two tones per class; patterns alternate between them (checker or stripes).
_PALETTE = {
    "floor": ((150, 111, 75), (196, 160, 118)),
    "wall": ((214, 206, 190), (170, 186, 204)),
    "ceiling": ((238, 238, 232), (205, 205, 200)),
    "table": ((120, 72, 40), (160, 100, 55)),
    "chair": ((40, 90, 150), (70, 130, 190)),
    "cabinet": ((225, 225, 225), (120, 120, 120)),
    "bed": ((175, 40, 55), (240, 225, 210)),
    "column": ((140, 140, 150), (90, 90, 100)),
    "sofa": ((60, 130, 70), (110, 170, 100)),
    "shelf": ((200, 160, 60), (90, 60, 30)),
}
_WALL_OBJECTS = ("cabinet", "bed", "sofa", "shelf")
_FREE_OBJECTS = ("table", "chair", "column")


@dataclass(frozen=True)
class RoomConfig:
    """Ranges are (min, max), sampled uniformly per room."""

    room_size_min: tuple[float, float, float] = (4.0, 3.5, 2.5)
    room_size_max: tuple[float, float, float] = (7.0, 5.5, 3.1)
    num_objects: tuple[int, int] = (5, 9)
    frames: int = 16
    width: int = 320
    height: int = 240
    hfov_deg: float = 75.0
    camera_height: float = 1.5
    cell_size: float = 0.25  # tessellation of floors/walls (texture resolution), metres
    # "class": each class has its own two tones (colour alone tells the class);
    # "instance": every instance (each wall, the floor, each piece of furniture) draws
    # two random tones, so colour says nothing about the class (same geometry and
    # cameras as "class": the tones come from their own RNG)
    palette: str = "class"


@dataclass
class Room:
    mesh: LabeledMesh
    K: np.ndarray  # float64 [3,3]
    poses: list[np.ndarray] = field(default_factory=list)  # float64 [4,4] camera-to-world, OpenCV
    width: int = 0
    height: int = 0
    size: tuple[float, float, float] = (0.0, 0.0, 0.0)


class _MeshBuilder:
    """Accumulates patterned, labelled quads."""

    def __init__(self, rng: np.random.Generator, palette: str = "class", palette_key: tuple = ()):
        if palette not in ("class", "instance"):
            raise ValueError(f"room palette must be 'class' or 'instance', got {palette!r}")
        self.rng = rng
        self.palette, self.palette_key = palette, tuple(int(k) for k in palette_key)
        self._instance_tones: dict[int, np.ndarray] = {}
        self.vertices: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.colors: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.instances: list[np.ndarray] = []
        self.nv = 0
        self.next_instance = 0

    def tones(self, label: str, instance: int) -> np.ndarray:
        """int64 [2, 3]: the two tones of ``label`` (palette "class") or of ``instance``."""
        if self.palette == "class":
            return np.asarray(_PALETTE[label], np.int64)
        if instance not in self._instance_tones:
            rng = np.random.default_rng([*self.palette_key, 7, instance])
            self._instance_tones[instance] = rng.integers(30, 231, size=(2, 3)).astype(np.int64)
        return self._instance_tones[instance]

    def new_instance(self) -> int:
        self.next_instance += 1
        return self.next_instance - 1

    def quad(self, origin, u, v, cell: float, label: str, instance: int, pattern: str = "checker", tile: float = 0.5):
        """Rectangle origin + [0,1]u + [0,1]v split into cells of about ``cell``
        metres; normal along u x v. Colour per cell from the class's two tones,
        by ``pattern`` ("checker", "stripes_u", "stripes_v", "plain") over tiles of ``tile`` m,
        plus small per-cell noise so images carry texture."""
        origin, u, v = (np.asarray(a, np.float64) for a in (origin, u, v))
        lu, lv = np.linalg.norm(u), np.linalg.norm(v)
        nu, nv = max(1, int(np.ceil(lu / cell - 1e-9))), max(1, int(np.ceil(lv / cell - 1e-9)))
        a = np.linspace(0.0, 1.0, nu + 1)
        b = np.linspace(0.0, 1.0, nv + 1)
        grid = origin + a[:, None, None] * u + b[None, :, None] * v  # [nu+1, nv+1, 3]
        ids = np.arange((nu + 1) * (nv + 1)).reshape(nu + 1, nv + 1) + self.nv
        p00, p10, p11, p01 = ids[:-1, :-1], ids[1:, :-1], ids[1:, 1:], ids[:-1, 1:]
        faces = np.stack(
            [np.stack([p00, p10, p11], -1), np.stack([p00, p11, p01], -1)], axis=2
        ).reshape(-1, 3)  # cell-major: both triangles of a cell are adjacent
        centre_u = (a[:-1] + a[1:]) / 2 * lu
        centre_v = (b[:-1] + b[1:]) / 2 * lv
        tu = np.floor(centre_u / tile).astype(int)[:, None]
        tv = np.floor(centre_v / tile).astype(int)[None, :]
        if pattern == "checker":
            which = (tu + tv) % 2
        elif pattern == "stripes_u":
            which = np.broadcast_to(tu % 2, (nu, nv))
        elif pattern == "stripes_v":
            which = np.broadcast_to(tv % 2, (nu, nv))
        else:
            which = np.zeros((nu, nv), int)
        tones = self.tones(label, instance)
        cell_rgb = tones[which.reshape(-1)] + self.rng.integers(-10, 11, size=(nu * nv, 3))
        rgb = np.repeat(np.clip(cell_rgb, 0, 255).astype(np.uint8), 2, axis=0)
        self._add(grid.reshape(-1, 3), faces, rgb, label, instance)

    def box(self, centre_xy, yaw: float, size, z0: float, label: str, instance: int, cell: float = 0.15,
            pattern: str = "checker", bottom: bool | None = None):
        """Box of size (sx, sy, sz) standing at height z0, centred on centre_xy,
        rotated by yaw about z; outward normals. The bottom face is left out
        when the box stands on the floor (nothing can see it)."""
        sx, sy, sz = size
        c, s = np.cos(yaw), np.sin(yaw)
        ex, ey, ez = np.array([c, s, 0.0]) * sx, np.array([-s, c, 0.0]) * sy, np.array([0.0, 0.0, sz])
        m = np.array([centre_xy[0], centre_xy[1], z0]) - ex / 2 - ey / 2
        tile = max(cell * 2, 0.1)
        sides = [
            (m + ez, ex, ey),  # top (+z)
            (m, ex, ez),  # -y side
            (m + ey, ez, ex),  # +y side
            (m, ez, ey),  # -x side
            (m + ex, ey, ez),  # +x side
        ]
        if bottom if bottom is not None else z0 > 1e-6:
            sides.append((m, ey, ex))  # bottom (-z)
        for origin, u, v in sides:
            self.quad(origin, u, v, cell, label, instance, pattern=pattern, tile=tile)

    def cylinder(self, centre_xy, radius: float, z0: float, z1: float, label: str, instance: int, sections: int = 24):
        """Vertical cylinder with stripes around it and a top cap; no bottom cap."""
        ang = np.linspace(0.0, 2 * np.pi, sections + 1)[:-1]
        ring = np.stack([centre_xy[0] + radius * np.cos(ang), centre_xy[1] + radius * np.sin(ang)], -1)
        bottom = np.concatenate([ring, np.full((sections, 1), z0)], 1)
        top = np.concatenate([ring, np.full((sections, 1), z1)], 1)
        centre_top = np.array([[centre_xy[0], centre_xy[1], z1]])
        verts = np.concatenate([bottom, top, centre_top])
        i = np.arange(sections)
        j = (i + 1) % sections
        side = np.concatenate([np.stack([i, j, j + sections], -1), np.stack([i, j + sections, i + sections], -1)])
        cap = np.stack([i + sections, j + sections, np.full(sections, 2 * sections)], -1)
        faces = np.concatenate([side, cap]) + self.nv
        tones = self.tones(label, instance)
        stripe = np.concatenate([i % 2, i % 2, np.zeros(sections, int)])
        rgb = np.clip(tones[stripe] + self.rng.integers(-10, 11, size=(len(faces), 3)), 0, 255).astype(np.uint8)
        self._add(verts, faces, rgb, label, instance)

    def _add(self, verts, faces, rgb, label, instance):
        self.vertices.append(np.asarray(verts, np.float64))
        self.faces.append(np.asarray(faces, np.int64))
        self.colors.append(rgb)
        self.labels.append(np.full(len(faces), CLASS_ID[label], np.int32))
        self.instances.append(np.full(len(faces), instance, np.int32))
        self.nv += len(verts)

    def build(self) -> LabeledMesh:
        return LabeledMesh(
            vertices=np.concatenate(self.vertices).astype(np.float32),
            faces=np.concatenate(self.faces).astype(np.int32),
            face_colors=np.concatenate(self.colors),
            face_labels=np.concatenate(self.labels),
            face_instances=np.concatenate(self.instances),
        )


def _add_structure(b: _MeshBuilder, L: np.ndarray, cell: float) -> None:
    lx, ly, lz = L
    X, Y, Z = np.array([lx, 0, 0]), np.array([0, ly, 0]), np.array([0, 0, lz])
    b.quad((0, 0, 0), X, Y, cell, "floor", b.new_instance(), "checker", tile=0.5)
    b.quad(Z, Y, X, cell, "ceiling", b.new_instance(), "checker", tile=0.6)
    for origin, u, v in (((0, 0, 0), Z, X), (Y, X, Z), ((0, 0, 0), Y, Z), (X, Z, Y)):
        # walls face into the room (normal u x v); stripes run vertically
        vertical_first = abs(float(np.asarray(u, np.float64)[2])) > 0
        b.quad(origin, u, v, cell, "wall", b.new_instance(), "stripes_v" if vertical_first else "stripes_u", tile=0.3)


def _footprint(kind: str, rng) -> tuple[float, float]:
    """(width along the object's x, depth along its y) in metres."""
    return {
        "table": (rng.uniform(0.8, 1.6), rng.uniform(0.6, 0.9)),
        "chair": (0.46, 0.46),
        "cabinet": (rng.uniform(0.5, 1.2), rng.uniform(0.4, 0.6)),
        "bed": (rng.uniform(1.4, 1.9), 2.0),
        "column": (0.5, 0.5),
        "sofa": (rng.uniform(1.6, 2.2), 0.85),
        "shelf": (rng.uniform(0.8, 1.2), 0.35),
    }[kind]


def _add_object(b: _MeshBuilder, kind: str, xy, yaw: float, size_xy, L, rng, cell: float) -> None:
    """Furniture in the object's frame: x along its width, y from front (y<0) to
    back (y>0, against the wall for wall objects)."""
    inst = b.new_instance()
    w, d = size_xy
    c, s = np.cos(yaw), np.sin(yaw)

    def at(dx, dy):
        return (xy[0] + c * dx - s * dy, xy[1] + s * dx + c * dy)

    box_cell = min(0.15, cell)
    if kind == "table":
        h = rng.uniform(0.70, 0.78)
        b.box(at(0, 0), yaw, (w, d, 0.04), h - 0.04, kind, inst, box_cell, "stripes_u")
        for sx in (-1, 1):
            for sy in (-1, 1):
                b.box(at(sx * (w / 2 - 0.06), sy * (d / 2 - 0.06)), yaw, (0.05, 0.05, h - 0.04), 0.0, kind, inst, box_cell)
    elif kind == "chair":
        b.box(at(0, 0), yaw, (w, d, 0.05), 0.42, kind, inst, box_cell)
        b.box(at(0, d / 2 - 0.025), yaw, (w, 0.05, 0.45), 0.47, kind, inst, box_cell, "stripes_u")
        for sx in (-1, 1):
            for sy in (-1, 1):
                b.box(at(sx * (w / 2 - 0.03), sy * (d / 2 - 0.03)), yaw, (0.04, 0.04, 0.42), 0.0, kind, inst, box_cell)
    elif kind == "cabinet":
        b.box(at(0, 0), yaw, (w, d, rng.uniform(0.8, 2.0)), 0.0, kind, inst, box_cell, "stripes_u")
    elif kind == "bed":
        b.box(at(0, 0), yaw, (w, d, 0.45), 0.0, kind, inst, 0.2, "checker")
        b.box(at(0, d / 2 - 0.05), yaw, (w, 0.1, 1.0), 0.0, kind, inst, box_cell, "stripes_u")
        b.box(at(0, d / 2 - 0.35), yaw, (w * 0.7, 0.4, 0.12), 0.45, kind, inst, 0.1, "plain")
    elif kind == "column":
        b.cylinder(xy, rng.uniform(0.15, 0.25), 0.0, float(L[2]), kind, inst)
    elif kind == "sofa":
        b.box(at(0, -0.1), yaw, (w - 0.4, d - 0.2, 0.42), 0.0, kind, inst, box_cell)
        b.box(at(0, d / 2 - 0.1), yaw, (w, 0.2, 0.85), 0.0, kind, inst, box_cell, "stripes_u")
        for sx in (-1, 1):
            b.box(at(sx * (w / 2 - 0.1), -0.1), yaw, (0.2, d - 0.2, 0.62), 0.0, kind, inst, box_cell)
    elif kind == "shelf":
        h = rng.uniform(1.5, 2.0)
        for sx in (-1, 1):
            b.box(at(sx * (w / 2 - 0.01), 0), yaw, (0.02, d, h), 0.0, kind, inst, box_cell)
        b.box(at(0, d / 2 - 0.01), yaw, (w - 0.04, 0.02, h), 0.0, kind, inst, box_cell, "stripes_u")
        for z in np.linspace(0.05, h - 0.02, 5):
            b.box(at(0, 0), yaw, (w - 0.04, d - 0.02, 0.02), float(z), kind, inst, box_cell)
    else:
        raise ValueError(f"unknown object kind '{kind}'")


def generate_room(seed: int, index: int = 0, config: RoomConfig = RoomConfig()) -> Room:
    """Room ``index`` of the sequence seeded by ``seed`` (a pure function)."""
    rng = np.random.default_rng([int(seed), int(index)])
    L = rng.uniform(config.room_size_min, config.room_size_max)
    centre = L[:2] / 2
    b = _MeshBuilder(rng, config.palette, (seed, index))
    _add_structure(b, L, config.cell_size)

    # Cameras first: on an ellipse around the centre, looking across the room.
    radii = 0.28 * L[:2]
    phase = rng.uniform(0, 2 * np.pi)
    eyes, poses = [], []
    for i in range(config.frames):
        theta = phase + 2 * np.pi * i / config.frames + rng.uniform(-0.1, 0.1)
        eye = np.array([*(centre + radii * [np.cos(theta), np.sin(theta)]), config.camera_height + rng.uniform(-0.1, 0.1)])
        yaw = np.arctan2(*(centre - eye[:2])[::-1]) + rng.uniform(-0.6, 0.6)
        pitch = np.deg2rad(rng.uniform(12.0, 28.0))  # look down at the furniture
        direction = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)])
        eyes.append(eye[:2])
        poses.append(look_at(eye, eye + direction))
    eyes = np.asarray(eyes)

    # Furniture: wall objects stand against a wall, free ones anywhere; keep
    # bounding circles apart from each other and from the camera path.
    placed: list[tuple[np.ndarray, float]] = []
    n_obj = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    for _ in range(n_obj):
        kind = str(rng.choice(_WALL_OBJECTS + _FREE_OBJECTS))
        size = _footprint(kind, rng)
        radius = 0.5 * float(np.hypot(*size))
        for _attempt in range(40):
            if kind in _WALL_OBJECTS:
                wall = int(rng.integers(4))
                # yaw makes the object's +y (back) face the wall
                yaw = (-np.pi / 2, 0.0, np.pi / 2, np.pi)[wall]
                along = L[1] if wall % 2 == 0 else L[0]
                half_w = size[0] / 2 + 0.05
                if along <= 2 * half_w:
                    continue
                t = rng.uniform(half_w, along - half_w)
                off = size[1] / 2 + 0.02
                xy = np.array([(L[0] - off, t), (t, L[1] - off), (off, t), (t, off)][wall])
            else:
                yaw = float(rng.uniform(0, 2 * np.pi))
                if np.any(L[:2] <= 2 * radius + 0.1):
                    continue
                xy = rng.uniform(radius + 0.05, L[:2] - radius - 0.05)
            if np.linalg.norm(eyes - xy, axis=1).min() < radius + 0.4:
                continue
            if any(np.linalg.norm(p - xy) < r + radius + 0.05 for p, r in placed):
                continue
            placed.append((xy, radius))
            _add_object(b, kind, xy, yaw, size, L, rng, config.cell_size)
            break

    fx = config.width / 2 / np.tan(np.deg2rad(config.hfov_deg) / 2)
    K = np.array([[fx, 0, (config.width - 1) / 2], [0, fx, (config.height - 1) / 2], [0, 0, 1.0]])
    return Room(mesh=b.build(), K=K, poses=poses, width=config.width, height=config.height, size=tuple(float(x) for x in L))


def dense_room(min_faces: int = 300_000, seed: int = 0, config: RoomConfig = RoomConfig()) -> Room:
    """A room tessellated finely enough to have at least ``min_faces`` faces
    (like a scanned mesh), for benchmarks."""
    room = generate_room(seed, 0, config)
    cell = config.cell_size
    while len(room.mesh.faces) < min_faces:
        # face count grows ~ 1 / cell^2 (boxes are capped at 0.15 m cells, so
        # shrink a little faster than the square root suggests)
        cell *= 0.9 * float(np.sqrt(len(room.mesh.faces) / min_faces))
        room = generate_room(seed, 0, RoomConfig(**{**config.__dict__, "cell_size": cell}))
    return room
