"""Room capture with habitat-sim (optional: ``conda install habitat-sim -c
conda-forge -c aihabitat``; there is no PyPI wheel). ``habitat_sim`` is imported
only when a ``HabitatSimBackend`` is built, so this module imports without it.

Rooms: habitat's ``semantic_scene.regions`` when the scene has semantic
annotations (each region's box, with the camera spot the navigable grid point
nearest the mean of the region's navigable points, grid 0.5 m as in the
reference); otherwise the rooms of ``MeshBackend`` (GLB room groups or the floor
plan) with their camera spot snapped to the navmesh. Images come from
``get_sensor_observations`` (colour and z-depth in metres, 0 = nothing seen ->
NaN); poses are read back from the sensor state and converted with
``preprocess.habitat.poses``. Point clouds are sampled from the textured GLB
exactly as ``MeshBackend`` does.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from preprocess.habitat.capture import CaptureSettings, HM3DScene, MeshBackend, Room, room_point_cloud, room_rng
from preprocess.habitat.poses import (
    glb_to_habitat,
    habitat_camera_to_opencv_pose,
    habitat_to_glb,
    yaw_quaternion,
)
from preprocess.habitat.viewpoints import jitter_offsets, view_yaws
from preprocess.scene import Frame, PointCloud

COLOR_SENSOR, DEPTH_SENSOR = "color", "depth"
REGION_GRID = 0.5  # m, navigable-point grid inside a region's box (reference value)


class HabitatUnavailable(RuntimeError):
    """habitat_sim is not installed here."""


def import_habitat_sim():
    try:
        import habitat_sim  # noqa: F401
    except ImportError as exc:
        raise HabitatUnavailable(
            "habitat_sim is not installed (no PyPI wheel; install with "
            "`conda install habitat-sim -c conda-forge -c aihabitat`), use backend='mesh'"
        ) from exc
    return habitat_sim


def habitat_available() -> bool:
    try:
        import_habitat_sim()
    except HabitatUnavailable:
        return False
    return True


def depth_from_habitat(depth: np.ndarray) -> np.ndarray:
    """habitat DEPTH observation (z-depth m, 0 where nothing is hit) -> float32
    [H,W] with NaN for no surface."""
    d = np.asarray(depth, dtype=np.float32).copy()
    d[~np.isfinite(d) | (d <= 0)] = np.nan
    return d


def quat_wxyz_from_coeffs(xyzw) -> np.ndarray:
    """habitat's ``quat_to_coeffs`` order (x, y, z, w) -> (w, x, y, z)."""
    x, y, z, w = np.asarray(xyzw, dtype=np.float64)
    return np.array([w, x, y, z])


def region_box_glb(center_hab, sizes_hab) -> tuple[np.ndarray, np.ndarray]:
    """A region's axis-aligned box in habitat coordinates -> (lo, hi) [3] in the
    GLB (Z-up) world (the axis swap keeps boxes axis-aligned)."""
    c = np.asarray(center_hab, dtype=np.float64)
    h = np.abs(np.asarray(sizes_hab, dtype=np.float64)) / 2.0
    corners = habitat_to_glb(np.stack([c - h, c + h]))
    return corners.min(axis=0), corners.max(axis=0)


