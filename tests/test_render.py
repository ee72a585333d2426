"""Mesh rendering: every backend against analytic depth, and against each other."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

import preprocess.render as R
from preprocess.procedural.rooms import RoomConfig, generate_room
from preprocess.render.camera import CameraError
from preprocess.render.complete_depth import SceneRenderError, complete_depth
from preprocess.render.preview import write_previews
from preprocess.scene import Frame, PointCloud, Scene

W, H = 64, 48
K = np.array([[50.0, 0.0, 30.3], [0.0, 52.0, 25.1], [0.0, 0.0, 1.0]])  # off-centre principal point on purpose


def _backend(name):
    reason = R._probe(name)
    if reason is not None:
        pytest.skip(f"backend {name} unavailable here: {reason}")
    return name


@pytest.fixture(params=R.BACKENDS)
def backend(request):
    return _backend(request.param)


def _rotation(seed=3) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _pose(seed=3) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = _rotation(seed)
    pose[:3, 3] = [0.7, -1.2, 2.5]
    return pose


def _to_world(mesh_cam: trimesh.Trimesh, pose: np.ndarray) -> trimesh.Trimesh:
    m = mesh_cam.copy()
    m.apply_transform(pose)
    return m


def _rays_cam() -> np.ndarray:
    """[H, W, 3] K^-1 [c, r, 1] (z = 1)."""
    c, r = np.meshgrid(np.arange(W), np.arange(H))
    return np.stack([c, r, np.ones_like(c)], -1) @ np.linalg.inv(K).T


def _interior(depth: np.ndarray, jump: float = 0.02, rel: float = 0.0) -> np.ndarray:
    """Pixels whose 8 neighbours share their hit/no-hit state and have no depth
    jump (silhouette edges are sampled differently by rasterisers)."""
    hit = np.isfinite(depth)
    d = np.where(hit, depth, 0.0)
    pad_h = np.pad(hit, 1, mode="edge")
    pad_d = np.pad(d, 1, mode="edge")
    ok = np.ones_like(hit)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nh = pad_h[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W]
            nd = pad_d[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W]
            ok &= (nh == hit) & (np.abs(nd - d) < jump + rel * d)
    return ok


def _plane(normal_cam, point_cam, half=20.0) -> trimesh.Trimesh:
    """A square (two triangles) through point_cam with the given normal, camera frame."""
    n = np.asarray(normal_cam, float) / np.linalg.norm(normal_cam)
    a = np.cross(n, [0.3, 1.0, 0.1])
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    p = np.asarray(point_cam, float)
    v = np.array([p - half * a - half * b, p + half * a - half * b, p + half * a + half * b, p - half * a + half * b])
    return trimesh.Trimesh(vertices=v, faces=[[0, 1, 2], [0, 2, 3]], process=False)


def test_fronto_parallel_plane(backend):
    pose = _pose()
    mesh = _to_world(_plane([0, 0, 1], [0, 0, 2.75]), pose)
    view = R.render_views(mesh, K, [pose], W, H, backend=backend, with_color=False)[0]
    assert view.depth.dtype == np.float32 and view.depth.shape == (H, W)
    assert view.rgb is None
    np.testing.assert_allclose(view.depth, 2.75, atol=1e-4)


def test_tilted_plane_matches_analytic_depth(backend):
    # Steep tilt: depth changes by centimetres per pixel, so a half-pixel error in
    # the pixel-centre convention would show up far above the tolerance.
    n = np.array([0.45, -0.2, -1.0])
    p0 = np.array([0.0, 0.0, 2.5])
    pose = _pose(5)
    mesh = _to_world(_plane(n, p0), pose)
    depth = R.render_views(mesh, K, [pose], W, H, backend=backend, with_color=False)[0].depth
    expected = (n @ p0) / (_rays_cam() @ n)  # X = z d with d_z = 1, n.X = n.p0
    expected[expected <= 0] = np.nan
    assert np.isfinite(depth).all()
    np.testing.assert_allclose(depth, expected, atol=1e-4)
    assert np.nanmax(expected) - np.nanmin(expected) > 1.5  # really tilted
    assert np.nanmax(expected) < 5.0  # pyrender's 24-bit depth buffer holds 1e-4 m up to ~5 m


def test_box_matches_analytic_depth_and_misses_are_nan(backend):
    lo, hi = np.array([-0.5, -0.3, 2.0]), np.array([0.4, 0.35, 2.6])
    box_cam = trimesh.creation.box(bounds=[lo, hi])
    pose = _pose(7)
    depth = R.render_views(_to_world(box_cam, pose), K, [pose], W, H, backend=backend, with_color=False)[0].depth
    # slab intersection of the ray X = z d (d_z = 1) with the box: entry z
    d = _rays_cam()
    with np.errstate(divide="ignore", invalid="ignore"):
        t0, t1 = (lo - 0.0) / d, (hi - 0.0) / d
    tmin = np.minimum(t0, t1).max(-1)
    tmax = np.maximum(t0, t1).min(-1)
    expected = np.where(tmax >= tmin, tmin, np.nan)
    inside = _interior(expected)
    assert np.isfinite(expected).sum() > 200 and np.isnan(expected).sum() > 200
    np.testing.assert_allclose(depth[inside], expected[inside], atol=1e-4)
    assert np.isnan(depth[inside & np.isnan(expected)]).all()
    assert not (depth == 0).any()


def test_nothing_hit_gives_nan_and_black(backend):
    pose = _pose()
    mesh = _to_world(_plane([0, 0, 1], [0, 0, -2.0]), pose)  # behind the camera
    view = R.render_views(mesh, K, [pose], W, H, backend=backend)[0]
    assert np.isnan(view.depth).all()
    assert view.rgb.shape == (H, W, 3) and view.rgb.dtype == np.uint8 and (view.rgb == 0).all()


def _room():
    return generate_room(0, 1, RoomConfig(frames=3, width=W, height=H))


def _vertex_colored(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    rng = np.random.default_rng(0)
    return trimesh.Trimesh(
        vertices=mesh.vertices, faces=mesh.faces, vertex_colors=rng.integers(0, 256, (len(mesh.vertices), 3), dtype=np.uint8),
        process=False,
    )


@pytest.mark.parametrize("colors", ["face", "vertex"])
def test_backends_agree_on_a_room(colors):
    backends = [b for b in R.BACKENDS if R._probe(b) is None]
    assert len(backends) >= 2, "need two backends to compare"
    room = _room()
    mesh = room.mesh.to_trimesh()
    if colors == "vertex":
        mesh = _vertex_colored(mesh)
    views = {b: R.render_views(mesh, room.K, room.poses, W, H, backend=b) for b in backends}
    ref = views[backends[0]]
    for b in backends[1:]:
        for a, c in zip(ref, views[b]):
            inside = _interior(a.depth, rel=0.1) & _interior(c.depth, rel=0.1)
            assert inside.mean() > 0.5
            assert np.array_equal(np.isnan(a.depth[inside]), np.isnan(c.depth[inside]))
            # 1e-4 m; pyrender reads a 24-bit depth buffer whose step grows as
            # z^2 / znear (znear 0.05 m): allow 4 steps beyond ~5 m.
            z = a.depth[inside].astype(np.float64)
            tol = np.maximum(1e-4, 4 * z**2 * 2.0**-24 / 0.05) if b == "pyrender" else 1e-4
            assert (np.abs(c.depth[inside] - z) <= tol).all(), f"{b}: max err {np.nanmax(np.abs(c.depth[inside] - z))}"
            diff = np.abs(a.rgb.astype(int) - c.rgb.astype(int)).max(-1)[inside]
            # Colours agree (vertex colours within rounding); the rare exceptions are
            # rays through a shared edge where the two triangles' colours differ.
            assert (diff <= 1).mean() > 0.995, f"{b} vs {backends[0]}"


def test_renderer_loads_once_and_accepts_per_view_intrinsics():
    room = _room()
    K2 = room.K.copy()
    K2[0, 0] *= 1.1
    with R.make_renderer(room.mesh.to_trimesh(), backend="auto") as r:
        views = list(r.render_many(np.stack([room.K, K2]), room.poses[:2], W, H))
    assert len(views) == 2 and all(np.isfinite(v.depth).mean() > 0.9 for v in views)
    with pytest.raises(ValueError, match="one per pose"):
        R.render_views(room.mesh.to_trimesh(), np.stack([room.K] * 3), room.poses[:2], W, H)


def test_bad_cameras_and_backend_names_are_rejected():
    mesh = _plane([0, 0, 1], [0, 0, 2])
    bad_k = K.copy()
    bad_k[0, 0] = 0
    with pytest.raises(CameraError, match="focal"):
        R.render_views(mesh, bad_k, [np.eye(4)], W, H, backend="auto")
    bad_pose = np.eye(4)
    bad_pose[0, 0] = 2
    with pytest.raises(CameraError, match="rotation"):
        R.render_views(mesh, K, [bad_pose], W, H, backend="auto")
    with pytest.raises(ValueError, match="unknown render backend"):
        R.render_views(mesh, K, [np.eye(4)], W, H, backend="nope")


@pytest.mark.parametrize(
    "content",
    [b"", b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\x00\x01", b"\x00garbage\xff" * 10],
)
def test_corrupt_mesh_file_names_the_file(tmp_path, content):
    path = tmp_path / "broken_mesh.ply"
    path.write_bytes(content)
    with pytest.raises(R.MeshLoadError, match="broken_mesh.ply"):
        R.load_mesh(path)


def test_missing_mesh_file_names_the_file(tmp_path):
    with pytest.raises(R.MeshLoadError, match="nothere.ply"):
        R.load_mesh(tmp_path / "nothere.ply")


def _scene_with_mesh(tmp_path, mesh_path=None, **meta) -> Scene:
    room = _room()
    if mesh_path is None:
        mesh_path = tmp_path / "room.ply"
        room.mesh.to_trimesh().export(mesh_path)
    frames = [
        Frame(name=f"f{i}", rgb=np.zeros((H, W, 3), np.uint8), K=room.K.astype(np.float32), pose=p.astype(np.float32))
        for i, p in enumerate(room.poses)
    ]
    frames[1].depth = np.full((H, W), 7.0, np.float32)  # already measured: must be kept
    pc = PointCloud(coord=np.zeros((4, 3), np.float32), color=np.zeros((4, 3), np.uint8), normal=np.zeros((4, 3), np.float32))
    return Scene(scene_id="room_x", source="test", points=pc, frames=frames, mesh_path=mesh_path, meta=meta)


def test_complete_depth_fills_missing_depth_only(tmp_path):
    scene = _scene_with_mesh(tmp_path)
    done = complete_depth(scene)
    assert scene.frames[0].depth is None  # input untouched
    done.validate(require_depth=True)
    assert (done.frames[1].depth == 7.0).all()
    for i in (0, 2):
        assert np.isfinite(done.frames[i].depth).mean() > 0.9
        assert (done.frames[i].rgb == 0).all()  # rgb not requested
    with_rgb = complete_depth(scene, render_rgb=True)
    assert with_rgb.frames[0].rgb.std() > 5  # real colours, patterned
    assert (with_rgb.frames[1].rgb == 0).all()  # had depth: not re-rendered
    assert complete_depth(_scene_with_mesh(tmp_path, render_rgb=True)).frames[0].rgb.std() > 5


def test_complete_depth_errors_name_scene_and_file(tmp_path):
    bad = tmp_path / "corrupt.ply"
    bad.write_bytes(b"ply\nthis is not a mesh")
    with pytest.raises(SceneRenderError, match=r"test/room_x.*corrupt\.ply"):
        complete_depth(_scene_with_mesh(tmp_path, mesh_path=bad))
    scene = _scene_with_mesh(tmp_path).replace(mesh_path=None)
    with pytest.raises(SceneRenderError, match=r"test/room_x.*mesh_path"):
        complete_depth(scene)


def test_preview_pngs(tmp_path):
    scene = complete_depth(_scene_with_mesh(tmp_path, render_rgb=True))
    paths = write_previews(scene, tmp_path / "previews", max_frames=2)
    assert len(paths) == 2
    from PIL import Image

    img = np.asarray(Image.open(paths[0]))
    assert img.shape == (H, 2 * W + 4, 3)
    assert img[:, W + 4 :].std() > 10  # depth colour map varies


def test_package_imports_without_opengl():
    code = "import sys, preprocess.render, preprocess.render.complete_depth; assert 'OpenGL' not in sys.modules and 'pyrender' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_pyrender_context_is_reused_across_scenes_without_leftovers():
    """The OpenGL context outlives a renderer; the next scene must not see the previous mesh."""
    _backend("pyrender")
    from preprocess.render import backend_pyrender

    big = _room().mesh.to_trimesh()
    with R.make_renderer(big, backend="pyrender", with_color=False) as r:
        r.render(K, _pose(), W, H)
        first = backend_pyrender._offscreen(r._pyrender, W, H)
    # a small plane facing the camera: everywhere else must be empty (NaN), not the old room
    plane = trimesh.Trimesh(vertices=[[-0.2, -0.2, 2.0], [0.2, -0.2, 2.0], [0.2, 0.2, 2.0], [-0.2, 0.2, 2.0]],
                            faces=[[0, 1, 2], [0, 2, 3]], process=False)
    with R.make_renderer(plane, backend="pyrender", with_color=False) as r:
        got = r.render(K, np.eye(4), W, H).depth
        assert backend_pyrender._offscreen(r._pyrender, W, H) is first
    exact = R.render_views(plane, K, [np.eye(4)], W, H, backend="open3d", with_color=False)[0].depth
    inside = _interior(exact, rel=0.1) & _interior(got, rel=0.1)
    assert np.array_equal(np.isnan(got[inside]), np.isnan(exact[inside]))
    assert np.isnan(got).mean() > 0.5 and np.nanmax(np.abs(got - exact)) < 1e-3


def _open3d_view(mesh, pose, k=K, w=W, h=H):
    """open3d's depth and primitive ids (-1 = miss) for one view."""
    from preprocess.render.backend_open3d import Open3DRenderer

    with Open3DRenderer(mesh, with_color=False) as r:
        depth = r.render(k, pose, w, h).depth
        import open3d as o3d
        from preprocess.render.camera import world_rays

        o, d, _ = world_rays(k, pose, w, h)
        rays = o3d.core.Tensor(np.concatenate([o, d], 1).astype(np.float32))
        ids = r._scene.cast_rays(rays)["primitive_ids"].numpy().astype(np.int64)
    ids[ids == np.iinfo(np.uint32).max] = -1
    return depth, ids.reshape(h, w)


