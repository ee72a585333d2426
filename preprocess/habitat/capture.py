"""Room capture: the ``RoomCapture`` interface, HM3D scene files, and the
habitat-free ``MeshBackend``.

A backend finds the navigable rooms of a scene (``rooms``), takes four RGB-D
views in each (``capture``: one camera position, yaws 90 deg apart from a random
start) and samples the room's coloured point cloud (``point_cloud``). Frames
follow ``preprocess.scene``: rgb uint8, z-depth float32 m with NaN = no surface,
K float32, camera-to-world pose float32 in OpenCV axes, GLB (Z-up) world.

``MeshBackend`` reads the textured ``<hash>.glb`` with trimesh and renders with
``preprocess.render``. Rooms come from, in order (``room_method="auto"``):
``regions`` (the semantic annotations' region per object), ``nodes`` (room
groups in the GLB part names, as the reference preprocessing does) or
``floorplan`` (see ``preprocess.habitat.floorplan``). A room is kept only if it
has a navigable cell (floor below, free body band, away from walls).

Recipes (``recipe``): "paper" is the above (semantic regions, camera 1.5 m above
a navigable cell, horizontal jitter). "released" follows Pointcept's released
``preprocessing/concerto/hm3d`` script: rooms are the GLB's geometry groups
(``group<G>_sub<S>`` part names; a house without them is one room,
"ungrouped"); each room's box is the bounding box of its parts; a 0.5 m grid
from box min + 0.5 to box max - 0.5 (all three axes) is laid over every box
and each grid point belongs to the first room whose box strictly contains it;
the camera sits at the mean of its room's grid points moved by a uniform
+-``jitter`` on all three axes, with no navigability check (a room with no
grid point is skipped).
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable

import numpy as np

from preprocess.habitat import floorplan as fp
from preprocess.habitat.house import (
    FaceLabels,
    HouseMesh,
    barycentric,
    first_per_voxel,
    load_house,
    node_room_ids,
    read_semantic_txt,
    semantic_face_labels,
)
from preprocess.habitat.viewpoints import intrinsics_from_hfov, jitter_offsets, room_camera_poses, view_yaws
from preprocess.scene import Frame, PointCloud

log = logging.getLogger(__name__)

ROOM_METHODS = ("auto", "regions", "nodes", "floorplan")
RECIPES = ("paper", "released")
RELEASED_GRID = 0.5  # m: the released script's grid step and its inset from each box face
FLOOR_TOLERANCE = 0.15  # m, as floorplan.build_nav_grid
MIN_CAMERA_AREA = 0.25  # m^2 of navigable floor an annotated room needs to be captured


@dataclass(frozen=True)
class HM3DScene:
    """The files of one HM3D scene folder ``<split>/<NNNNN>-<hash>/``."""

    scene_id: str  # folder name, e.g. "00800-TEEsavR23oF"
    split: str
    folder: Path
    glb: Path  # <hash>.glb if present, else <hash>.basis.glb
    basis_glb: Optional[Path] = None
    semantic_glb: Optional[Path] = None
    semantic_txt: Optional[Path] = None
    navmesh: Optional[Path] = None

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.glb, self.basis_glb, self.semantic_glb, self.semantic_txt, self.navmesh) if p is not None]


def find_hm3d_scene(folder: Path, split: str = "") -> Optional[HM3DScene]:
    """HM3DScene for ``folder`` or None if it holds no ``<hash>.glb``/``.basis.glb``."""
    folder = Path(folder)
    name = folder.name
    hsh = name.split("-", 1)[1] if "-" in name else name

    def opt(suffix):
        p = folder / f"{hsh}{suffix}"
        return p if p.is_file() else None

    glb, basis = opt(".glb"), opt(".basis.glb")
    if glb is None and basis is None:
        return None
    return HM3DScene(
        scene_id=name, split=split, folder=folder, glb=glb or basis, basis_glb=basis,
        semantic_glb=opt(".semantic.glb"), semantic_txt=opt(".semantic.txt"),
        navmesh=opt(".basis.navmesh") or opt(".navmesh"),
    )


@dataclass
class Room:
    """A navigable room. ``camera_xy`` [2] is the chosen cell centre (GLB world),
    ``level_z`` the floor height; the room's extent is ``faces`` (bool [F] over
    the house mesh, annotated rooms) or ``footprint`` on ``spec`` with heights
    ``z_range`` (floor-plan rooms). ``candidates`` (on ``spec``) are the cells a
    jittered camera may move to."""

    scene: HM3DScene
    room_id: str
    method: str
    index: int
    level_z: float
    camera_xy: np.ndarray
    spec: Optional[fp.GridSpec] = None
    candidates: Optional[np.ndarray] = None
    footprint: Optional[np.ndarray] = None
    z_range: Optional[tuple[float, float]] = None
    faces: Optional[np.ndarray] = None
    extra: dict = field(default_factory=dict)


@runtime_checkable
class RoomCapture(Protocol):
    name: str

    def rooms(self, scene: HM3DScene) -> list[Room]: ...

    def capture(self, room: Room) -> list[Frame]: ...

    def point_cloud(self, room: Room) -> PointCloud: ...

    def categories(self, scene: HM3DScene) -> Optional[list[str]]: ...

    def close(self) -> None: ...


def room_rng(seed: int, scene_id: str, room_id: str, stream: int) -> np.random.Generator:
    """Deterministic generator per (seed, scene, room, purpose)."""
    return np.random.default_rng([int(seed), zlib.crc32(scene_id.encode()), zlib.crc32(room_id.encode()), int(stream)])


@dataclass
class CaptureSettings:
    """Camera and sampling settings shared by the backends (reference values)."""

    width: int = 720
    height: int = 720
    hfov_deg: float = 90.0
    num_views: int = 4
    camera_height: float = 1.5  # above the room's floor, m
    jitter: float = 0.25  # max |dx|, |dy| of the camera position, m
    point_spacing: float = 0.02
    seed: int = 0

    def K(self) -> np.ndarray:
        return intrinsics_from_hfov(self.width, self.height, self.hfov_deg)


@dataclass
class _House:
    """Everything derived from one scene's mesh, kept while its rooms are used."""

    scene: HM3DScene
    mesh: HouseMesh
    labels: Optional[FaceLabels]
    levels: list[float]
    grids: list[fp.NavGrid]
    rooms: list[Room]