class HabitatSimBackend:
    """``RoomCapture`` with habitat-sim rendering (see the module docstring).

    ``scene_dataset_config``: the HM3D ``hm3d_annotated_basis.scene_dataset_config.json``
    (needed for semantic regions); None loads the GLB alone."""

    name = "habitat"

    def __init__(self, settings: CaptureSettings | None = None, scene_dataset_config: Optional[str] = None,
                 gpu_device_id: int = 0, mesh_backend: MeshBackend | None = None):
        self.habitat_sim = import_habitat_sim()
        self.settings = settings or CaptureSettings()
        self.scene_dataset_config = scene_dataset_config
        self.gpu_device_id = int(gpu_device_id)
        self.mesh = mesh_backend or MeshBackend(self.settings)
        self._sim = None
        self._scene: Optional[HM3DScene] = None

    # -- simulator -------------------------------------------------------------
    def _simulator(self, scene: HM3DScene):
        if self._sim is not None and self._scene == scene:
            return self._sim
        self.close()
        hs, s = self.habitat_sim, self.settings
        backend = hs.SimulatorConfiguration()
        backend.scene_id = str(scene.basis_glb or scene.glb)
        backend.gpu_device_id = self.gpu_device_id
        if self.scene_dataset_config:
            backend.scene_dataset_config_file = str(self.scene_dataset_config)
        sensors = []
        for uuid, kind in ((COLOR_SENSOR, hs.SensorType.COLOR), (DEPTH_SENSOR, hs.SensorType.DEPTH)):
            spec = hs.CameraSensorSpec()
            spec.uuid = uuid
            spec.sensor_type = kind
            spec.resolution = [s.height, s.width]
            spec.hfov = float(s.hfov_deg)
            spec.position = [0.0, float(s.camera_height), 0.0]  # above the agent's feet
            sensors.append(spec)
        agent = hs.agent.AgentConfiguration()
        agent.sensor_specifications = sensors
        sim = hs.Simulator(hs.Configuration(backend, [agent]))
        if not sim.pathfinder.is_loaded:
            nav = hs.NavMeshSettings()
            nav.set_defaults()
            sim.recompute_navmesh(sim.pathfinder, nav)
        self._sim, self._scene = sim, scene
        return sim

    def close(self) -> None:
        if self._sim is not None:
            self._sim.close()
        self._sim, self._scene = None, None
        self.mesh.close()

    # -- rooms -----------------------------------------------------------------
    def rooms(self, scene: HM3DScene) -> list[Room]:
        sim = self._simulator(scene)
        semantic = getattr(sim, "semantic_scene", None)
        regions = list(getattr(semantic, "regions", None) or [])
        # HM3D regions may come without a usable box: then use the mesh backend's rooms
        boxes = [region_box_glb(r.aabb.center, r.aabb.sizes) for r in regions]
        usable = [(r, b) for r, b in zip(regions, boxes) if np.all(b[1] - b[0] > 0.5)]
        if not usable:
            rooms = []
            for room in self.mesh.rooms(scene):
                snapped = self._snap(sim, room.camera_xy, room.level_z)
                if snapped is not None:
                    rooms.append(dataclasses.replace(room, camera_xy=snapped[:2], level_z=float(snapped[2]), index=len(rooms)))
            return rooms
        house = self.mesh._load(scene)
        centroids = house.mesh.face_centroid
        rooms = []
        for region, (lo, hi) in usable:
            spot = self._region_spot(sim, lo, hi)
            if spot is None:
                continue
            inside = np.all((centroids >= lo) & (centroids <= hi), axis=1)
            rid = str(region.id).replace("/", "_")
            rooms.append(Room(scene, f"region{rid}", "habitat-regions", len(rooms), float(spot[2]), spot[:2],
                              faces=inside, extra={"box": (lo, hi)}))
        return rooms

    def _region_spot(self, sim, lo, hi) -> Optional[np.ndarray]:
        """GLB point [3] on the navmesh: the navigable grid point nearest the
        mean of the region's navigable grid points (at the box's floor)."""
        xs = np.arange(lo[0] + REGION_GRID / 2, hi[0], REGION_GRID)
        ys = np.arange(lo[1] + REGION_GRID / 2, hi[1], REGION_GRID)
        pts = [np.array([x, y, lo[2]]) for x in xs for y in ys]
        nav = [p for p in pts if sim.pathfinder.is_navigable(glb_to_habitat(p).astype(np.float32))]
        if not nav:
            return None
        nav = np.stack(nav)
        best = nav[np.argmin(np.linalg.norm(nav - nav.mean(axis=0), axis=1))]
        floor = habitat_to_glb(np.asarray(sim.pathfinder.snap_point(glb_to_habitat(best).astype(np.float32)), dtype=np.float64))
        return floor if np.isfinite(floor).all() else None

    def _snap(self, sim, xy, level_z, max_shift: float = 0.5) -> Optional[np.ndarray]:
        """The GLB floor point [3] of the navmesh at (or within ``max_shift`` m
        of) the spot; None if the navmesh is not there."""
        floor = np.array([xy[0], xy[1], level_z], dtype=np.float64)
        p = glb_to_habitat(floor).astype(np.float32)
        if sim.pathfinder.is_navigable(p):
            return floor
        snapped = habitat_to_glb(np.asarray(sim.pathfinder.snap_point(p), dtype=np.float64))
        if not np.isfinite(snapped).all():
            return None
        if np.linalg.norm(snapped[:2] - floor[:2]) > max_shift or abs(snapped[2] - level_z) > 0.3:
            return None
        return snapped

    # -- capture ---------------------------------------------------------------
    def capture(self, room: Room) -> list[Frame]:
        hs, s = self.habitat_sim, self.settings
        sim = self._simulator(room.scene)
        rng = room_rng(s.seed, room.scene.scene_id, room.room_id, 1)
        floor = np.array([room.camera_xy[0], room.camera_xy[1], room.level_z])
        for off in jitter_offsets(rng, s.jitter, 32) if s.jitter > 0 else []:
            cand = floor + np.array([off[0], off[1], 0.0])
            if sim.pathfinder.is_navigable(glb_to_habitat(cand).astype(np.float32)):
                floor = cand
                break
        yaws = view_yaws(room_rng(s.seed, room.scene.scene_id, room.room_id, 2), s.num_views)
        agent = sim.get_agent(0)
        K = s.K()
        frames = []
        for k, yaw in enumerate(yaws):
            state = agent.get_state()
            state.position = glb_to_habitat(floor).astype(np.float32)
            w, x, y, z = yaw_quaternion(yaw)
            state.rotation = hs.utils.common.quat_from_coeffs([x, y, z, w])
            agent.set_state(state, reset_sensors=True)
            obs = sim.get_sensor_observations()
            sensor = agent.get_state().sensor_states[COLOR_SENSOR]
            q = quat_wxyz_from_coeffs(hs.utils.common.quat_to_coeffs(sensor.rotation))
            pose = habitat_camera_to_opencv_pose(np.asarray(sensor.position, dtype=np.float64), q).astype(np.float32)
            rgb = np.ascontiguousarray(np.asarray(obs[COLOR_SENSOR])[..., :3], dtype=np.uint8)
            frames.append(Frame(name=f"{room.room_id}_view{k}", rgb=rgb, K=K.copy(), pose=pose,
                                depth=depth_from_habitat(obs[DEPTH_SENSOR])))
        return frames

    def categories(self, scene: HM3DScene) -> Optional[list[str]]:
        return self.mesh.categories(scene)

    def point_cloud(self, room: Room) -> PointCloud:
        house = self.mesh._load(room.scene)
        return room_point_cloud(house.mesh, room, self.settings, house.labels, self.mesh.category_map)
