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


def test_hash_frame_skip_and_errors(dataset):
    root, _ = dataset
    src = ARKitScenesSource(root)
    refs = src.discover()
    assert refs == src.discover()
    assert [f.name for f in ARKitScenesSource(root, frame_skip=2).load(refs[0]).frames] == [f"{VID}_100.000"]
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
