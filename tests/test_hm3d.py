"""HM3D room simulation: pose conventions, viewpoints, floor plan, the mesh
backend on a small three-room GLB house, and the ``hm3d`` source adapter."""
from __future__ import annotations

import numpy as np
import pytest

from preprocess.geometry import matrix_to_quaternion, quaternion_to_matrix
from preprocess.habitat import floorplan as fp
from preprocess.habitat import poses as P
from preprocess.habitat.capture import CaptureSettings, MeshBackend, find_hm3d_scene
from preprocess.habitat.habitat_backend import depth_from_habitat, quat_wxyz_from_coeffs, region_box_glb
from preprocess.habitat.house import load_house, read_semantic_txt, texture_lookup
from preprocess.habitat.viewpoints import intrinsics_from_hfov, view_yaws
from testkit.hm3d_house import ROOMS, distance_to_surface, floor_b_color, part_colors, ray_cast, room_of, write_house

W = H = 40
SPACING = 0.05  # the cloud spacing in the backend tests (0.02 is the default; same code)
CAMERA_HEIGHT = 1.4


# --------------------------------------------------------------------------- pure conversions


def test_glb_habitat_axes():
    # GLB up (+Z) is habitat up (+Y); GLB +Y is habitat -Z (habitat's forward)
    np.testing.assert_allclose(P.glb_to_habitat([0, 0, 1]), [0, 1, 0])
    np.testing.assert_allclose(P.glb_to_habitat([0, 1, 0]), [0, 0, -1])
    np.testing.assert_allclose(P.glb_to_habitat([1, 0, 0]), [1, 0, 0])
    pts = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(P.habitat_to_glb(P.glb_to_habitat(pts)), pts)


def test_habitat_yaw_90_is_known_opencv_rotation():
    # Hand-computed: habitat yaw +90 deg about +Y turns the camera's forward (-Z)
    # to habitat -X = GLB -X; its right (+X) to habitat -Z = GLB +Y; OpenCV down
    # is habitat -Y = GLB -Z.
    pose = P.habitat_camera_to_opencv_pose([1.0, 1.5, -2.0], P.yaw_quaternion(np.pi / 2))
    expected_R = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)  # columns: right, down, forward
    np.testing.assert_allclose(pose[:3, :3], expected_R, atol=1e-12)
    np.testing.assert_allclose(pose[:3, 3], [1.0, 2.0, 1.5])  # (x, -z, y)
    assert P.yaw_of_pose(pose) == pytest.approx(np.pi / 2)


