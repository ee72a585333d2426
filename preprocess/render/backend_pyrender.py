"""pyrender rasterisation: OSMesa on CPU machines, EGL where a GPU is present.

pyrender's camera is an OpenGL one (looking down -z, y up) and OpenGL samples
pixel (r, c) at window position (c + 0.5, H - r - 0.5). Both are converted here
so the output follows our conventions exactly: the pose is right-multiplied by
diag(1, -1, -1, 1) and the principal point is shifted by +0.5 px, which makes
pixel (r, c) sample the ray through K^-1 [c, r, 1]. pyrender already returns
z-depth (0 where empty), which becomes NaN. Depth comes from a 24-bit depth
buffer: its error grows as z^2 / znear (about 2e-5 m at 5 m with znear 0.05).

The OpenGL platform must be chosen before PyOpenGL is first imported, so it is
set here, on first use of this backend, never when ``preprocess.render`` is
imported.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading

import numpy as np
import trimesh

from preprocess.render.base import MeshRenderer, RenderedView
from preprocess.render.camera import opencv_to_opengl_pose
from preprocess.render.mesh_io import mesh_with_color_visual


def select_gl_platform() -> str:
    """Set PYOPENGL_PLATFORM if the user has not: EGL when an NVIDIA device is
    visible, else OSMesa. Returns the platform in effect."""
    if "OpenGL" not in sys.modules and not os.environ.get("PYOPENGL_PLATFORM"):
        os.environ["PYOPENGL_PLATFORM"] = "egl" if os.path.exists("/dev/nvidia0") else "osmesa"
    return os.environ.get("PYOPENGL_PLATFORM", "")


# One OffscreenRenderer (and its OpenGL context) per thread and image size, kept
# for the life of the process: creating it costs 0.6-0.8 s on OSMesa, which a
# build would otherwise pay for every scene. A context is only ever current in
# the thread that made it, hence per thread. pyrender drops the previous
# scene's buffers from the context when it renders a new scene.
_CONTEXTS = threading.local()
_KEPT: list = []  # every kept renderer, of every thread


def _offscreen(pyrender, width: int, height: int):
    pool = getattr(_CONTEXTS, "renderers", None)
    if pool is None:
        pool = _CONTEXTS.renderers = {}
    if (width, height) not in pool:
        pool[(width, height)] = pyrender.OffscreenRenderer(viewport_width=width, viewport_height=height)
        if not _KEPT:
            atexit.register(_delete_kept)
        _KEPT.append(pool[(width, height)])
    return pool[(width, height)]


def _delete_kept() -> None:
    """Free the kept contexts while the interpreter is still whole: left to their
    ``__del__`` at shutdown, PyOpenGL prints lookup failures to stdout."""
    for renderer in _KEPT:
        try:
            renderer.delete()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    _KEPT.clear()


class PyrenderRenderer(MeshRenderer):
    name = "pyrender"

    def __init__(self, mesh: trimesh.Trimesh, with_color: bool = True, znear: float = 0.05):
        super().__init__(mesh, with_color)
        select_gl_platform()
        import pyrender

        self._pyrender = pyrender
        self._znear = float(znear)
        mesh = mesh_with_color_visual(mesh)
        self._scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[1.0, 1.0, 1.0])
        self._scene.add(pyrender.Mesh(primitives=[_primitive(pyrender, mesh)]))
        self._corners = trimesh.bounds.corners(mesh.bounds)
        self._camera_node = None

    def _render(self, K, pose, width, height) -> RenderedView:
        pr = self._pyrender
        if abs(K[0, 1]) > 1e-9:
            raise ValueError("pyrender backend does not support skewed intrinsics (K[0,1] != 0)")
        # Far plane just beyond the farthest mesh corner: nothing is clipped and
        # the depth buffer keeps as much precision as it can.
        zfar = float(np.linalg.norm(self._corners - pose[:3, 3], axis=1).max()) * 1.01 + 1e-3
        zfar = max(zfar, self._znear * 2)
        camera = pr.IntrinsicsCamera(
            fx=K[0, 0], fy=K[1, 1], cx=K[0, 2] + 0.5, cy=K[1, 2] + 0.5, znear=self._znear, zfar=zfar
        )
        if self._camera_node is not None:
            self._scene.remove_node(self._camera_node)
        self._camera_node = self._scene.add(camera, pose=opencv_to_opengl_pose(pose))
        renderer = _offscreen(pr, width, height)
        # Always the unlit colour pass: pyrender's DEPTH_ONLY pass ignores
        # SKIP_CULL_FACES and double-sided materials and culls back faces, which
        # the ray casters (and scanned meshes with mixed winding) need to keep.
        color, depth = renderer.render(self._scene, flags=pr.RenderFlags.SKIP_CULL_FACES | pr.RenderFlags.FLAT)
        rgb = np.ascontiguousarray(color[..., :3], dtype=np.uint8) if self.with_color else None
        depth = np.asarray(depth, dtype=np.float32).copy()
        depth[depth <= 0] = np.nan
        return RenderedView(depth=depth, rgb=rgb)

    def close(self) -> None:
        """Nothing to free: the OpenGL context is kept for the next scene (see ``_offscreen``)."""


def _primitive(pyrender, mesh: trimesh.Trimesh):
    """One unlit primitive carrying the mesh's colours. Built by hand because
    ``pyrender.Mesh.from_trimesh`` drops vertex/face colours when a material is
    given, and a double-sided material is needed (ray casters hit both sides)."""
    material = pyrender.MetallicRoughnessMaterial(
        baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0, doubleSided=True
    )
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if getattr(mesh.visual, "kind", None) == "vertex":
        # shared vertices: colours interpolate like the ray casters' barycentric blend
        colors = np.asarray(mesh.visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
        return pyrender.Primitive(positions=vertices, indices=faces, color_0=colors, material=material)
    # flat face colours: every face owns its three vertices
    colors = np.asarray(mesh.visual.face_colors, dtype=np.float32)[:, :3] / 255.0
    return pyrender.Primitive(
        positions=vertices[faces].reshape(-1, 3), color_0=np.repeat(colors, 3, axis=0), material=material
    )
