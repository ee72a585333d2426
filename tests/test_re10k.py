"""RE10K lifting: geometry, camera files, view groups, and a synthetic clip
through the adapter and the pipeline's correspondence stage."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from preprocess import geometry
from preprocess.lift import alignment as align
from testkit.box_room_clip import BoxRoomClip, render_box, write_box_room_clip
from preprocess.sources.base import SourceError, make_source
from preprocess.sources.re10k import (
    Re10kSource,
    overlap_score,
    parse_camera_file,
    select_view_groups,
    write_camera_file,
)
from testkit.box_room_clip import BoxRoomClip, render_box, write_box_room_clip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- pose encoding, unprojection ---------------------------------------------------

def test_pose_encoding_identity_and_fov():
    # identity rotation (quaternion xyzw = 0,0,0,1), t = (1,2,3), fov_w 90 deg,
    # fov_h = 2 atan(0.75) on a 300 x 400 image -> fx = 200 / tan(45 deg) = 200,
    # fy = 150 / 0.75 = 200, principal point (200, 150).
    enc = np.array([[1, 2, 3, 0, 0, 0, 1, 2 * math.atan(0.75), math.pi / 2]])
    E, K = align.pose_encoding_to_cameras(enc, (300, 400))
    np.testing.assert_allclose(E[0], [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3]], atol=1e-12)
    np.testing.assert_allclose(K[0], [[200, 0, 200], [0, 200, 150], [0, 0, 1]], atol=1e-9)
    # our pose convention is camera-to-world: the camera centre is -R^T t
    pose = geometry.extrinsic_to_pose(E)[0]
    np.testing.assert_allclose(pose[:3, 3], [-1, -2, -3])


def test_pose_encoding_rotation_about_z():
    # 90 deg about z: q = (0, 0, sin45, cos45); R maps x -> y
    s = math.sqrt(0.5)
    enc = np.array([[0, 0, 0, 0, 0, s, s, 1.0, 1.0]])
    E, _ = align.pose_encoding_to_cameras(enc, (10, 10))
    np.testing.assert_allclose(E[0, :, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    # round trip through the encoder
    back = align.cameras_to_pose_encoding(E, np.array([[[7.0, 0, 5], [0, 9.0, 5], [0, 0, 1]]]), (10, 10))
    np.testing.assert_allclose(back[0, 3:7], [0, 0, s, s], atol=1e-12)
    assert back[0, 8] == pytest.approx(2 * math.atan(5 / 7.0))


def test_unprojection_hand_computed():
    K = np.array([[100.0, 0, 2], [0, 50.0, 1], [0, 0, 1]])
    depth = np.full((3, 5), np.nan)
    depth[1, 2] = 2.0  # principal point -> straight ahead
    depth[0, 4] = 4.0  # u = 4, v = 0 -> x = (4-2)/100*4, y = (0-1)/50*4
    # camera at (10, 0, 0) looking along world +y (x_cam = world x, y_cam = -z, z_cam = y)
    pose = np.eye(4)
    pose[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, -1, 0]]
    pose[:3, 3] = [10, 0, 0]
    pts = geometry.unproject_depth(depth, K, pose)
    np.testing.assert_allclose(pts[1, 2], [10, 2, 0])
    np.testing.assert_allclose(pts[0, 4], [10 + 0.08, 4, 0.08])
    assert np.isnan(pts[0, 0]).all()
    # and back: projection returns the pixel and the depth
    uv, z = geometry.project(pts[[1, 0], [2, 4]], K, pose)
    np.testing.assert_allclose(uv, [[2, 1], [4, 0]], atol=1e-9)
    np.testing.assert_allclose(z, [2, 4])


def test_confidence_mask():
    conf = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert align.confidence_mask(conf, threshold=2.5).tolist() == [False, False, True, True, False]
    assert align.confidence_mask(conf, percentile=50).tolist() == [False, False, True, True, False]


# --- floor alignment ---------------------------------------------------------------

def test_floor_alignment_recovers_a_tilted_floor():
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(0, 4, (3000, 2)), np.zeros(3000)]
    wall = np.c_[rng.uniform(0, 4, 1500), np.full(1500, 4.0), rng.uniform(0, 2.5, 1500)]
    clutter = rng.uniform([0.5, 0.5, 0.3], [3.5, 3.5, 2.5], (1500, 3))
    pts = np.vstack([floor, wall, clutter])
    tilt = geometry.axis_angle_to_matrix([1, 1, 0], math.radians(15))
    moved = pts @ tilt.T + [0.3, -0.2, 0.7]
    T, fit = align.floor_alignment(moved, threshold=0.01, seed=1)
    assert fit.angle_deg == pytest.approx(15, abs=0.5)
    aligned = geometry.transform_points(T, moved)
    np.testing.assert_allclose(aligned[:3000, 2], 0, atol=2e-3)  # floor at z = 0
    assert np.all(aligned[3000:4500, 2] > -1e-3) and aligned[3000:4500, 2].max() == pytest.approx(2.5, abs=0.05)
    # rigid: distances preserved
    assert np.linalg.norm(aligned[0] - aligned[5]) == pytest.approx(np.linalg.norm(pts[0] - pts[5]))


def test_floor_search_rejects_steep_planes_and_fails_clearly():
    rng = np.random.default_rng(0)
    wall = np.c_[np.zeros(500), rng.uniform(0, 4, 500), rng.uniform(0, 1, 500)]  # vertical only
    with pytest.raises(align.FloorNotFound, match="within 40 degrees"):
        align.fit_floor(wall, lowest_fraction=1.0, max_trials=2)


def test_normal_backends_agree_and_face_the_viewpoint():
    pytest.importorskip("open3d")
    rng = np.random.default_rng(3)
    # a wavy surface z = 0.1 sin(x) seen from above
    xy = rng.uniform(0, 3, (4000, 2))
    pts = np.c_[xy, 0.1 * np.sin(xy[:, 0])]
    view = np.tile([1.5, 1.5, 5.0], (len(pts), 1))
    a = align.estimate_normals(pts, 16, view, backend="numpy")
    b = align.estimate_normals(pts, 16, view, backend="open3d")
    truth = np.c_[-0.1 * np.cos(xy[:, 0]), np.zeros(len(pts)), np.ones(len(pts))]
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    assert np.median(np.einsum("ij,ij->i", a, b)) > 0.9999
    assert np.percentile(np.einsum("ij,ij->i", a, truth), 5) > 0.99  # oriented up, towards the camera
    with pytest.raises(ValueError, match="backend"):
        align.estimate_normals(pts, backend="cuda")


def test_transform_poses_keeps_projection_consistent():
    rng = np.random.default_rng(1)
    pose = np.eye(4)
    pose[:3, :3] = geometry.axis_angle_to_matrix([0.2, 1, 0.1], 0.7)
    pose[:3, 3] = [1, 2, 3]
    K = np.array([[50.0, 0, 20], [0, 50.0, 15], [0, 0, 1]])
    X = rng.uniform(-1, 1, (20, 3)) + pose[:3, 3] + pose[:3, 2] * 5
    T = geometry.similarity(geometry.axis_angle_to_matrix([1, 0, 0], 0.3), [4, 5, 6], scale=2.5)
    uv0, z0 = geometry.project(X, K, pose)
    uv1, z1 = geometry.project(geometry.transform_points(T, X), K, geometry.transform_poses(T, pose[None])[0])
    np.testing.assert_allclose(uv1, uv0, atol=1e-9)
    np.testing.assert_allclose(z1, 2.5 * z0)  # depth scales with the world


# --- camera files and view groups ------------------------------------------------------

def test_camera_file_roundtrip_and_pixel_intrinsics(tmp_path):
    w2c = np.tile(np.eye(4)[:3], (2, 1, 1))
    w2c[1, :3, 3] = [0.5, 0, 0]
    path = tmp_path / "abc.txt"
    write_camera_file(path, "https://www.youtube.com/watch?v=xyz", [1000, 34000], [[0.5, 0.8, 0.5, 0.5]] * 2, w2c)
    clip = parse_camera_file(path)
    assert clip.url.endswith("xyz") and clip.timestamps.tolist() == [1000, 34000]
    # normalised corner convention -> pixel centres at integers: cx = 0.5 * 640 - 0.5
    np.testing.assert_allclose(clip.pixel_K(0, 640, 360), [[320, 0, 319.5], [0, 288, 179.5], [0, 0, 1]])
    np.testing.assert_allclose(clip.poses()[1][:3, 3], [-0.5, 0, 0])


def test_camera_file_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("https://youtu.be/x\n1000 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(SourceError, match=r"bad.txt:2.*19 columns"):
        parse_camera_file(path)
    path.write_text("https://youtu.be/x\n1000 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 nan 0\n")
    with pytest.raises(SourceError, match=r"bad.txt:2.*NaN"):
        parse_camera_file(path)


def test_view_groups_respect_gap_and_overlap():
    from scipy.spatial.transform import Rotation

    n = 200
    poses = np.tile(np.eye(4), (n, 1, 1))
    yaw = np.radians(0.4 * np.arange(n))
    poses[:, :3, :3] = Rotation.from_euler("z", yaw[:, None]).as_matrix()
    poses[:, 0, 3] = 0.01 * np.arange(n)
    groups = select_view_groups(poses, 4, (15, 135), (5, 40), max_groups=5, rng=np.random.default_rng(0))
    assert len(groups) == 5 and len({tuple(g) for g in groups}) == 5
    euler = Rotation.from_matrix(poses[:, :3, :3]).as_euler("xyz", degrees=True)
    for g in groups:
        assert len(g) == 4 and g == sorted(g)
        for a, b in zip(g[:-1], g[1:]):  # each new view extends the group from its anchor
            assert 15 <= b - a <= 136
            assert 5 <= overlap_score(euler[a], euler[b], poses[a, :3, 3], poses[b, :3, 3]) <= 40
    # frames missing on disk are never chosen
    avail = np.ones(n, bool)
    avail[::2] = False
    for g in select_view_groups(poses, 4, (15, 135), (5, 40), 3, avail, np.random.default_rng(1)):
        assert all(avail[g])


# --- synthetic clip ---------------------------------------------------------------

SPEC = BoxRoomClip()  # 80 frames, 48 x 64, camera 1.4 m up, pitched 20 degrees down
CAM_HEIGHT, FILE_SCALE, ROOM = SPEC.cam_height, SPEC.file_scale, np.array(SPEC.room)


def test_synthetic_render_is_consistent():
    """The renderer's depth unprojects onto the box walls (so the fixture's
    ground truth is right)."""
    pose = SPEC.pose(10)
    rgb, depth = render_box(SPEC.room, SPEC.K(), pose, (SPEC.height, SPEC.width))
    pts = geometry.unproject_depth(depth, SPEC.K(), pose).reshape(-1, 3)
    on_wall = np.min(np.abs(np.concatenate([pts, pts - ROOM], axis=1)), axis=1)
    assert on_wall.max() < 1e-6 and rgb.std() > 10


@pytest.fixture(scope="module")
def synthetic_clip(tmp_path_factory):
    """A RE10K-layout dataset with one synthetic clip (frames + depth), and a
    broken camera file next to it that must not sink discovery."""
    root = write_box_room_clip(tmp_path_factory.mktemp("re10k"), "clip0", SPEC)
    (root / "train" / "broken.txt").write_text("https://youtu.be/b\n1 2 3\n")
    return root


def test_synthetic_clip_given_depth_through_the_pipeline(synthetic_clip, tmp_path):
    from PIL import Image

    from pipelines.image_groups import process_scene
    from preprocess.lift.preview import write_preview

    src = make_source("re10k", synthetic_clip, lifter="given-depth", conf_percentile=None, voxel_size=0.05,
                      seed=7, groups_per_clip=2, recipe="paper")
    refs = src.discover()
    assert [r.scene_id for r in refs] == ["clip0-g0", "clip0-g1"]
    assert refs == make_source("re10k", synthetic_clip, lifter="given-depth", conf_percentile=None,
                               voxel_size=0.05, seed=7, groups_per_clip=2, recipe="paper").discover(), "deterministic"
    scene = src.load(refs[0])
    assert scene.key == "re10k/clip0-g0" and len(scene.frames) == 4
    rows = scene.meta["frame_rows"]
    assert all(15 <= b - a for a, b in zip(rows[:-1], rows[1:]))

    # scale: the file is half-scale and lifting normalises the height, so camera
    # heights above the floor are CAM_HEIGHT * FILE_SCALE * scale
    s = scene.meta["scale"] * FILE_SCALE
    heights = np.array([f.pose[2, 3] for f in scene.frames])
    np.testing.assert_allclose(heights, CAM_HEIGHT * s, rtol=0.02)
    assert scene.points.coord[:, 2].min() > -0.02 and np.percentile(scene.points.coord[:, 2], 5) < 0.02
    # cameras are pitched 20 degrees down in the room: same in the aligned scene
    for f in scene.frames:
        assert f.pose[2, 2] == pytest.approx(-math.sin(math.radians(20)), abs=0.02)
    # depth in metres of the new scale; normals unit length, facing the cameras
    for f in scene.frames:
        assert np.nanmax(f.depth) < np.linalg.norm(ROOM) * s  # no ray is longer than the room diagonal
    np.testing.assert_allclose(np.linalg.norm(scene.points.normal, axis=1), 1, atol=1e-5)
    ov = np.array(scene.meta["view_overlap"])
    assert np.all(np.diag(ov) > 0.99) and ov[0, 1] > 0.2

    processed = process_scene(scene, eps=0.01)
    assert processed.image_groups.shape == (1, 4)
    counts = processed.stats["correspondences"]
    assert len(counts) == 4 and min(counts) > 100, counts
    assert processed.stats["coverage"] > 0.9
    # colours come from the pixels the points were unprojected from
    c = processed.correspondences[0]
    frame = processed.scene.frames[0]
    px = frame.rgb[c.pixel[:, 1], c.pixel[:, 0]].astype(int)
    assert np.abs(px - scene.points.color[c.point_index].astype(int)).mean() < 40

    png = write_preview(scene, tmp_path / "lifted.png", size=256)
    with Image.open(png) as im:
        assert im.size[0] == 4 * 128 + 256 and np.asarray(im).std() > 10


def test_synthetic_clip_with_tiny_vggt(synthetic_clip):
    """The VGGT path end to end with a random tiny model (weights meaningless,
    plumbing real): cameras and depth from the network, scene valid, and the
    pipeline finds correspondences in every view."""
    import torch

    from pipelines.image_groups import process_scene
    from preprocess.lift.lifter import VGGTLifter
    from preprocess.lift.vggt_model import VGGT, VGGTConfig

    torch.manual_seed(0)
    model = VGGT(VGGTConfig.tiny())
    with torch.no_grad():  # a random camera head predicts fov 0 (ReLU); aim it at ~60 degrees
        fc2 = model.camera_head.pose_branch.fc2
        fc2.weight.mul_(0.01)
        fc2.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 0.25, 0.25, 0.3]))  # summed over 4 iterations
    lifter = VGGTLifter(model=model, device="cpu")
    src = Re10kSource(synthetic_clip, lifter=lifter, require_floor=False, conf_percentile=20.0, voxel_size=0.0,
                      seed=7, recipe="paper")
    refs = src.discover()
    scene = src.load(refs[0])
    f = scene.frames[0]
    assert f.rgb.shape == (21, 28, 3) and f.depth.shape == (21, 28)  # 28 px wide, height rounded to 7
    assert np.allclose(f.K[:2, 2], [14, 10.5])  # principal point at the image centre
    assert scene.meta["lifter"] == "vggt"
    processed = process_scene(scene, eps=0.01, min_correspondences=10)
    assert min(len(c) for c in processed.correspondences) > 10


def test_bad_inputs_name_scene_and_file(synthetic_clip, tmp_path):
    import shutil

    src = Re10kSource(synthetic_clip, lifter="given-depth", conf_percentile=None)
    refs = src.discover()
    assert all(r.scene_id.startswith("clip0") for r in refs)  # broken.txt skipped
    with pytest.raises(SourceError, match="broken.txt:2"):
        src.read_clip("broken")
    # a corrupt frame file
    bad_root = tmp_path / "copy"
    shutil.copytree(synthetic_clip, bad_root)
    bad_src = Re10kSource(bad_root, lifter="given-depth", conf_percentile=None)
    ref = bad_src.discover()[0]
    ts = bad_src.load(ref).meta["timestamps"][1]
    (bad_root / "frames" / "clip0" / f"{ts}.png").write_bytes(b"not a png")
    with pytest.raises(SourceError, match=f"re10k/clip0-g0.*{ts}.png"):
        bad_src.load(ref)
    with pytest.raises(ValueError, match="lifter"):
        Re10kSource(synthetic_clip, lifter="magic")
    # the content hash follows the group's files: a changed frame changes it
    content = Re10kSource(bad_root, lifter="given-depth", conf_percentile=None, hash_mode="content")
    assert content.discover()[0].content_hash != Re10kSource(
        synthetic_clip, lifter="given-depth", conf_percentile=None, hash_mode="content").discover()[0].content_hash
    # no frames on disk: the clip simply yields no view group
    shutil.rmtree(bad_root / "frames" / "clip0")
    assert Re10kSource(bad_root, lifter="given-depth").discover() == []


def test_vggt_lifter_rejects_degenerate_cameras(synthetic_clip):
    """An untrained camera head predicts fov 0: a clear error, not a NaN scene."""
    import torch

    from preprocess.lift.lifter import VGGTLifter
    from preprocess.lift.vggt_model import VGGT, VGGTConfig

    model = VGGT(VGGTConfig.tiny())
    with torch.no_grad():
        model.camera_head.pose_branch.fc2.bias.fill_(-1.0)
        model.camera_head.pose_branch.fc2.weight.zero_()
    src = Re10kSource(synthetic_clip, lifter=VGGTLifter(model=model, device="cpu"), seed=7)
    with pytest.raises(SourceError, match="re10k/clip0-g0.*lifter 'vggt'.*fov"):
        src.load(src.discover()[0])


def test_build_cli_form_reaches_the_adapter_options(synthetic_clip):
    """``kind:path:k=v,...`` as the build flow parses it: every option the
    adapter has is a scalar (no commas inside values), none collides with the
    flow's own ``frame_gap``."""
    from pipelines.build import SourceSpec

    spec = SourceSpec.parse(f"re10k:{synthetic_clip}:lifter=given-depth,view_gap_min=20,overlap_max=30,"
                            "conf_percentile=null,name=re10k_syn")
    assert spec.frame_gap is None
    src = make_source(spec.kind, spec.path, spec.name, **spec.options)
    assert src.options["view_gap_min"] == 20 and src.options["overlap_max"] == 30
    refs = src.discover()
    assert refs and refs[0].source == "re10k_syn"
    rows = src.groups("clip0")[0]
    assert all(b - a >= 20 for a, b in zip(rows[:-1], rows[1:]))


