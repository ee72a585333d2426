"""Coordinate conventions of HM3D, habitat-sim and the scene record (pure numpy).

Three frames meet here:

- **GLB world (Z-up)**: HM3D meshes store Matterport coordinates, metres, +Z up.
  trimesh loads them as stored. The scene record's world frame is this one.
- **habitat world (Y-up)**: habitat-sim rotates the stage so +Y is up and the
  GLB's +Y becomes habitat -Z:  p_hab = (x, z, -y)  for p_glb = (x, y, z).
- **cameras**: habitat's camera looks down its -Z with +Y up and +X right
  (OpenGL); OpenCV looks down +Z with +Y down and +X right. The two differ by
  a half turn about x: R_cv = R_gl @ diag(1, -1, -1).

A yaw is a rotation about the vertical axis (habitat +Y, which is GLB +Z), counter-
clockwise seen from above, in radians. At yaw 0 the camera looks along habitat
-Z = GLB +Y; at yaw theta it looks along GLB (-sin theta, cos theta, 0).
Quaternions are (w, x, y, z), Hamilton convention, as ``quaternion.quaternion``
and magnum use (``preprocess.geometry``'s default order).
"""
from __future__ import annotations

import numpy as np

from preprocess.geometry import quaternion_to_matrix

# p_hab = GLB_TO_HABITAT @ p_glb ; a proper rotation (det +1), so it maps
# rotations by conjugation and keeps yaw angles unchanged.
GLB_TO_HABITAT = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
HABITAT_TO_GLB = GLB_TO_HABITAT.T
# OpenCV camera axes <-> habitat/OpenGL camera axes (its own inverse).
CV_TO_GL_CAMERA = np.diag([1.0, -1.0, -1.0])


def glb_to_habitat(points: np.ndarray) -> np.ndarray:
    """[..., 3] GLB (Z-up) coordinates -> habitat (Y-up) coordinates."""
    return np.asarray(points, dtype=np.float64) @ GLB_TO_HABITAT.T


def habitat_to_glb(points: np.ndarray) -> np.ndarray:
    """[..., 3] habitat (Y-up) coordinates -> GLB (Z-up) coordinates."""
    return np.asarray(points, dtype=np.float64) @ HABITAT_TO_GLB.T


def yaw_quaternion(yaw: float) -> np.ndarray:
    """(w, x, y, z) of a rotation by ``yaw`` radians about habitat +Y."""
    return np.array([np.cos(yaw / 2.0), 0.0, np.sin(yaw / 2.0), 0.0])


def habitat_camera_to_opencv_pose(position_hab, rotation_hab) -> np.ndarray:
    """A habitat camera (world position [3] in habitat Y-up coordinates; rotation
    [3,3] or quaternion (w,x,y,z) taking habitat-camera axes to habitat world)
    -> camera-to-world pose float64 [4,4] in OpenCV camera axes and the GLB
    (Z-up) world frame of the scene record."""
    R = np.asarray(rotation_hab, dtype=np.float64)
    if R.shape == (4,):
        R = quaternion_to_matrix(R)
    pose = np.eye(4)
    pose[:3, :3] = HABITAT_TO_GLB @ R @ CV_TO_GL_CAMERA
    pose[:3, 3] = HABITAT_TO_GLB @ np.asarray(position_hab, dtype=np.float64)
    return pose


def opencv_pose_to_habitat_camera(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``habitat_camera_to_opencv_pose``: camera-to-world [4,4]
    (OpenCV axes, GLB world) -> (position [3], rotation [3,3]) in habitat terms."""
    pose = np.asarray(pose, dtype=np.float64)
    R = GLB_TO_HABITAT @ pose[:3, :3] @ CV_TO_GL_CAMERA
    return GLB_TO_HABITAT @ pose[:3, 3], R


def opencv_pose_from_yaw(position_glb, yaw: float) -> np.ndarray:
    """Camera-to-world [4,4] (OpenCV axes, GLB Z-up world) of a level camera at
    ``position_glb`` turned by ``yaw`` radians (see the module docstring); the
    same camera habitat gets from ``yaw_quaternion(yaw)`` at
    ``glb_to_habitat(position_glb)``."""
    return habitat_camera_to_opencv_pose(glb_to_habitat(position_glb), yaw_quaternion(yaw))


def yaw_of_pose(pose: np.ndarray) -> float:
    """Yaw (radians, in (-pi, pi]) of a camera-to-world pose (OpenCV axes, GLB
    world): the heading of its optical axis projected on the floor."""
    forward = np.asarray(pose, dtype=np.float64)[:3, 2]
    return float(np.arctan2(-forward[0], forward[1]))
