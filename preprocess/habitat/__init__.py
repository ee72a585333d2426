"""HM3D room simulation: four RGB-D views and a coloured point cloud per room.

    backend = make_capture_backend("auto", CaptureSettings(width=720, height=720))
    for room in backend.rooms(scene):            # scene: HM3DScene (find_hm3d_scene)
        frames = backend.capture(room)           # 4 x Frame (rgb, z-depth NaN-invalid, K, pose c2w OpenCV)
        cloud = backend.point_cloud(room)        # PointCloud at 0.02 m, texture colours

Backends: ``habitat`` (habitat-sim, optional) and ``mesh`` (trimesh +
``preprocess.render``, always available). ``auto`` = habitat when importable.
Pure maths shared by both: ``poses`` (habitat Y-up / GLB Z-up / OpenCV camera
conversions), ``viewpoints`` (intrinsics, yaws, jitter), ``floorplan``.
"""
from __future__ import annotations

from preprocess.habitat.capture import (
    CaptureSettings,
    HM3DScene,
    MeshBackend,
    Room,
    RoomCapture,
    find_hm3d_scene,
    read_category_map,
)
from preprocess.habitat.habitat_backend import HabitatSimBackend, HabitatUnavailable, habitat_available

CAPTURE_BACKENDS = ("auto", "mesh", "habitat")


def make_capture_backend(backend: str = "auto", settings: CaptureSettings | None = None, **options) -> RoomCapture:
    """``backend``: "mesh", "habitat" or "auto" (habitat if importable, else
    mesh). ``options`` go to the backend's constructor (mesh: room_method,
    render_backend, grid_cell, door_width, min_room_area, category_map, ...;
    habitat: scene_dataset_config, gpu_device_id, mesh_backend)."""
    if backend not in CAPTURE_BACKENDS:
        raise ValueError(f"capture backend must be one of {CAPTURE_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "habitat" if habitat_available() else "mesh"
    if backend == "habitat":
        return HabitatSimBackend(settings, **options)
    return MeshBackend(settings, **options)


__all__ = [
    "CAPTURE_BACKENDS",
    "CaptureSettings",
    "HM3DScene",
    "HabitatSimBackend",
    "HabitatUnavailable",
    "MeshBackend",
    "Room",
    "RoomCapture",
    "find_hm3d_scene",
    "habitat_available",
    "make_capture_backend",
    "read_category_map",
]