def test_habitat_yaw_0_matches_reference_transform():
    # the reference script's camera-to-world at heading 0: [[1,0,0],[0,0,1],[0,-1,0]]
    pose = P.opencv_pose_from_yaw([0, 0, 0], 0.0)
    np.testing.assert_allclose(pose[:3, :3], [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-12)


def _habitat_project(point_hab, cam_pos_hab, cam_R_hab, f, cx, cy):
    """OpenGL-camera projection done the habitat way: camera looks down -Z, +Y up."""
    pc = cam_R_hab.T @ (np.asarray(point_hab) - cam_pos_hab)
    depth = -pc[2]
    return cx + f * pc[0] / depth, cy - f * pc[1] / depth, depth


def test_point_in_front_of_habitat_camera_lands_on_same_pixel():
    rng = np.random.default_rng(3)
    K = intrinsics_from_hfov(64, 48, 90.0)
    f, cx, cy = K[0, 0], K[0, 2], K[1, 2]
    for _ in range(20):
        yaw = rng.uniform(-np.pi, np.pi)
        q = P.yaw_quaternion(yaw)
        cam = rng.normal(size=3)
        R = quaternion_to_matrix(q)
        # a point 2.5 m in front (-Z) of the habitat camera, off-axis
        point_hab = cam + R @ np.array([0.4, -0.3, -2.5])
        u_h, v_h, d_h = _habitat_project(point_hab, cam, R, f, cx, cy)
        pose = P.habitat_camera_to_opencv_pose(cam, q)
        X = P.habitat_to_glb(point_hab)
        pc = pose[:3, :3].T @ (X - pose[:3, 3])
        assert pc[2] > 0  # in front of the OpenCV camera
        u, v = f * pc[0] / pc[2] + cx, f * pc[1] / pc[2] + cy
        np.testing.assert_allclose([u, v, pc[2]], [u_h, v_h, d_h], atol=1e-9)


def test_pose_round_trip_and_quaternions():
    rng = np.random.default_rng(1)
    for _ in range(10):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q *= np.sign(q[0])
        np.testing.assert_allclose(matrix_to_quaternion(quaternion_to_matrix(q)), q, atol=1e-10)
        pos = rng.normal(size=3)
        pose = P.habitat_camera_to_opencv_pose(pos, q)
        pos2, R2 = P.opencv_pose_to_habitat_camera(pose)
        np.testing.assert_allclose(pos2, pos, atol=1e-12)
        np.testing.assert_allclose(R2, quaternion_to_matrix(q), atol=1e-12)
    # habitat's (x, y, z, w) coefficient order
    np.testing.assert_allclose(quat_wxyz_from_coeffs([0.1, 0.2, 0.3, 0.9]), [0.9, 0.1, 0.2, 0.3])


def test_habitat_depth_and_region_box():
    d = depth_from_habitat(np.array([[0.0, 1.5], [2.0, 0.0]]))
    assert d.dtype == np.float32 and np.isnan(d[0, 0]) and np.isnan(d[1, 1]) and d[0, 1] == 1.5
    lo, hi = region_box_glb([1.0, 1.0, -2.0], [2.0, 2.0, 4.0])  # habitat centre/sizes
    np.testing.assert_allclose(lo, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(hi, [2.0, 4.0, 2.0])


def test_intrinsics_and_yaws():
    K = intrinsics_from_hfov(720, 720, 90.0)
    assert K[0, 0] == pytest.approx(360.0) and K[1, 1] == pytest.approx(360.0)
    assert (K[0, 2], K[1, 2]) == (359.5, 359.5)
    K = intrinsics_from_hfov(64, 32, 60.0)
    assert K[0, 0] == pytest.approx(32 / np.tan(np.radians(30)))
    yaws = view_yaws(np.random.default_rng(5), 4)
    np.testing.assert_allclose(np.diff(yaws), np.pi / 2)
    assert 0 <= yaws[0] < np.pi / 2
    np.testing.assert_array_equal(yaws, view_yaws(np.random.default_rng(5), 4))
    with pytest.raises(ValueError):
        intrinsics_from_hfov(10, 10, 180.0)


def test_texture_lookup_and_semantic_txt(tmp_path):
    tex = np.zeros((4, 8, 3), np.uint8)
    tex[0, 7] = [255, 0, 0]  # top-right texel = uv (1, 1)
    tex[3, 0] = [0, 255, 0]  # bottom-left = uv (0, 0)
    out = texture_lookup(tex, np.array([[1.0 - 1e-9, 1.0 - 1e-9], [0.0, 0.0]]))
    np.testing.assert_array_equal(out, [[255, 0, 0], [0, 255, 0]])
    p = tmp_path / "x.semantic.txt"
    p.write_text('HM3D Semantic Annotations\n1,9a6b25,"wall",0\n2,FFFFFF,"chair, arm",3\n')
    objs = read_semantic_txt(p)
    assert [(o.object_id, o.color, o.category, o.region) for o in objs] == [(1, "9A6B25", "wall", 0), (2, "FFFFFF", "chair, arm", 3)]
    p.write_text('HM3D Semantic Annotations\n1,9a6b25\n')
    with pytest.raises(ValueError, match="line 2"):
        read_semantic_txt(p)


def test_split_rooms_closes_doorways():
    # two 3x3 m rooms joined by a 0.6 m wide, 1 m long passage (grid 0.1 m)
    nav = np.zeros((30, 70), bool)
    nav[:, :30] = True
    nav[:, 40:] = True
    nav[12:18, 30:40] = True
    spec = fp.GridSpec(0.0, 0.0, 0.1, nav.shape)
    grid = fp.NavGrid(spec, 0.0, nav, ~nav, nav)
    labels = fp.split_rooms(grid, door_width=1.0, min_room_area=2.0)
    assert labels.max() == 1
    assert len(np.unique(labels[:, :30])) == 1 and len(np.unique(labels[:, 40:])) == 1
    assert labels[0, 0] != labels[0, 69]
    assert (labels[nav] >= 0).all() and (labels[~nav] == -1).all()


def _plane(x0, x1, y0, y1, z, nz, step=0.05):
    x, y = np.meshgrid(np.arange(x0, x1, step) + step / 2, np.arange(y0, y1, step) + step / 2)
    pts = np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], axis=1)
    return pts, np.tile([0.0, 0.0, nz], (len(pts), 1))