class MeshBackend:
    """Habitat-free room capture from the GLB (see the module docstring)."""

    name = "mesh"

    def __init__(
        self,
        settings: CaptureSettings | None = None,
        room_method: str = "auto",
        render_backend: str = "auto",
        grid_cell: float = 0.1,
        door_width: float = 1.0,
        min_room_area: float = 2.0,
        agent_radius: float = 0.15,
        max_room_height: float = 3.5,
        category_map: dict[str, str] | None = None,
        recipe: str = "paper",
    ):
        if room_method not in ROOM_METHODS:
            raise ValueError(f"room_method must be one of {ROOM_METHODS}, got {room_method!r}")
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        self.recipe = recipe
        self.settings = settings or CaptureSettings()
        self.room_method = room_method
        self.render_backend = render_backend
        self.grid_cell = float(grid_cell)
        self.door_width = float(door_width)
        self.min_room_area = float(min_room_area)
        self.agent_radius = float(agent_radius)
        self.max_room_height = float(max_room_height)
        self.category_map = category_map
        self._house: Optional[_House] = None
        self._renderer = None
        self._shader: Optional[TextureShader] = None

    # -- rooms ---------------------------------------------------------------
    def rooms(self, scene: HM3DScene) -> list[Room]:
        return self._load(scene).rooms

    def _load(self, scene: HM3DScene) -> _House:
        if self._house is not None and self._house.scene == scene:
            return self._house
        self.close()
        s = self.settings
        mesh = load_house(scene.glb)
        if scene.glb == scene.basis_glb and not mesh.has_texture:
            log.warning("%s: only the .basis.glb is present and its Basis textures cannot be read here; "
                        "colours will be grey (download the 'glb' package of HM3D)", scene.scene_id)
        labels = None
        if scene.semantic_glb is not None and scene.semantic_txt is not None:
            labels = semantic_face_labels(mesh, load_house(scene.semantic_glb), read_semantic_txt(scene.semantic_txt))
        if self.recipe == "released":
            house = _House(scene, mesh, labels, [], [], [])
            house.rooms = self._released_rooms(house)
            self._house = house
            return house
        # analysis samples: spacing cell/2, not thinned, so floor cells are covered
        spacing = self.grid_cell / 2.0
        oversample = 2.0
        samples = mesh.sample_surface(spacing, room_rng(s.seed, scene.scene_id, "", 0), oversample=oversample, thin=False)
        levels = fp.find_levels(samples.point, samples.normal, spacing**2 / oversample)
        lo, hi = mesh.vertices[:, :2].min(0) - self.grid_cell, mesh.vertices[:, :2].max(0) + self.grid_cell
        grids = [
            fp.build_nav_grid(samples.point, samples.normal, z, s.camera_height, cell=self.grid_cell,
                              agent_radius=self.agent_radius, bounds_xy=(lo, hi))
            for z in levels
        ]
        house = _House(scene, mesh, labels, levels, grids, [])
        method = self._method(house)
        if method == "floorplan":
            house.rooms = self._floorplan_rooms(house)
        else:
            face_room = labels.region if method == "regions" else node_room_ids(mesh)
            house.rooms = self._annotated_rooms(house, samples, face_room, method)
        self._house = house
        return house

    def _method(self, house: _House) -> str:
        if self.room_method != "auto":
            if self.room_method == "regions" and house.labels is None:
                raise ValueError(f"scene '{house.scene.scene_id}': room_method 'regions' needs .semantic.glb and .semantic.txt")
            return self.room_method
        if house.labels is not None and (house.labels.region >= 0).any():
            return "regions"
        if (node_room_ids(house.mesh) >= 0).any():
            return "nodes"
        return "floorplan"

    def _annotated_rooms(self, house: _House, samples, face_room: np.ndarray, method: str) -> list[Room]:
        rooms = []
        up = samples.normal[:, 2] > 0.9
        sample_room = face_room[samples.face]
        for rid in np.unique(face_room[face_room >= 0]):
            floor_pts = samples.point[up & (sample_room == rid)]
            if len(floor_pts) == 0 or not house.grids:
                continue
            # the level where this room's floor has the most navigable cells
            cands = [
                fp.rasterise(g.spec, floor_pts[np.abs(floor_pts[:, 2] - g.level_z) <= FLOOR_TOLERANCE, :2]) & g.navigable
                for g in house.grids
            ]
            li = int(np.argmax([c.sum() for c in cands]))
            grid, cand = house.grids[li], cands[li]
            if cand.sum() * grid.spec.cell**2 < MIN_CAMERA_AREA:
                continue  # a closet or a sliver of floor: no room to stand in
            xy = fp.choose_camera_cell(cand, grid.navigable, grid.spec)
            if xy is None:
                continue
            rid = int(rid)
            name = f"region{rid:03d}" if method == "regions" else f"group{rid // 1000}_sub{rid % 1000}"
            rooms.append(Room(house.scene, name, method, len(rooms), grid.level_z, xy, spec=grid.spec,
                              candidates=cand, faces=face_room == rid))
        return rooms

    def _floorplan_rooms(self, house: _House) -> list[Room]:
        rooms = []
        for li, grid in enumerate(house.grids):
            labels = fp.split_rooms(grid, door_width=self.door_width, min_room_area=self.min_room_area)
            top = grid.level_z + self.max_room_height
            if li + 1 < len(house.levels):
                top = min(top, house.levels[li + 1] - 0.15)
            for k, foot in enumerate(fp.room_footprints(grid, labels)):
                cells = labels == k
                xy = fp.choose_camera_cell(cells, grid.navigable, grid.spec)
                if xy is None:
                    continue
                rooms.append(Room(house.scene, f"level{li}_room{k:02d}", "floorplan", len(rooms), grid.level_z, xy,
                                  spec=grid.spec, candidates=cells, footprint=foot, z_range=(grid.level_z - 0.2, top)))
        return rooms

    def _released_rooms(self, house: _House) -> list[Room]:
        """Rooms and camera spots of the released recipe (module docstring)."""
        face_room = node_room_ids(house.mesh)
        tri = house.mesh.vertices[house.mesh.faces]
        # rooms in the order their first mesh comes in the file (the script iterates the GLB's meshes)
        rank = _gltf_mesh_rank(house.scene.glb, [p.name.split("|", 1)[-1] for p in house.mesh.parts])
        ids = np.unique(face_room)
        order = sorted(ids, key=lambda rid: rank[house.mesh.face_part[face_room == rid]].min())
        boxes = [(tri[face_room == rid].reshape(-1, 3).min(0), tri[face_room == rid].reshape(-1, 3).max(0)) for rid in order]
        owner: dict[int, list[np.ndarray]] = {}
        for k, (lo, hi) in enumerate(boxes):
            axes = [np.arange(lo[a] + RELEASED_GRID, hi[a] - RELEASED_GRID, RELEASED_GRID) for a in range(3)]
            grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
            for g in grid:
                j = next(j for j, (l2, h2) in enumerate(boxes) if np.all((l2 < g) & (g < h2)))
                owner.setdefault(j, []).append(g)
        rooms = []
        for k, rid in enumerate(order):
            if k not in owner:
                continue  # a box under 1 m on some axis holds no grid point
            spot = np.mean(owner[k], axis=0)
            name = "ungrouped" if rid < 0 else f"group{rid // 1000}_sub{rid % 1000}"
            rooms.append(Room(house.scene, name, "released", len(rooms), float(boxes[k][0][2]), spot[:2],
                              faces=face_room == rid, extra={"spot": spot}))
        return rooms

    # -- capture -------------------------------------------------------------
    def camera_position(self, room: Room) -> np.ndarray:
        """[3] GLB world: the room's cell centre moved by the first jitter (up to
        ``settings.jitter`` per axis) that stays on a candidate cell, at camera
        height above the floor; released recipe: the room's grid mean moved by
        a uniform +-jitter on every axis."""
        s = self.settings
        rng = room_rng(s.seed, room.scene.scene_id, room.room_id, 1)
        if room.method == "released":
            return np.asarray(room.extra["spot"], np.float64) + rng.uniform(-s.jitter, s.jitter, 3)
        xy = np.asarray(room.camera_xy, dtype=np.float64)
        if s.jitter > 0 and room.spec is not None:
            tries = xy + jitter_offsets(rng, s.jitter, 32)
            ok = room.spec.lookup(room.candidates, tries)
            if ok.any():
                xy = tries[np.argmax(ok)]
        return np.array([xy[0], xy[1], room.level_z + s.camera_height])

    def poses(self, room: Room) -> np.ndarray:
        """float32 [num_views,4,4] camera-to-world poses of the room's views."""
        s = self.settings
        yaws = view_yaws(room_rng(s.seed, room.scene.scene_id, room.room_id, 2), s.num_views)
        return room_camera_poses(self.camera_position(room), yaws)

    def capture(self, room: Room) -> list[Frame]:
        from preprocess.render import make_renderer

        house = self._load(room.scene)
        s = self.settings
        if self._renderer is None:
            self._renderer = make_renderer(house.mesh.vertex_colored_trimesh(), backend=self.render_backend, with_color=True)
        if self._shader is None and house.mesh.has_texture:
            self._shader = TextureShader.create(house.mesh)
        K = s.K()
        frames = []
        for k, pose in enumerate(self.poses(room)):
            view = self._renderer.render(K, pose, s.width, s.height)
            rgb = view.rgb
            if self._shader is not None:
                rgb = self._shader.shade(K, pose, s.width, s.height, view.depth)
            frames.append(Frame(name=f"{room.room_id}_view{k}", rgb=rgb, K=K.copy(), pose=pose, depth=view.depth.astype(np.float32)))
        return frames

    # -- point cloud ---------------------------------------------------------
    def point_cloud(self, room: Room) -> PointCloud:
        house = self._load(room.scene)
        return room_point_cloud(house.mesh, room, self.settings, house.labels, self.category_map)

    def categories(self, scene: HM3DScene) -> Optional[list[str]]:
        """Category names of the scene's semantic objects (None without annotations)."""
        labels = self._load(scene).labels
        return None if labels is None else list(labels.categories)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
        self._renderer = None
        self._shader = None
        self._house = None


