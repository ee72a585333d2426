"""Exact depth by rasterising face ids (OpenGL) and intersecting each pixel's ray
with the plane of its face (numpy).

The rasteriser only answers "which face is seen at this pixel centre": a
fragment shader writes ``gl_PrimitiveID + 1`` (0 = nothing) into a 32-bit
integer target, with a float32 depth buffer in reversed-Z (depth = znear / z,
compared with GREATER) so the visibility test keeps float32 relative precision
at every distance. The depth itself is then computed exactly like a ray caster
does: the ray through K^-1 [c, r, 1] (camera z = 1) meets the plane
``n_f . X = o_f`` of the reported face at z = (o_f - n_f . t) / (n_f . R d).
Where the rasteriser picks the same face as a ray caster (everywhere except a
sliver of silhouette pixels and near-coplanar overlaps) the depth equals the
ray caster's up to float rounding; no BVH is built, so a new mesh costs only a
buffer upload.

Camera: OpenCV pinhole K mapped straight to clip space, pixel (r, c) sampled at
window position (c + 0.5, r + 0.5); the image is read back bottom row first,
which is then row 0, so no flip is needed. Back faces are kept (culling off),
as the ray casters hit both sides.

The OpenGL context comes from pyrender's platform classes (OSMesa on CPU
machines, EGL with a GPU), one per thread for the life of the process; the
platform is chosen before PyOpenGL is first imported (``select_gl_platform``).
Needs OpenGL 3.3 and ``glClipControl`` (GL 4.5 or ARB_clip_control).
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import os
import sys
import threading

import numpy as np
import trimesh

from preprocess.render.backend_pyrender import select_gl_platform
from preprocess.render.base import MeshRenderer, RenderedView
from preprocess.render.camera import check_camera
from preprocess.render.mesh_io import SurfaceColors, barycentric

_VERTEX_SHADER = """
#version 330 core
layout(location = 0) in vec3 position;
uniform mat4 world_to_clip;
void main() { gl_Position = world_to_clip * vec4(position, 1.0); }
"""
_FRAGMENT_SHADER = """
#version 330 core
uniform uint first_id;  // 1 + index of the draw call's first face
out uint face_id;
void main() { face_id = first_id + uint(gl_PrimitiveID); }
"""
# Near clipping plane in metres (reversed-Z with a float depth buffer has no far
# plane and keeps relative precision, so it can be tiny).
ZNEAR = 1e-4
# framebuffers kept per context, one per image size (8 bytes a pixel each)
KEPT_FRAMEBUFFERS = 4


class _Context:
    """One OpenGL context (this thread's), its id shader and one framebuffer per image size."""

    def __init__(self):
        select_gl_platform()
        from OpenGL import GL as gl

        platform = os.environ.get("PYOPENGL_PLATFORM", "")
        if platform == "egl":
            from pyrender.platforms.egl import EGLPlatform as Platform
        else:
            from pyrender.platforms.osmesa import OSMesaPlatform as Platform
        self.gl = gl
        # the window itself is never drawn to: a 1x1 one, the images go to framebuffers
        self.platform = Platform(1, 1)
        self.platform.init_context()
        self.platform.make_current()
        n_ext = gl.glGetIntegerv(gl.GL_NUM_EXTENSIONS)
        extensions = {gl.glGetStringi(gl.GL_EXTENSIONS, i) for i in range(n_ext)}
        if b"GL_ARB_clip_control" not in extensions:
            raise RuntimeError(f"OpenGL {gl.glGetString(gl.GL_VERSION)} lacks ARB_clip_control (reversed-Z depth)")
        from OpenGL.GL.ARB.clip_control import glClipControl

        self.clip_control = glClipControl
        self.program = self._link()
        self.mvp_location = gl.glGetUniformLocation(self.program, "world_to_clip")
        self.first_id_location = gl.glGetUniformLocation(self.program, "first_id")
        self.framebuffers: dict[tuple[int, int], tuple[int, list[int]]] = {}  # size -> (fbo, renderbuffers)

    def _link(self) -> int:
        from OpenGL.GL import shaders

        gl = self.gl
        return shaders.compileProgram(
            shaders.compileShader(_VERTEX_SHADER, gl.GL_VERTEX_SHADER),
            shaders.compileShader(_FRAGMENT_SHADER, gl.GL_FRAGMENT_SHADER),
        )

    def framebuffer(self, width: int, height: int) -> int:
        """The framebuffer (face ids + depth) for this image size; the last few sizes are kept."""
        gl = self.gl
        key = (width, height)
        if key in self.framebuffers:
            self.framebuffers[key] = self.framebuffers.pop(key)  # most recently used last
            return self.framebuffers[key][0]
        while len(self.framebuffers) >= max(KEPT_FRAMEBUFFERS, 1):  # free the least recently used sizes
            fbo, renderbuffers = self.framebuffers.pop(next(iter(self.framebuffers)))
            gl.glDeleteFramebuffers(1, [fbo])
            gl.glDeleteRenderbuffers(2, renderbuffers)
        fbo = gl.glGenFramebuffers(1)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo)
        ids, depth = renderbuffers = list(gl.glGenRenderbuffers(2))
        gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, ids)
        gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, gl.GL_R32UI, width, height)
        gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_RENDERBUFFER, ids)
        gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, depth)
        gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, gl.GL_DEPTH_COMPONENT32F, width, height)
        gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, gl.GL_DEPTH_ATTACHMENT, gl.GL_RENDERBUFFER, depth)
        status = gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER)
        if status != gl.GL_FRAMEBUFFER_COMPLETE:
            gl.glDeleteFramebuffers(1, [fbo])
            gl.glDeleteRenderbuffers(2, renderbuffers)
            raise RuntimeError(f"OpenGL framebuffer {width}x{height} incomplete (status {status:#x})")
        self.framebuffers[key] = (fbo, renderbuffers)
        return fbo