def test_vggt_input_size_follows_the_reference_crop():
    from preprocess.lift.lifter import preprocess_for_vggt, vggt_input_size

    assert vggt_input_size(360, 640) == (294, 0, 294)  # RE10K frames: 518 x 294
    assert vggt_input_size(720, 540) == (686, 84, 518)  # portrait: centre crop to 518
    out = preprocess_for_vggt([np.zeros((360, 640, 3), np.uint8)] * 2)
    assert out.shape == (2, 294, 518, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="same size"):
        preprocess_for_vggt([np.zeros((360, 640, 3), np.uint8), np.zeros((10, 10, 3), np.uint8)])


# --------------------------------------------------------------------------- recipes


def test_released_recipe_pairs_each_point_with_its_own_pixel(synthetic_clip):
    """Pointcept's released script: all pixels with confidence > 0, no
    subsampling, and every point's only correspondence is the pixel it came from."""
    from pipelines.image_groups import process_scene

    src = Re10kSource(synthetic_clip, lifter="given-depth", seed=7)  # recipe "released" is the default
    scene = src.load(src.discover()[0])
    assert scene.meta["recipe"] == "released" and scene.meta["correspondence_mode"] == "stored"
    corr = scene.meta["correspondences"]
    valid = sum(int(np.isfinite(f.depth).sum()) for f in scene.frames)
    assert len(scene.points) == valid  # every valid pixel is a point: no subsampling
    seen = np.concatenate([corr[f.name].point_index for f in scene.frames])
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(scene.points)))  # each point once
    for f in scene.frames:
        c = corr[f.name]
        pts = scene.points.coord[c.point_index[::97]].astype(np.float64)
        w2c = np.linalg.inv(f.pose.astype(np.float64))
        xc = pts @ w2c[:3, :3].T + w2c[:3, 3]
        uv = (xc @ f.K.astype(np.float64).T)[:, :2] / xc[:, 2:3]
        np.testing.assert_allclose(uv, c.pixel[::97], atol=1e-2)  # the point lies on its pixel's ray
    processed = process_scene(scene, min_correspondences=20)
    assert sum(processed.stats["correspondences"]) == len(scene.points)  # the build keeps them as they are
    with pytest.raises(ValueError, match="recipe"):
        Re10kSource(synthetic_clip, recipe="mine")