class TextureShader:
    """Per-pixel texture colour for rendered views. The project's renderers
    colour by vertex or face, which loses HM3D's textures (a few large
    triangles carry all the detail), so textured houses are re-shaded: each
    pixel's ray finds its triangle (embree), the hit point comes from the
    rendered depth, and the texel is read at its interpolated uv."""

    def __init__(self, mesh: HouseMesh, intersector):
        self.mesh = mesh
        self.intersector = intersector

    @staticmethod
    def create(mesh: HouseMesh) -> Optional["TextureShader"]:
        try:
            import trimesh
            from trimesh.ray.ray_pyembree import RayMeshIntersector

            intersector = RayMeshIntersector(trimesh.Trimesh(mesh.vertices, mesh.faces, process=False))
        except Exception as exc:  # embreex missing: keep the renderer's per-vertex colours
            log.warning("texture shading unavailable (%s: %s); views use per-vertex colours", type(exc).__name__, exc)
            return None
        return TextureShader(mesh, intersector)

    def shade(self, K: np.ndarray, pose: np.ndarray, width: int, height: int, depth: np.ndarray) -> np.ndarray:
        """uint8 [H,W,3] (black where ``depth`` is NaN)."""
        from preprocess.render.camera import world_rays

        origins, dirs, z_per_metre = world_rays(np.asarray(K, np.float64), np.asarray(pose, np.float64), width, height)
        d = depth.reshape(-1).astype(np.float64)
        valid = np.isfinite(d)
        tri = np.full(len(d), -1, np.int64)
        if valid.any():
            tri[valid] = self.intersector.intersects_first(origins[valid], dirs[valid])
        hit = valid & (tri >= 0)
        rgb = np.zeros((len(d), 3), np.uint8)
        if hit.any():
            pts = origins[hit] + dirs[hit] * (d[hit] / z_per_metre[hit])[:, None]
            faces = tri[hit]
            bary = barycentric(pts, self.mesh.vertices[self.mesh.faces[faces]])
            rgb[hit] = self.mesh.colors_at(faces, bary)
        return rgb.reshape(height, width, 3)