def test_raster_matches_the_ray_caster_face_by_face_on_a_culled_mesh():
    """The raster backend's depth is the ray caster's (not a depth buffer's): same
    face at every pixel but a few on depth edges, depth equal to float rounding,
    also far away; the mesh is big enough to be split into cells for culling."""
    _backend("raster")
    room = generate_room(0, 2, RoomConfig(frames=2, width=W, height=H))
    mesh = room.mesh.to_trimesh().subdivide().subdivide()
    mesh.apply_scale(4.0)  # a 4x bigger room: depths up to ~25 m, beyond a 24-bit buffer's 1e-4 m
    with R.make_renderer(mesh, backend="raster") as r:
        assert len(r._cells) - 1 > 8  # really split into cells (frustum culling active)
        for pose in room.poses:
            pose = pose.copy()
            pose[:3, 3] *= 4.0
            exact, exact_ids = _open3d_view(mesh, pose, room.K)
            view = r.render(room.K, pose, W, H)
            ids = r.face_ids(room.K, pose, W, H)
            assert np.nanmax(exact) > 8.0
            same = ids == exact_ids
            assert same.mean() > 0.99
            np.testing.assert_allclose(view.depth[same], exact[same], rtol=1e-5)
            assert np.array_equal(np.isnan(view.depth), ids < 0)
            hit = same & (ids >= 0)
            assert (view.rgb[hit] == np.asarray(mesh.visual.face_colors)[exact_ids[hit], :3]).all()