def test_released_recipe_uses_the_vggt_point_head(synthetic_clip):
    import torch

    from preprocess.lift.lifter import VGGTLifter
    from preprocess.lift.vggt_model import VGGT, VGGTConfig

    torch.manual_seed(0)
    model = VGGT(VGGTConfig.tiny())
    with torch.no_grad():
        fc2 = model.camera_head.pose_branch.fc2
        fc2.weight.mul_(0.01)
        fc2.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 0, 0.25, 0.25, 0.3]))
    lifter = VGGTLifter(model=model, device="cpu", point_head=True)
    lifted = []

    class Recording:  # the views the source lifts, to compare the scene against
        name = "vggt"

        def lift(self, *args, **kwargs):
            lifted.append(lifter.lift(*args, **kwargs))
            return lifted[-1]

    src = Re10kSource(synthetic_clip, lifter=Recording(), require_floor=False, seed=7)
    scene = src.load(src.discover()[0])
    assert scene.meta["recipe"] == "released"
    views = lifted[0]
    assert views.points is not None and views.points.shape == views.depth.shape + (3,)
    corr = scene.meta["correspondences"]
    assert len(scene.points) == sum(len(c.point_index) for c in corr.values())
    # every point is the point head's world point at its own pixel, in the scene's frame
    T = np.asarray(scene.meta["world_transform"])
    coord = scene.points.coord.astype(np.float64)
    depth_head_differs = False
    for i, f in enumerate(scene.frames):
        c = corr[f.name]
        u, v = c.pixel[:, 0].astype(int), c.pixel[:, 1].astype(int)
        expected = geometry.transform_points(T, views.points[i][v, u].astype(np.float64))
        np.testing.assert_allclose(coord[c.point_index], expected, atol=1e-4 * np.abs(expected).max())
        # the depth head's unprojection is elsewhere, so the check tells the two heads apart
        from_depth = geometry.unproject_depth(views.depth[i].astype(np.float64), views.K[i],
                                              views.pose[i].astype(np.float64))[v, u]
        depth_head_differs |= np.abs(geometry.transform_points(T, from_depth) - expected).max() > 0.1
    assert depth_head_differs