def test_levels_and_navigability():
    parts = [
        _plane(0, 4, 0, 4, 0.0, 1.0),  # ground floor
        _plane(1, 2, 1, 2, 0.75, 1.0),  # table top (small, low: not a level)
        _plane(0, 3, 0, 4, 2.6, -1.0),  # ceiling over x < 3 only
        _plane(0, 3, 0, 4, 3.0, 1.0),  # upper floor (over the ceiling)
    ]
    pts = np.concatenate([p for p, _ in parts])
    nrm = np.concatenate([n for _, n in parts])
    levels = fp.find_levels(pts, nrm, sample_area=0.05**2)
    assert levels == pytest.approx([0.0, 3.0])
    grid = fp.build_nav_grid(pts, nrm, 0.0, camera_height=1.5, cell=0.1, agent_radius=0.15)
    nav = lambda x, y: bool(grid.is_navigable(np.array([[x, y]]))[0])  # noqa: E731
    assert nav(0.5, 3.0)  # open floor under the ceiling
    assert not nav(1.5, 1.5)  # under/inside the table
    assert not nav(1.5, 0.9)  # within the agent radius of the table
    assert not nav(3.5, 2.0)  # no ceiling above (outdoors / roof)
    assert not nav(5.0, 2.0)  # outside the grid
    # the upper floor has nothing above it within reach: no navigable cell
    assert not fp.build_nav_grid(pts, nrm, 3.0, camera_height=1.5).navigable.any()


# --------------------------------------------------------------------------- mesh backend


@pytest.fixture(scope="module")
def houses(tmp_path_factory):
    root = tmp_path_factory.mktemp("hm3d")
    out = {}
    for i, variant in enumerate(("plain", "regions", "nodes")):
        folder = write_house(root / "train" / f"0000{i}-house{variant}", variant)
        out[variant] = find_hm3d_scene(folder, "train")
    return out


@pytest.fixture(scope="module")
def captured(houses):
    """variant -> (backend, rooms, {room_id: (frames, cloud)})."""
    out = {}
    for variant, scene in houses.items():
        be = MeshBackend(CaptureSettings(width=W, height=H, point_spacing=SPACING, camera_height=CAMERA_HEIGHT, seed=7),
                         render_backend="embree")
        rooms = be.rooms(scene)
        out[variant] = (be, rooms, {r.room_id: (be.capture(r), be.point_cloud(r)) for r in rooms})
    yield out
    for be, _, _ in out.values():
        be.close()


@pytest.mark.parametrize("variant,method", [("plain", "floorplan"), ("regions", "regions"), ("nodes", "nodes")])
def test_rooms_found_and_cameras_inside(captured, variant, method):
    _, rooms, shots = captured[variant]
    assert [r.method for r in rooms] == [method] * 3
    seen = set()
    for room in rooms:
        frames, _ = shots[room.room_id]
        positions = np.stack([f.pose[:3, 3] for f in frames])
        np.testing.assert_allclose(positions, positions[0:1].repeat(len(frames), 0))  # one spot per room
        r = room_of(positions[0, :2])
        assert r >= 0, f"{room.room_id}: camera {positions[0]} is outside every room"
        assert room.level_z == pytest.approx(0.0, abs=0.05)
        assert positions[0, 2] == pytest.approx(CAMERA_HEIGHT, abs=0.05)
        # away from the walls (agent radius) and off the furniture
        (x0, y0), (x1, y1) = ROOMS[r]
        assert x0 + 0.1 < positions[0, 0] < x1 - 0.1 and y0 + 0.1 < positions[0, 1] < y1 - 0.1
        assert not (0.6 <= positions[0, 0] <= 1.4 and 0.6 <= positions[0, 1] <= 1.4)  # table
        seen.add(r)
    assert seen == {0, 1, 2}