_CONTEXTS = threading.local()
_ALL_CONTEXTS: list[_Context] = []


def _context() -> _Context:
    ctx = getattr(_CONTEXTS, "ctx", None)
    if ctx is None:
        ctx = _CONTEXTS.ctx = _Context()
        if not _ALL_CONTEXTS:
            atexit.register(_destroy_contexts)
        _ALL_CONTEXTS.append(ctx)
    return ctx


def _destroy_contexts() -> None:
    """Destroy every context while the interpreter is still whole: left to the
    platforms' ``__del__`` at shutdown, PyOpenGL prints lookup failures to stdout."""
    for ctx in _ALL_CONTEXTS:
        try:
            ctx.platform.delete_context()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
        ctx.platform.delete_context = lambda: None  # its __del__ has nothing left to do
    _ALL_CONTEXTS.clear()


def world_to_clip(K: np.ndarray, pose: np.ndarray, width: int, height: int, znear: float = ZNEAR) -> np.ndarray:
    """float64 [4,4]: world point -> clip coordinates for OpenCV ``K`` and camera-to-world
    ``pose``, pixel (r, c) at window (c + 0.5, r + 0.5), reversed-Z depth znear / z
    (with clip control ZERO_TO_ONE), no far plane."""
    proj = np.zeros((4, 4))
    proj[0, :3] = 2.0 * K[0] / width - np.array([0.0, 0.0, 1.0 - 1.0 / width])  # 2 (u + 0.5) / W - 1
    proj[1, :3] = 2.0 * K[1] / height - np.array([0.0, 0.0, 1.0 - 1.0 / height])
    proj[2, 3] = znear
    proj[3, 2] = 1.0
    view = np.eye(4)
    view[:3, :3] = pose[:3, :3].T
    view[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return proj @ view


class RasterRenderer(MeshRenderer):
    name = "raster"

    def __init__(self, mesh: trimesh.Trimesh, with_color: bool = True):
        super().__init__(mesh, with_color)
        self._ctx = _context()
        self._thread = threading.get_ident()
        gl = self._ctx.gl
        self._ctx.platform.make_current()
        vertices = np.asarray(mesh.vertices, dtype=np.float64)
        faces = np.asarray(mesh.faces, dtype=np.int64)
        if len(faces) >= 2**32 - 1:
            raise ValueError(f"raster backend: {len(faces)} faces do not fit 32-bit face ids")
        # Faces are drawn grouped by grid cell so that cells outside the view frustum
        # are skipped (llvmpipe transforms every submitted vertex on one thread);
        # every per-face table below is in this order, ``_order`` maps back.
        # corners as [3, F] per vertex slot: component rows stay contiguous below
        vt, ft = np.ascontiguousarray(vertices.T), np.ascontiguousarray(faces.T)
        a, b, c = (np.stack([vt[k].take(ft[i]) for k in range(3)]) for i in range(3))
        self._order, self._cells, self._cell_box = _spatial_cells(a, b, c)
        self._faces = faces[self._order]
        self._vertices = vertices
        # Plane of every face, n . X = offset (n not normalised: only ratios are used), as
        # float64 rows [n_x, n_y, n_z, offset] x (1 + F) in cell order; column 0 (id 0,
        # nothing hit) gives NaN depth.
        e1, e2 = b - a, c - a
        plane = np.empty((4, len(faces)))
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            np.multiply(e1[j], e2[k], out=plane[i])
            plane[i] -= e1[k] * e2[j]
        np.multiply(plane[0], a[0], out=plane[3])
        plane[3] += plane[1] * a[1]
        plane[3] += plane[2] * a[2]
        self._planes = np.empty((4, len(faces) + 1))
        self._planes[:3, 0], self._planes[3, 0] = 0.0, np.nan
        for k in range(4):
            plane[k].take(self._order, out=self._planes[k, 1:])
        self._coef = np.empty_like(self._planes)
        self._vao = gl.glGenVertexArrays(1)
        gl.glBindVertexArray(self._vao)
        self._buffers = gl.glGenBuffers(2)
        gl.glBindBuffer(gl.GL_ARRAY_BUFFER, self._buffers[0])
        positions = np.ascontiguousarray(vertices, dtype=np.float32)
        gl.glBufferData(gl.GL_ARRAY_BUFFER, positions.nbytes, positions, gl.GL_STATIC_DRAW)
        gl.glEnableVertexAttribArray(0)
        gl.glVertexAttribPointer(0, 3, gl.GL_FLOAT, gl.GL_FALSE, 0, ctypes.c_void_p(0))
        gl.glBindBuffer(gl.GL_ELEMENT_ARRAY_BUFFER, self._buffers[1])
        indices = np.ascontiguousarray(self._faces, dtype=np.uint32)
        gl.glBufferData(gl.GL_ELEMENT_ARRAY_BUFFER, indices.nbytes, indices, gl.GL_STATIC_DRAW)
        gl.glBindVertexArray(0)
        self._colors = SurfaceColors.of(mesh) if with_color else None
        # per-face colours with a black row 0 for "nothing hit" (ids are face + 1)
        self._face_rgb = (np.concatenate([np.zeros((1, 3), np.uint8), self._colors.face[self._order]])
                          if self._colors is not None and self._colors.face is not None else None)

    def face_ids(self, K: np.ndarray, pose: np.ndarray, width: int, height: int) -> np.ndarray:
        """int64 [H, W]: index of the mesh face seen at each pixel centre, -1 where none."""
        K, pose = check_camera(K, pose, width, height)
        ids = self._sorted_ids(K, pose, int(width), int(height))
        return np.concatenate([[-1], self._order])[ids]

    def _sorted_ids(self, K: np.ndarray, pose: np.ndarray, width: int, height: int) -> np.ndarray:
        """uint32 [H, W]: 1 + index into the cell-sorted faces seen at each pixel centre, 0 where none."""
        ctx = self._ctx
        gl = ctx.gl
        ctx.platform.make_current()
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, ctx.framebuffer(width, height))
        gl.glViewport(0, 0, width, height)
        ctx.clip_control(gl.GL_LOWER_LEFT, gl.GL_ZERO_TO_ONE)
        gl.glEnable(gl.GL_DEPTH_TEST)
        gl.glDepthFunc(gl.GL_GREATER)
        gl.glDisable(gl.GL_CULL_FACE)
        gl.glDisable(gl.GL_BLEND)
        gl.glClearBufferuiv(gl.GL_COLOR, 0, np.zeros(4, np.uint32))
        gl.glClearBufferfv(gl.GL_DEPTH, 0, np.zeros(1, np.float32))
        gl.glUseProgram(ctx.program)
        mvp = world_to_clip(K, pose, width, height)
        gl.glUniformMatrix4fv(ctx.mvp_location, 1, gl.GL_TRUE, np.ascontiguousarray(mvp, dtype=np.float32))
        gl.glBindVertexArray(self._vao)
        for first, count in _visible_runs(mvp, self._cells, self._cell_box):
            # gl_PrimitiveID restarts at 0 in every draw call
            gl.glUniform1ui(ctx.first_id_location, first + 1)
            gl.glDrawElements(gl.GL_TRIANGLES, 3 * count, gl.GL_UNSIGNED_INT, ctypes.c_void_p(12 * first))
        gl.glBindVertexArray(0)
        ids = np.empty((height, width), np.uint32)
        gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 4)
        gl.glReadPixels(0, 0, width, height, gl.GL_RED_INTEGER, gl.GL_UNSIGNED_INT, ids)
        return ids

    def _render(self, K, pose, width, height) -> RenderedView:
        ids = self._sorted_ids(K, pose, width, height).ravel()
        z = self._depth(ids, K, pose, width, height)
        rgb = None
        if self._colors is not None:
            if self._face_rgb is not None:
                rgb = np.take(self._face_rgb, ids, axis=0)
            else:
                rgb = np.zeros((height * width, 3), np.uint8)
                hit = np.flatnonzero(ids)
                face = ids[hit].astype(np.int64) - 1
                col, row = _pixel_grid(width, height)
                pix = np.stack([col[hit], row[hit], np.ones(len(hit))], 1)
                # einsum, not @: a k = 3 product through multithreaded BLAS is slow here
                X = pose[:3, 3] + z[hit, None] * np.einsum("mk,jk->mj", pix, pose[:3, :3] @ np.linalg.inv(K))
                v0, v1, v2 = (self._vertices[self._faces[face, i]] for i in range(3))
                rgb[hit] = self._colors.at(self._faces, face, barycentric(X - v0, v1 - v0, v2 - v0))
            rgb = rgb.reshape(height, width, 3)
        return RenderedView(depth=z.astype(np.float32).reshape(height, width), rgb=rgb)

    def _depth(self, ids: np.ndarray, K, pose, width, height) -> np.ndarray:
        """float64 [H*W] z-depth of each pixel's ray on the plane of face ``ids - 1`` (NaN for id 0).

        The ray X = t + z R K^-1 [c, r, 1] meets n . X = offset at
        z = (offset - n . t) / (n^T R K^-1 [c, r, 1]) = num / (A c + B r + C); per frame
        (A, B, C, num) of every face is one 4x4 map of its plane, then four gathers by
        id. Written per component: a [F,4] x [4,4] product through multithreaded BLAS
        took 50 ms here against 2 ms.
        """
        M = np.zeros((4, 4))
        M[:3, :3] = pose[:3, :3] @ np.linalg.inv(K)
        M[:3, 3] = -pose[:3, 3]
        M[3, 3] = 1.0
        P, coef = self._planes, self._coef
        for j in range(4):
            out = coef[j]
            np.multiply(P[0], M[0, j], out=out)
            for i in range(1, 4):
                if M[i, j] != 0.0:
                    out += P[i] * M[i, j]
        A, B, C, num = (np.take(coef[j], ids) for j in range(4))
        c, r = _pixel_grid(width, height)
        A *= c
        B *= r
        A += B
        A += C
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.divide(num, A, out=num)

    def close(self) -> None:
        """Free this mesh's buffers; the context stays for the next mesh."""
        if getattr(self, "_vao", None) is None:
            return
        gl = self._ctx.gl
        self._ctx.platform.make_current()
        gl.glDeleteBuffers(2, self._buffers)
        gl.glDeleteVertexArrays(1, [self._vao])
        self._vao = None

    def __del__(self):
        # only from the thread whose context holds the buffers (a context is current in one
        # thread), and not at interpreter exit: PyOpenGL then prints its lookup failures to
        # stdout (the process's memory goes anyway)
        if getattr(self, "_thread", None) == threading.get_ident() and not sys.is_finalizing():
            try:
                self.close()
            except Exception:  # interpreter shutdown: the context may already be gone
                pass


