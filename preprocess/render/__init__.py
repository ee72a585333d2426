"""Mesh -> z-depth and colour images, behind one interface with run-time backends.

    views = render_views(mesh, K, poses, width, height, backend="auto")
    with make_renderer(mesh, backend="open3d") as r:   # load once, render many
        view = r.render(K, pose, width, height)

Conventions follow ``preprocess.scene``: K [3,3] (pixel centres at integer
coords), pose [4,4] camera-to-world in OpenCV axes, depth = z-depth float32 in
metres with NaN where no surface is hit, rgb uint8 [H,W,3] (black where empty).

Backends (imported only when used, so this package needs no OpenGL):
  open3d   - o3d.t.geometry.RaycastingScene ray casting, CPU
  embree   - trimesh + embreex ``intersects_first``, CPU
  pyrender - OpenGL rasterisation, OSMesa on CPU or EGL on GPU machines
  raster   - OpenGL rasterises face ids, depth = each pixel's ray on its face's
             plane (numpy): ray-caster depth without a BVH
``auto`` takes the first usable backend of ``AUTO_ORDER`` (exact depth first,
then speed, as measured by benchmarks/bench_render.py on this machine kind).
"""
from __future__ import annotations

import functools
import importlib
from typing import Iterable, Sequence

import numpy as np
import trimesh

from preprocess.render.base import MeshRenderer, RenderedView
from preprocess.render.camera import CameraError
from preprocess.render.mesh_io import MeshLoadError, load_mesh

_BACKENDS = {
    "open3d": ("preprocess.render.backend_open3d", "Open3DRenderer"),
    "embree": ("preprocess.render.backend_embree", "EmbreeRenderer"),
    "pyrender": ("preprocess.render.backend_pyrender", "PyrenderRenderer"),
    "raster": ("preprocess.render.backend_raster", "RasterRenderer"),
}
# raster first: the ray caster's depth (same face per pixel but at a few silhouette
# pixels) without building a BVH per mesh; open3d (exact ray casting) where OpenGL is
# missing; pyrender's 24-bit depth buffer is approximate (benchmarks/bench_render.py,
# bench_correspondence.py).
AUTO_ORDER = ("raster", "open3d", "pyrender", "embree")
BACKENDS = tuple(_BACKENDS)


class BackendUnavailable(RuntimeError):
    """The requested render backend cannot run here (library or driver missing)."""


def _backend_class(name: str):
    if name not in _BACKENDS:
        raise ValueError(f"unknown render backend '{name}'; known: {', '.join(_BACKENDS)} or 'auto'")
    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


@functools.cache
def _probe(name: str) -> str | None:
    """None if backend ``name`` works here, else why not. Renders a one-triangle
    mesh once per process (cached)."""
    try:
        cls = _backend_class(name)
        tri = trimesh.Trimesh(vertices=[[-1, -1, 1], [1, -1, 1], [0, 1, 1]], faces=[[0, 1, 2]], process=False)
        with cls(tri, with_color=False) as r:
            r.render(np.array([[2.0, 0, 1], [0, 2.0, 1], [0, 0, 1]]), np.eye(4), 3, 3)
    except Exception as exc:  # any import/driver failure means "not usable here"
        return f"{type(exc).__name__}: {exc}"
    return None


def available_backends() -> list[str]:
    """Backends that import and render here, in ``AUTO_ORDER``."""
    return [b for b in AUTO_ORDER if _probe(b) is None]


def resolve_backend(backend: str = "auto") -> str:
    """The concrete backend name for ``backend`` ("auto" or a name); raises
    BackendUnavailable with the reason when it cannot run."""
    if backend == "auto":  # the first that works (probing every backend costs start-up time)
        usable = next((b for b in AUTO_ORDER if _probe(b) is None), None)
        if usable is None:
            reasons = "; ".join(f"{b}: {_probe(b)}" for b in AUTO_ORDER)
            raise BackendUnavailable(f"no render backend works here ({reasons})")
        return usable
    _backend_class(backend)  # unknown name -> ValueError
    reason = _probe(backend)
    if reason is not None:
        raise BackendUnavailable(f"render backend '{backend}' is unavailable: {reason}")
    return backend


def make_renderer(mesh: trimesh.Trimesh, backend: str = "auto", with_color: bool = True, **options) -> MeshRenderer:
    """A renderer holding ``mesh``; ``options`` go to the backend (e.g.
    ``znear`` for pyrender, ``nthreads`` for open3d)."""
    return _backend_class(resolve_backend(backend))(mesh, with_color=with_color, **options)


def render_views(
    mesh: trimesh.Trimesh,
    K: np.ndarray | Sequence[np.ndarray],
    poses: Iterable[np.ndarray],
    width: int,
    height: int,
    backend: str = "auto",
    with_color: bool = True,
) -> list[RenderedView]:
    """Render ``mesh`` from every pose. K: one [3,3] for all views or [N,3,3]."""
    with make_renderer(mesh, backend=backend, with_color=with_color) as renderer:
        return list(renderer.render_many(K, poses, width, height))


__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "BackendUnavailable",
    "CameraError",
    "MeshLoadError",
    "MeshRenderer",
    "RenderedView",
    "available_backends",
    "load_mesh",
    "make_renderer",
    "render_views",
    "resolve_backend",
]