def test_four_views_90_degrees_apart(captured):
    for variant, (_, rooms, shots) in captured.items():
        for room in rooms:
            frames, _ = shots[room.room_id]
            assert len(frames) == 4
            yaws = np.array([P.yaw_of_pose(f.pose) for f in frames])
            steps = np.degrees(np.mod(np.diff(yaws), 2 * np.pi))
            np.testing.assert_allclose(steps, 90.0, atol=1e-3)
            for f in frames:
                assert abs(f.pose[2, 2]) < 1e-6  # level camera: optical axis horizontal
                np.testing.assert_allclose(f.K, intrinsics_from_hfov(W, H, 90.0))
                assert f.K[0, 0] == pytest.approx((W / 2) / np.tan(np.radians(45)))
            # different rooms start at different random yaws
    starts = {round(P.yaw_of_pose(shots[r.room_id][0][0].pose), 6) for r in rooms}
    assert len(starts) == len(rooms)


def test_depth_lies_on_the_mesh_and_matches_independent_rays(captured, houses):
    mesh = load_house(houses["plain"].glb)
    _, rooms, shots = captured["plain"]
    rng = np.random.default_rng(0)
    colors = {tuple(c) for c in part_colors()}
    for room in rooms:
        frames, _ = shots[room.room_id]
        for f in frames:
            valid = np.isfinite(f.depth)
            assert valid.mean() > 0.99  # closed rooms: every ray hits something
            assert np.nanmin(f.depth) > 0.1
            v, u = np.nonzero(valid)
            pick = rng.choice(len(u), 40, replace=False)
            u, v = u[pick], v[pick]
            z = f.depth[v, u].astype(np.float64)
            R, t = f.pose[:3, :3].astype(np.float64), f.pose[:3, 3].astype(np.float64)
            cam = (np.linalg.inv(f.K.astype(np.float64)) @ np.stack([u, v, np.ones_like(u)])) * z
            world = (R @ cam).T + t
            assert distance_to_surface(world).max() < 1e-3  # unprojected depth lies on the mesh
            # independent ray cast through the same pixels
            dirs = (R @ (cam / z)).T
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            dist = ray_cast(mesh.vertices, mesh.faces, np.repeat(t[None], len(u), 0), dirs)
            z_ref = dist * (dirs @ R[:, 2])
            np.testing.assert_allclose(z, z_ref, atol=1e-3)
            # rgb: every hit pixel shows one of the parts' colours
            rgb = f.rgb[valid].reshape(-1, 3)
            assert {tuple(c) for c in np.unique(rgb, axis=0)} <= colors