def test_raster_context_outlives_a_renderer_without_leftovers():
    _backend("raster")
    with R.make_renderer(_room().mesh.to_trimesh(), backend="raster", with_color=False) as r:
        r.render(K, _pose(), W, H)
        ctx = r._ctx
    plane = trimesh.Trimesh(vertices=[[-0.2, -0.2, 2.0], [0.2, -0.2, 2.0], [0.2, 0.2, 2.0], [-0.2, 0.2, 2.0]],
                            faces=[[0, 1, 2], [0, 2, 3]], process=False)
    with R.make_renderer(plane, backend="raster", with_color=False) as r:
        got = r.render(K, np.eye(4), W, H).depth
        assert r._ctx is ctx
    exact = R.render_views(plane, K, [np.eye(4)], W, H, backend="open3d", with_color=False)[0].depth
    assert np.isnan(got).mean() > 0.5
    assert (np.isnan(got) == np.isnan(exact)).mean() > 0.98
    both = np.isfinite(got) & np.isfinite(exact)
    np.testing.assert_allclose(got[both], exact[both], rtol=1e-6)


def test_raster_keeps_a_few_image_sizes(monkeypatch):
    _backend("raster")
    from preprocess.render import backend_raster

    monkeypatch.setattr(backend_raster, "KEPT_FRAMEBUFFERS", 2)
    mesh = _to_world(_plane([0, 0, 1], [0, 0, 2.75]), _pose())
    with R.make_renderer(mesh, backend="raster", with_color=False) as r:
        for w, h in [(W, H), (W + 1, H), (W, H + 2), (W, H)]:
            k = K.copy()
            k[:2, 2] += [(w - W) / 2, (h - H) / 2]
            np.testing.assert_allclose(r.render(k, _pose(), w, h).depth, 2.75, atol=1e-5)
        assert len(r._ctx.framebuffers) == 2