@pytest.mark.parametrize("recipe", ["released", "paper"])
def test_both_recipes_run_through_the_build(synthetic_clip, tmp_path, recipe):
    from testkit.dataset_files import build_sample

    from pipelines.build import SourceSpec

    spec = SourceSpec("re10k", str(synthetic_clip), None,
                      dict(lifter="given-depth", conf_percentile=None, voxel_size=0.05, seed=7, recipe=recipe))
    sample = build_sample(spec, str(tmp_path / "store"), note=recipe)
    idx = np.concatenate([np.asarray(c) for c in sample["corr_point"]])
    # the same group lifted without subsampling: every depth pixel a point
    full = Re10kSource(synthetic_clip, lifter="given-depth", conf_percentile=None, voxel_size=0.0, seed=7,
                       recipe=recipe)
    full = full.load(full.discover()[0]).points.coord
    n_pixels = 4 * SPEC.height * SPEC.width
    assert len(full) == n_pixels
    if recipe == "released":  # each point in exactly one view, every pixel kept
        assert len(np.unique(idx)) == len(idx) == len(sample["coord"]) == n_pixels
    else:
        # voxel subsampling: a subset of the full cloud, one point per 5 cm cell
        assert len(sample["coord"]) == len(align.voxel_subsample(full, 0.05)) < 0.7 * n_pixels
        assert {tuple(p) for p in sample["coord"].tolist()} <= {tuple(p) for p in full.tolist()}
        # the build's cross-view depth check: points paired in several views, each pair a projection
        assert (np.bincount(idx) >= 2).sum() > 100
        for pts, pix, K, pose in zip(sample["corr_point"], sample["corr_pixel"], sample["K"], sample["pose"]):
            uv, z = geometry.project(sample["coord"][pts], K, pose)
            assert (z > 0).all() and np.abs(uv - np.asarray(pix, np.float64)).max() <= 0.5 + 1e-3
    # confidence: "paper" keeps the pixels at or above the median, "released" every pixel with conf > 0
    from preprocess.lift.lifter import GivenDepthLifter

    class RampConfidence(GivenDepthLifter):
        def lift(self, *args, **kwargs):
            views = super().lift(*args, **kwargs)
            views.conf = np.random.default_rng(0).uniform(0.5, 3.0, views.conf.shape).astype(np.float32)
            self.conf = views.conf
            return views

    lifter = RampConfidence()
    src = Re10kSource(synthetic_clip, lifter=lifter, conf_percentile=50.0, voxel_size=0.0, seed=7, recipe=recipe)
    kept = len(src.load(src.discover()[0]).points)
    assert kept == (n_pixels if recipe == "released" else (lifter.conf >= np.median(lifter.conf)).sum())