def test_point_cloud_spacing_colours_and_crop(captured, houses):
    colors = {tuple(c) for c in part_colors()}
    for variant, (_, rooms, shots) in captured.items():
        for room in rooms:
            _, cloud = shots[room.room_id]
            coord = cloud.coord.astype(np.float64)
            # one point per cube of side SPACING
            keys = np.floor(coord / SPACING).astype(np.int64)
            assert len(np.unique(keys, axis=0)) == len(coord)
            # density on the room's floor: ~1 point per SPACING^2 (>= 90 % of cubes filled)
            frames, _ = shots[room.room_id]
            r = room_of(frames[0].pose[:2, 3])
            (x0, y0), (x1, y1) = ROOMS[r]
            inner = (coord[:, 0] > x0 + 0.3) & (coord[:, 0] < x1 - 0.3) & (coord[:, 1] > y0 + 0.3) & (coord[:, 1] < y1 - 0.3)
            # (a bed's bottom coincides with the floor: their cubes hold one point for both)
            floor = inner & (np.abs(coord[:, 2]) < 1e-6)
            density = floor.sum() * SPACING**2 / ((x1 - x0 - 0.6) * (y1 - y0 - 0.6))
            assert 0.85 < density <= 1.05, (variant, room.room_id, density)
            # points lie on the surface and carry the surface colour
            sub = np.random.default_rng(1).choice(len(coord), 300, replace=False)
            assert distance_to_surface(coord[sub]).max() < 1e-5
            assert {tuple(c) for c in np.unique(cloud.color, axis=0)} <= colors
            np.testing.assert_allclose(np.linalg.norm(cloud.normal, axis=1), 1.0, atol=1e-5)
            # the cloud is this room's: its floor is in this room only
            floor_pts = coord[(np.abs(coord[:, 2]) < 1e-6) & (cloud.normal[:, 2] > 0.9)]
            owner = np.array([room_of(p) for p in floor_pts[::5, :2]])
            assert np.mean(owner[owner >= 0] == r) > 0.9


def test_texture_colours_in_cloud_and_views(captured):
    """Room B's floor is textured (2x2 tiles): cloud points and image pixels on
    it carry the tile colour of their position."""
    seen_pixels = 0
    for variant, (_, rooms, shots) in captured.items():
        for room in rooms:
            frames, cloud = shots[room.room_id]
            c = cloud.coord.astype(np.float64)
            on_b = (np.abs(c[:, 2]) < 1e-6) & (cloud.normal[:, 2] > 0.9) & (c[:, 0] > 4.05) & (c[:, 0] < 8) & (c[:, 1] > 0) & (c[:, 1] < 3.5)
            away = (np.abs(c[:, 0] - 6.0) > 0.1) & (np.abs(c[:, 1] - 1.75) > 0.1)
            sel = on_b & away
            if room_of(frames[0].pose[:2, 3]) == 1:
                assert sel.sum() > 1000
            np.testing.assert_array_equal(cloud.color[sel], floor_b_color(c[sel, :2]))
            for f in frames:
                v, u = np.nonzero(np.isfinite(f.depth))
                z = f.depth[v, u].astype(np.float64)
                cam = (np.linalg.inv(f.K.astype(np.float64)) @ np.stack([u, v, np.ones_like(u)])) * z
                world = (f.pose[:3, :3].astype(np.float64) @ cam).T + f.pose[:3, 3]
                pix = (np.abs(world[:, 2]) < 1e-3) & (world[:, 0] > 4.1) & (world[:, 0] < 7.9) & (world[:, 1] > 0.1) & (world[:, 1] < 3.4)
                pix &= (np.abs(world[:, 0] - 6.0) > 0.1) & (np.abs(world[:, 1] - 1.75) > 0.1)
                np.testing.assert_array_equal(f.rgb[v[pix], u[pix]], floor_b_color(world[pix, :2]))
                seen_pixels += int(pix.sum())
    assert seen_pixels > 100


def test_semantic_labels(captured):
    _, rooms, shots = captured["regions"]
    for room in rooms:
        _, cloud = shots[room.room_id]
        assert cloud.instance is not None and cloud.segment is not None
        assert (cloud.instance >= 1).all()  # every part is an annotated object
        assert (cloud.segment == -1).all()  # no category map given
        coord = cloud.coord
        r = int(room.room_id[-3:])
        floor = (np.abs(coord[:, 2]) < 1e-6) & (cloud.normal[:, 2] > 0.9)
        floor &= np.array([room_of(p) == r for p in coord[:, :2]])
        # floor{r} is part 2r -> object id 2r + 1
        assert floor.sum() > 1000 and (cloud.instance[floor] == 2 * r + 1).all()