def _spatial_cells(a: np.ndarray, b: np.ndarray, c: np.ndarray, faces_per_cell: int = 2048):
    """Group faces (corners a, b, c float64 [3, F]) by the cell of a regular grid over
    the mesh bounds holding their centroid, about ``faces_per_cell`` per cell on a
    surface-like mesh.

    Returns the face order (int64 [F], faces sorted by cell), cell starts in that
    order (int64 [C + 1], last = F) and each cell's bounding box of its faces'
    corners (float64 [C, 2, 3]: min, max), for frustum culling.
    """
    n = a.shape[1]
    lo = np.minimum(np.minimum(a, b), c)
    hi = np.maximum(np.maximum(a, b), c)
    # surfaces fill ~ G^2 of G^3 cells: G = sqrt(F / faces_per_cell), at most 32^3 cells
    g = int(np.clip(np.sqrt(n / faces_per_cell), 1, 32))
    key = np.zeros(n, np.int16)  # < 32^3: int16, so argsort is a radix sort
    for i in range(3):
        centroid = a[i] + b[i] + c[i]  # 3x the centroid, against 3x the bounds
        low, high = 3 * lo[i].min(), 3 * hi[i].max()
        cell = ((centroid - low) * (g / max(high - low, 1e-12))).astype(np.int16)
        np.clip(cell, 0, g - 1, out=cell)
        key *= g
        key += cell
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    box = np.empty((len(starts), 2, 3))
    for i in range(3):
        box[:, 0, i] = np.minimum.reduceat(lo[i][order], starts)
        box[:, 1, i] = np.maximum.reduceat(hi[i][order], starts)
    return order, np.r_[starts, n], box