def test_a_store_built_with_the_old_frame_skip_option_replans_unchanged(synthetic_clip, tmp_path):
    """``frame_skip`` was the adapter option's name before ``frame_gap``: a store
    built then records it in its manifest's source options (and hashed it into
    every content hash). A re-run from those records, or with the new name, must
    see every scene as unchanged."""
    from testkit.dataset_files import build_sample

    from pipelines.build import BuildOptions, SourceSpec, run_build
    from pipelines.build.plan import plan_build, recorded_sources, source_specs
    from pipelines.store import load_manifest

    opts = dict(lifter="given-depth", conf_percentile=None, voxel_size=0.05, seed=7)
    store = str(tmp_path / "store")
    with pytest.warns(DeprecationWarning, match="frame_skip"):
        build_sample(SourceSpec("re10k", str(synthetic_clip), None, {**opts, "frame_skip": 1}), store)
    m = load_manifest(store)
    assert m.sources["re10k"]["options"]["frame_skip"] == 1 and len(m.scenes()) > 0
    # what a run without sources rebuilds from (the manifest's records), then the new name
    for sources in (recorded_sources(store), [SourceSpec("re10k", str(synthetic_clip), None, {**opts, "frame_gap": 1})]):
        options = BuildOptions.from_params(store=store, sources=sources, min_correspondences=20, frame_gap=1, shard_size=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            specs, _, _ = source_specs(options)
            refs = [r for s in specs for r in s.make().discover()]
            plan = plan_build(store, refs, [s.source_name for s in specs])
            assert (plan.new, plan.changed, sorted(plan.unchanged)) == ([], [], sorted(m.scenes())), sources
            summary = run_build(options)
        assert summary.per_source["re10k"]["new"] == summary.per_source["re10k"]["updated"] == 0
        assert summary.per_source["re10k"]["unchanged"] == len(m.scenes())