def test_semantic_categories_map_to_segments(houses, tmp_path):
    from preprocess.habitat import read_category_map

    tsv = tmp_path / "map.tsv"
    tsv.write_text("raw_category\tcategory\tmpcat40\nfloor\tfloor\tfloor\nwall\twall\twall\nbed\tbed\tbed\n")
    cmap = read_category_map(tsv)
    be = MeshBackend(CaptureSettings(width=8, height=8, point_spacing=0.1), render_backend="embree", category_map=cmap)
    room = be.rooms(houses["regions"])[2]
    cloud = be.point_cloud(room)
    classes = sorted(set(cmap.values()))  # bed, floor, wall
    bed = (np.abs(cloud.coord[:, 2] - 0.5) < 1e-4) & (cloud.normal[:, 2] > 0.9)  # the bed's top
    assert bed.any() and (cloud.segment[bed] == classes.index("bed")).all()
    floor = (np.abs(cloud.coord[:, 2]) < 1e-6) & (cloud.normal[:, 2] > 0.9)
    assert floor.sum() > 100 and (cloud.segment[floor] == classes.index("floor")).all()
    # vertical faces between the bed's top and the lintels are walls
    walls = (np.abs(cloud.normal[:, 2]) < 0.1) & (cloud.coord[:, 2] > 0.6) & (cloud.coord[:, 2] < 2.0)
    assert walls.sum() > 100 and (cloud.segment[walls] == classes.index("wall")).all()
    c = cloud.coord
    lintel = (c[:, 2] > 2.15) & (c[:, 2] < 2.55) & (np.abs(c[:, 0] - 1.45) < 0.4) & (np.abs(c[:, 1] - 3.5) < 0.06)
    assert lintel.any() and (cloud.segment[lintel] == -1).all()  # "lintel" is not in the map
    assert set(np.unique(cloud.segment)) <= {-1, 0, 1, 2}
    be.close()


def test_deterministic_with_seed(houses, captured):
    be, rooms, _ = captured["plain"]
    again = MeshBackend(CaptureSettings(width=W, height=H, point_spacing=SPACING, camera_height=CAMERA_HEIGHT, seed=7))
    other = MeshBackend(CaptureSettings(width=W, height=H, point_spacing=SPACING, camera_height=CAMERA_HEIGHT, seed=8))
    r1, r2 = again.rooms(houses["plain"]), other.rooms(houses["plain"])
    np.testing.assert_array_equal(be.poses(rooms[0]), again.poses(r1[0]))
    assert not np.allclose(be.poses(rooms[0]), other.poses(r2[0]))


