"""ARKitScenes adapter on a tiny fixture in the 3DOD layout (.traj angle-axis
world-to-camera poses, .pincam intrinsics, PNG colour, 16-bit mm depth, PLY mesh)."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from preprocess.sources import SourceError, make_source
from preprocess.sources.arkitscenes import ARKitScenesSource
from testkit import dataset_files as fx

VID = "41069025"


def traj_line(t, pose_c2w):
    w2c = np.linalg.inv(pose_c2w)
    aa = Rotation.from_matrix(w2c[:3, :3]).as_rotvec()
    return f"{t:.6f} " + " ".join(f"{x:.9f}" for x in [*aa, *w2c[:3, 3]])


def _video(root, vid, pose, split="Training"):
    d = root / "3dod" / split / vid
    fr = d / f"{vid}_frames"
    K = fx.make_K()
    X = fx.known_point(pose, K)
    verts, faces = fx.plane_mesh(pose, X)
    fx.write_ply(d / f"{vid}_3dod_mesh.ply", verts, faces, np.full((5, 3), 90, np.uint8), ascii=True)
    other = fx.make_pose(axis=(0, 0, 1), angle=1.0, t=(5, 5, 5))
    (fr).mkdir(parents=True)
    (fr / "lowres_wide.traj").write_text("\n".join([traj_line(100.001, pose), traj_line(100.099, pose),
                                                    traj_line(100.5, other)]) + "\n")
    for t in ("100.000", "100.100", "100.200"):
        name = f"{vid}_{t}"
        fx.write_png_rgb(fr / "lowres_wide" / f"{name}.png", fx.gradient_rgb())
        depth = np.full((fx.H, fx.W), int(fx.Z0 * 1000), np.uint16)
        depth[3, 3] = 0
        fx.write_png16(fr / "lowres_depth" / f"{name}.png", depth)
        (fr / "lowres_wide_intrinsics").mkdir(exist_ok=True)
        (fr / "lowres_wide_intrinsics" / f"{name}.pincam").write_text(
            f"{fx.W} {fx.H} {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}\n")
    return X


@pytest.fixture()
def dataset(tmp_path):
    X = _video(tmp_path, VID, fx.make_pose())
    _video(tmp_path, "42445173", fx.make_pose(axis=(1, 0, 0), angle=2.0, t=(0, 1, 0)), split="Validation")
    return tmp_path, X


def test_known_point_lands_on_its_pixel(dataset):
    root, X = dataset
    src = make_source("arkitscenes", root)
    refs = src.discover()
    assert [r.scene_id for r in refs] == [VID, "42445173"]
    scene = src.load(refs[0])
    scene.validate()
    assert scene.mesh_path.name == f"{VID}_3dod_mesh.ply"
    assert [f.name for f in scene.frames] == [f"{VID}_100.000", f"{VID}_100.100"]
    assert scene.meta["skipped_frames"] == [f"{VID}_100.200"]  # nearest pose is 0.1 s away
    np.testing.assert_allclose(scene.points.coord[4], X, atol=1e-5)
    assert scene.points.segment is None
    for f in scene.frames:
        assert f.depth is None
        u, v, z = fx.project(f.pose, f.K, X)
        assert (u, v, z) == pytest.approx((fx.U0, fx.V0, fx.Z0), abs=1e-3)


def test_sensor_depth_in_metres(dataset):
    root, X = dataset
    src = ARKitScenesSource(root, use_sensor_depth=True, max_pose_dt=0.2)
    scene = src.load(src.discover()[0])
    scene.validate(require_depth=True)
    assert len(scene.frames) == 3
    d = scene.frames[0].depth
    assert d[fx.V0, fx.U0] == pytest.approx(fx.Z0)
    assert np.isnan(d[3, 3])


def test_hash_frame_gap_and_errors(dataset):
    root, _ = dataset
    src = ARKitScenesSource(root)
    refs = src.discover()
    assert refs == src.discover()
    assert [f.name for f in ARKitScenesSource(root, frame_gap=2).load(refs[0]).frames] == [f"{VID}_100.000"]
    traj = root / "3dod" / "Training" / VID / f"{VID}_frames" / "lowres_wide.traj"
    traj.write_text(traj.read_text() + "100.7 1 2\n")
    after = src.discover()
    assert after[0].content_hash != refs[0].content_hash and after[1] == refs[1]
    with pytest.raises(SourceError, match=rf"{VID}.*lowres_wide\.traj:4.*7 numbers"):
        src.load(after[0])
    traj.unlink()
    with pytest.raises(SourceError, match=r"lowres_wide\.traj.*missing"):
        src.load(after[0])
    pincam = root / "3dod/Validation/42445173/42445173_frames/lowres_wide_intrinsics/42445173_100.000.pincam"
    pincam.write_text("32 24 30\n")
    with pytest.raises(SourceError, match=r"42445173.*42445173_100\.000\.pincam"):
        src.load(src.discover()[1])


def test_pose_within_5_ms_as_the_official_loader(tmp_path):
    pose = fx.make_pose()
    X = _video(tmp_path, VID, pose)
    fr = tmp_path / "3dod" / "Training" / VID / f"{VID}_frames"
    # poses 4 ms and 6 ms away from two new images
    with open(fr / "lowres_wide.traj", "a") as f:
        f.write(traj_line(100.304, pose) + "\n" + traj_line(100.406, pose) + "\n")
    for t in ("100.300", "100.400"):
        fx.write_png_rgb(fr / "lowres_wide" / f"{VID}_{t}.png", fx.gradient_rgb())
        (fr / "lowres_wide_intrinsics" / f"{VID}_{t}.pincam").write_text(
            (fr / "lowres_wide_intrinsics" / f"{VID}_100.000.pincam").read_text())
    scene = ARKitScenesSource(tmp_path).load(ARKitScenesSource(tmp_path).discover()[0])
    assert [f.name for f in scene.frames] == [f"{VID}_100.000", f"{VID}_100.100", f"{VID}_100.300"]
    assert scene.meta["skipped_frames"] == [f"{VID}_100.200", f"{VID}_100.400"]


def test_pose_interpolation_between_two_poses(tmp_path):
    pose = fx.make_pose()
    _video(tmp_path, VID, pose)
    fr = tmp_path / "3dod" / "Training" / VID / f"{VID}_frames"
    # two poses 100 ms apart around 100.200: a turn of 0.2 rad about z and 0.4 m along x
    a, b = pose.copy(), pose.copy()
    b[:3, :3] = fx.rotation((0, 0, 1), 0.2) @ pose[:3, :3]
    b[:3, 3] += [0.4, 0, 0]
    fr.joinpath("lowres_wide.traj").write_text("\n".join([traj_line(100.15, a), traj_line(100.25, b)]) + "\n")
    src = ARKitScenesSource(tmp_path, pose_interpolation=True)
    scene = src.load(src.discover()[0])
    (f,) = [f for f in scene.frames if f.name == f"{VID}_100.200"]
    want = pose.copy()
    want[:3, :3] = fx.rotation((0, 0, 1), 0.1) @ pose[:3, :3]
    want[:3, 3] += [0.2, 0, 0]
    np.testing.assert_allclose(f.pose, want, atol=1e-5)
    assert f"{VID}_100.000" in scene.meta["skipped_frames"]  # before the trajectory: no pose
    assert ARKitScenesSource(tmp_path).load(src.discover()[0]).frames == []  # nearest only: 50 ms away


@pytest.mark.parametrize("sky,turns", [("Left", 1), ("Down", 2), ("Right", 3), ("Up", 0)])
def test_rotated_video_turned_sky_up(tmp_path, sky, turns):
    X = _video(tmp_path, VID, fx.make_pose())
    (tmp_path / "3dod" / "metadata.csv").write_text(f"video_id,visit_id,sky_direction,fold\n{VID},1,{sky},Training\n")
    src = ARKitScenesSource(tmp_path, use_sensor_depth=True)
    scene = src.load(src.discover()[0])
    f = scene.frames[0]
    want_rgb = np.rot90(fx.gradient_rgb(), -turns)  # cv2.ROTATE_90_CLOCKWISE = np.rot90(k=-1)
    np.testing.assert_array_equal(f.rgb, want_rgb)
    u, v = fx.U0, fx.V0
    h = fx.H
    for k in range(turns):  # pixel (u, v) -> (H-1-v, u) per clockwise quarter turn
        u, v, h = (h - 1 - v), u, (fx.W if k % 2 == 0 else fx.H)
    pu, pv, z = fx.project(f.pose, f.K, X)
    assert (pu, pv, z) == pytest.approx((u, v, fx.Z0), abs=1e-3)
    assert f.depth[v, u] == pytest.approx(fx.Z0)
    assert np.linalg.det(f.pose[:3, :3]) == pytest.approx(1.0, abs=1e-5)
    assert scene.meta["quarter_turns_clockwise"] == turns
    kept = ARKitScenesSource(tmp_path, upright=False).load(src.discover()[0]).frames[0]
    np.testing.assert_array_equal(kept.rgb, fx.gradient_rgb())


def test_bad_sky_direction_is_named(tmp_path):
    _video(tmp_path, VID, fx.make_pose())
    (tmp_path / "metadata.csv").write_text(f"video_id,sky_direction\n{VID},Sideways\n")
    with pytest.raises(SourceError, match=r"metadata\.csv.*unknown sky_direction \['Sideways'\]"):
        ARKitScenesSource(tmp_path).load(ARKitScenesSource(tmp_path).discover()[0])


def test_error_branches_name_the_file(tmp_path):
    _video(tmp_path, VID, fx.make_pose())
    fr = tmp_path / "3dod" / "Training" / VID / f"{VID}_frames"
    src = ARKitScenesSource(tmp_path, use_sensor_depth=True)

    def fails(pattern):
        with pytest.raises(SourceError, match=pattern):
            src.load(src.discover()[0])

    pincam = fr / "lowres_wide_intrinsics" / f"{VID}_100.000.pincam"
    good = pincam.read_text()
    pincam.write_text(f"64 48 30 28 15.5 11.5\n")
    fails(rf"{VID}_100\.000\.pincam.*intrinsics are for 64x48, image is 32x24")
    pincam.write_text(good)
    depth = fr / "lowres_depth" / f"{VID}_100.000.png"
    fx.write_png16(depth, np.ones((5, 6), np.uint16))
    fails(rf"lowres_depth/{VID}_100\.000\.png.*depth is \[5, 6\], colour is \[24, 32\]")
    depth.unlink()
    fails(rf"lowres_depth/{VID}_100\.000\.png")
    fx.write_png16(depth, np.full((fx.H, fx.W), 2500, np.uint16))
    fx.write_png_rgb(fr / "lowres_wide" / f"{VID}_notatime.png", fx.gradient_rgb())
    fails(r"notatime\.png.*not '<video_id>_<timestamp>\.png'")
    (fr / "lowres_wide" / f"{VID}_notatime.png").unlink()
    (fr / "lowres_wide.traj").write_text("\n")
    fails(r"lowres_wide\.traj.*trajectory is empty")
    (tmp_path / "3dod" / "Training" / VID / f"{VID}_3dod_mesh.ply").unlink()
    fails(rf"{VID}_3dod_mesh\.ply")