def _gltf_mesh_rank(path: Path, geom_names: list[str]) -> np.ndarray:
    """int [parts]: position of each part's mesh in the GLB's ``meshes`` list
    (read from the JSON chunk only); the part order when that cannot be read."""
    import json
    import struct

    fallback = np.arange(len(geom_names))
    try:
        with open(path, "rb") as f:
            magic, _, _ = struct.unpack("<4sII", f.read(12))
            length, kind = struct.unpack("<I4s", f.read(8))
            if magic != b"glTF" or kind != b"JSON":
                return fallback
            names = [m.get("name", "") for m in json.loads(f.read(length)).get("meshes", [])]
    except (OSError, ValueError, struct.error):
        return fallback
    pos = {n: i for i, n in reversed(list(enumerate(names)))}
    return np.array([pos.get(n, len(names) + i) for i, n in enumerate(geom_names)])


def room_point_cloud(mesh: HouseMesh, room: Room, settings: CaptureSettings, labels: Optional[FaceLabels] = None,
                     category_map: dict[str, str] | None = None) -> PointCloud:
    """The room's points at ``settings.point_spacing`` (area-uniform samples thinned
    to one per cube of that side), texture colours, face normals; with ``labels``:
    instance = semantic object id, segment = class index under ``category_map``
    (raw category -> class name; classes sorted; -1 without a map)."""
    spacing = settings.point_spacing
    rng = room_rng(settings.seed, room.scene.scene_id, room.room_id, 3)
    if room.faces is not None:
        face_mask = room.faces
    else:
        face_mask = _faces_near_footprint(mesh, room)
    # 3 samples per cube before thinning: ~95% of the cubes a surface crosses get a point
    smp = mesh.sample_surface(spacing, rng, face_mask, oversample=3.0, thin=False)
    keep = np.ones(len(smp.point), bool)
    if room.faces is None:
        z0, z1 = room.z_range
        keep = room.spec.lookup(room.footprint, smp.point[:, :2]) & (smp.point[:, 2] >= z0) & (smp.point[:, 2] <= z1)
    idx = np.nonzero(keep)[0]
    # thin on the float32 values that are stored, so they hold one point per cube
    idx = idx[first_per_voxel(smp.point[idx].astype(np.float32).astype(np.float64), spacing)]
    face, bary = smp.face[idx], smp.bary[idx]
    segment = instance = None
    if labels is not None:
        instance = labels.instance[face].astype(np.int32)
        segment = np.full(len(face), -1, np.int32)
        if category_map:
            classes = sorted({c for c in category_map.values() if c and c not in ("unlabeled", "void")})
            cls_index = {c: i for i, c in enumerate(classes)}
            lut = np.array([cls_index.get(category_map.get(c, ""), -1) for c in labels.categories] + [-1], np.int32)
            segment = lut[np.where(labels.category[face] >= 0, labels.category[face], len(labels.categories))]
    return PointCloud(
        coord=smp.point[idx].astype(np.float32), color=mesh.colors_at(face, bary), normal=smp.normal[idx].astype(np.float32),
        segment=segment, instance=instance,
    )


def _faces_near_footprint(mesh: HouseMesh, room: Room) -> np.ndarray:
    """Faces whose bounding box meets the footprint's box and height band."""
    rows, cols = np.nonzero(room.footprint)
    lo = room.spec.centre(rows.min(), cols.min()) - room.spec.cell
    hi = room.spec.centre(rows.max(), cols.max()) + room.spec.cell
    tri = mesh.vertices[mesh.faces]
    tmin, tmax = tri.min(axis=1), tri.max(axis=1)
    z0, z1 = room.z_range
    return (
        (tmax[:, 0] >= lo[0]) & (tmin[:, 0] <= hi[0]) & (tmax[:, 1] >= lo[1]) & (tmin[:, 1] <= hi[1])
        & (tmax[:, 2] >= z0) & (tmin[:, 2] <= z1)
    )


def read_category_map(path: str | Path) -> dict[str, str]:
    """HM3D-Semantics category mapping tsv (header; ``raw_category<TAB>category
    <TAB>mpcat40``): category -> mpcat40 class name."""
    out = {}
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if i == 0 or not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) >= 2:
            out[cols[-2].strip()] = cols[-1].strip()
    return out