def test_bad_mesh_is_a_clear_error(tmp_path):
    from preprocess.render.mesh_io import MeshLoadError

    folder = tmp_path / "00009-broken"
    folder.mkdir()
    (folder / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    scene = find_hm3d_scene(folder)
    with pytest.raises(MeshLoadError, match="broken.glb"):
        MeshBackend().rooms(scene)


# --------------------------------------------------------------------------- habitat backend


def test_habitat_backend_is_optional():
    from preprocess.habitat import HabitatUnavailable, habitat_available, make_capture_backend

    if habitat_available():
        pytest.skip("habitat_sim is installed here")
    with pytest.raises(HabitatUnavailable, match="conda"):
        make_capture_backend("habitat")
    assert isinstance(make_capture_backend("auto"), MeshBackend)


# --------------------------------------------------------------------------- source adapter


@pytest.fixture(scope="module")
def hm3d_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("hm3d_src")
    write_house(root / "val" / "00800-plainhouse", "plain")
    write_house(root / "val" / "00801-annotated", "regions")
    bad = root / "val" / "00802-broken"
    bad.mkdir(parents=True)
    (bad / "broken.glb").write_bytes(b"not a glb")
    return root


def _source(root, tmp_path, **kw):
    from preprocess.sources import make_source

    opts = dict(backend="mesh", image_width=W, image_height=H, point_spacing=SPACING, render_backend="embree",
                cache_dir=str(tmp_path / "cache"), seed=3, recipe="paper")
    opts.update(kw)
    return make_source("hm3d", root / "val", **opts)


def test_source_discover_load_and_process(hm3d_split, tmp_path):
    from pipelines.image_groups import process_scene
    from preprocess.sources.base import SourceError

    src = _source(hm3d_split, tmp_path)
    refs = src.discover()
    ids = [r.scene_id for r in refs]
    assert ids == [
        "00800-plainhouse_level0_room00", "00800-plainhouse_level0_room01", "00800-plainhouse_level0_room02",
        "00801-annotated_region000", "00801-annotated_region001", "00801-annotated_region002",
        "00802-broken_unreadable",
    ]
    # the room lists are cached; a second discovery gives the same refs
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    assert _source(hm3d_split, tmp_path).discover() == refs
    scene = src.load(refs[4])
    assert scene.key == "hm3d/00801-annotated_region001" and len(scene.frames) == 4
    assert scene.meta["room_method"] == "regions" and scene.meta["split"] == "val"
    assert scene.points.instance is not None
    processed = process_scene(scene, min_correspondences=20)
    assert processed.image_groups.shape == (1, 4)
    for corr in processed.correspondences:
        assert len(corr) > 50
        assert corr.pixel[:, 0].max() < W and corr.pixel[:, 1].max() < H
    assert processed.stats["coverage"] > 0.1  # 40x40 images: a pixel only confirms points near its ray
    with pytest.raises(SourceError, match="broken.glb"):
        src.load(refs[-1])


def test_source_hash_and_options(hm3d_split, tmp_path):
    from preprocess.sources import make_source

    a = _source(hm3d_split, tmp_path, max_rooms=1).discover()
    b = _source(hm3d_split, tmp_path, max_rooms=1).discover()
    c = _source(hm3d_split, tmp_path, max_rooms=1, seed=4).discover()
    assert [r.scene_id for r in a] == ["00800-plainhouse_level0_room00", "00801-annotated_region000", "00802-broken_unreadable"]
    assert a == b
    # where the room lists are cached is not part of the content hash
    assert _source(hm3d_split, tmp_path / "elsewhere", max_rooms=1).discover() == a
    assert all(x.content_hash != y.content_hash for x, y in zip(a, c))
    with pytest.raises(ValueError, match="unknown option"):
        make_source("hm3d", hm3d_split / "val", imagewidth=3)
    with pytest.raises(ValueError, match="backend"):
        make_source("hm3d", hm3d_split / "val", backend="vulkan")
    with pytest.raises(ValueError, match="hfov"):
        make_source("hm3d", hm3d_split / "val", hfov=180)


def test_previews_written_as_png(captured, tmp_path):
    from PIL import Image

    from preprocess.habitat.preview import floorplan_png, room_views_png

    be, rooms, shots = captured["plain"]
    plan = floorplan_png(be, rooms, tmp_path / "plan.png")
    views = room_views_png(shots[rooms[0].room_id][0], tmp_path / "views.png")
    with Image.open(plan) as im:
        assert im.format == "PNG" and im.size == (be._house.grids[0].spec.shape[1] * 4, be._house.grids[0].spec.shape[0] * 4)
        px = np.asarray(im.convert("RGB"))
        assert len(np.unique(px.reshape(-1, 3), axis=0)) >= 5  # floor, blocked, 3 room colours
    with Image.open(views) as im:
        assert im.size == (2 * W + 4, 4 * H + 3 * 4)


def test_habitat_backend_matches_mesh_render(houses):
    """Where habitat-sim is installed: its views agree with the CPU renderer
    rendering the same GLB from the same poses (the CPU twin)."""
    from preprocess.habitat import habitat_available

    if not habitat_available():
        pytest.skip("habitat_sim is not installed (conda-only)")
    from preprocess.habitat import HabitatSimBackend
    from preprocess.render import render_views

    settings = CaptureSettings(width=W, height=H, camera_height=CAMERA_HEIGHT)
    hab = HabitatSimBackend(settings)
    try:
        rooms = hab.rooms(houses["plain"])
        assert rooms
        frames = hab.capture(rooms[0])
        mesh = load_house(houses["plain"].glb).vertex_colored_trimesh()
        views = render_views(mesh, frames[0].K, [f.pose for f in frames], W, H, with_color=False)
        for f, v in zip(frames, views):
            both = np.isfinite(f.depth) & np.isfinite(v.depth)
            assert both.mean() > 0.9
            assert np.mean(np.abs(f.depth[both] - v.depth[both]) < 0.02) > 0.95
    finally:
        hab.close()


# --------------------------------------------------------------------------- recipes


def _released_spots():
    """The released script's camera spots, computed here from the fixture's parts:
    room box = bounds of its parts; a 0.5 m grid from min + 0.5 to max - 0.5 on
    each axis; a grid point belongs to the first room (file order) whose box
    strictly holds it; spot = mean of the room's grid points."""
    from testkit.hm3d_house import house_parts

    boxes = {}
    for _, r, m in house_parts():
        lo, hi = m.bounds
        if r in boxes:
            boxes[r] = (np.minimum(boxes[r][0], lo), np.maximum(boxes[r][1], hi))
        else:
            boxes[r] = (lo, hi)
    points = {}
    for r, (lo, hi) in boxes.items():
        axes = [np.arange(lo[a] + 0.5, hi[a] - 0.5, 0.5) for a in range(3)]
        for g in np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3):
            owner = next(k for k, (l2, h2) in boxes.items() if np.all((l2 < g) & (g < h2)))
            points.setdefault(owner, []).append(g)
    return {r: np.mean(p, 0) for r, p in points.items()}