def _visible_runs(world_to_clip: np.ndarray, cells: np.ndarray, box: np.ndarray) -> list[tuple[int, int]]:
    """(first face, face count) of each run of consecutive cells whose box is not
    entirely outside one of the view frustum's planes (left, right, bottom, top, near)."""
    M = world_to_clip
    planes = np.stack([M[3] + M[0], M[3] - M[0], M[3] + M[1], M[3] - M[1], M[3] - M[2]])  # inside: p . [X, 1] >= 0
    centre, half = (box[:, 0] + box[:, 1]) / 2, (box[:, 1] - box[:, 0]) / 2
    # the box corner farthest inside each plane
    reach = np.einsum("pk,ck->pc", planes[:, :3], centre) + np.einsum("pk,ck->pc", np.abs(planes[:, :3]), half)
    visible = (reach + planes[:, 3:] >= 0).all(0)
    edges = np.flatnonzero(np.diff(np.r_[0, visible.astype(np.int8), 0]))
    return [(int(cells[a]), int(cells[b] - cells[a])) for a, b in zip(edges[::2], edges[1::2])]


@functools.lru_cache(maxsize=4)
def _pixel_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 [H*W] column and row of every pixel, row-major (read-only, cached)."""
    r, c = np.divmod(np.arange(width * height, dtype=np.float64), width)
    c.setflags(write=False)
    r.setflags(write=False)
    return c, r

