"""Fill the missing depth (and, on request, colour) of a scene's frames by
rendering its ground-truth mesh."""
from __future__ import annotations

import dataclasses

import numpy as np

from tqdm.auto import tqdm

from preprocess.render import make_renderer
from preprocess.render.camera import CameraError
from preprocess.render.mesh_io import MeshLoadError, load_mesh
from preprocess.scene import Scene, SceneError


class SceneRenderError(SceneError):
    """Rendering a scene failed; names the scene and the file or frame."""


def complete_depth(scene: Scene, backend: str = "auto", render_rgb: bool | None = None, progress: bool = False) -> Scene:
    """Return a new Scene whose frames all have depth.

    Frames with ``depth is None`` get z-depth (float32 m, NaN = no surface)
    rendered from ``scene.mesh_path``, which is loaded once; pixels listed in
    ``scene.meta["invalid_pixels"][frame name]`` (bool [H,W]) get NaN. With ``render_rgb``
    (default: ``scene.meta.get("render_rgb", False)``) their rgb is replaced by
    the mesh's rendered colour too. Frames that already have depth are kept as
    they are. Raises SceneRenderError naming the scene and the mesh file or frame.
    """
    if render_rgb is None:
        render_rgb = bool(scene.meta.get("render_rgb", False))
    todo = [i for i, f in enumerate(scene.frames) if f.depth is None]
    if not todo:
        return scene
    if scene.mesh_path is None:
        raise SceneRenderError(scene.key, "mesh_path", f"{len(todo)} frames have no depth and the scene has no mesh to render it from")
    try:
        mesh = load_mesh(scene.mesh_path)
    except MeshLoadError as exc:
        raise SceneRenderError(scene.key, f"mesh_path '{scene.mesh_path}'", str(exc)) from exc

    frames = list(scene.frames)
    with make_renderer(mesh, backend=backend, with_color=render_rgb) as renderer:
        for i in tqdm(todo, desc=f"render {scene.key}", unit="frame", disable=not progress, leave=False):
            frame = frames[i]
            try:
                view = renderer.render(frame.K, frame.pose, frame.width, frame.height)
            except CameraError as exc:
                raise SceneRenderError(scene.key, f"frames[{i}:{frame.name}]", str(exc)) from exc
            depth = view.depth
            invalid = (scene.meta.get("invalid_pixels") or {}).get(frame.name)
            if invalid is not None:  # e.g. ScanNet++ anonymisation masks: no depth, so no correspondences
                depth = np.where(invalid, np.nan, depth).astype(np.float32)
            changes = {"depth": depth}
            if render_rgb:
                changes["rgb"] = view.rgb
            frames[i] = dataclasses.replace(frame, **changes)
    return scene.replace(frames=frames)