def test_released_recipe_rooms_are_geometry_groups_with_grid_mean_cameras(houses):
    spots = _released_spots()
    be = MeshBackend(CaptureSettings(width=W, height=H, point_spacing=SPACING, seed=7), render_backend="embree",
                     recipe="released")
    try:
        rooms = be.rooms(houses["nodes"])
        assert [r.room_id for r in rooms] == [f"group{r}_sub0" for r in sorted(spots)]
        assert all(r.method == "released" for r in rooms)
        for room in rooms:
            r = int(room.room_id[5:].split("_")[0])
            cam = be.camera_position(room)
            assert np.all(np.abs(cam - spots[r]) <= 0.25 + 1e-9), (cam, spots[r])  # jitter on all three axes
            frames = be.capture(room)
            assert len(frames) == 4 and all(np.allclose(f.pose[:3, 3], cam) for f in frames)
        # a house without geometry groups is one room
        assert [r.room_id for r in be.rooms(houses["plain"])] == ["ungrouped"]
    finally:
        be.close()
    with pytest.raises(ValueError, match="recipe"):
        MeshBackend(recipe="leaked")


@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_both_recipes_run_through_the_build(tmp_path, recipe):
    from testkit.hm3d_house import write_house

    from testkit.dataset_files import build_sample

    from pipelines.build import SourceSpec

    root = tmp_path / "hm3d"
    write_house(root / "val" / "00800-nodeshouse", "nodes")
    spec = SourceSpec("hm3d", str(root / "val"), None,
                      dict(backend="mesh", image_width=W, image_height=H, point_spacing=0.05, render_backend="embree",
                           cache_dir=str(tmp_path / "cache"), seed=3, max_rooms=1, recipe=recipe))
    assert [r.scene_id for r in spec.make().discover()] == ["00800-nodeshouse_group0_sub0"]  # room 0: groups or nodes
    sample = build_sample(spec, str(tmp_path / "store"), note=recipe)
    centres = np.asarray(sample["pose"])[:, :3, 3]
    np.testing.assert_allclose(centres, centres[:1].repeat(len(centres), 0), atol=1e-6)  # one spot, four yaws
    if recipe == "released":  # the room box's grid mean, jittered on all three axes
        assert np.all(np.abs(centres[0] - _released_spots()[0]) <= 0.25 + 1e-6), centres[0]
    else:  # 1.5 m (the source's camera height) above a floor cell of room A, jittered in xy only
        assert centres[0, 2] == pytest.approx(1.5, abs=1e-5) and room_of(centres[0, :2]) == 0, centres[0]
    with pytest.raises(ValueError, match="recipe"):
        spec.make().__class__(root / "val", recipe="other")
