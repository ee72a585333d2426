"""S3DIS adapter: Stanford3dDataset_v1.2 annotation txt files + 2D-3D-S images
(pose json with camera_rt_matrix / camera_k_matrix, depth png in 1/512 m,
y-up area mesh OBJ)."""
import json

import numpy as np
import pytest
import trimesh

from preprocess.sources import SourceError, make_source
from preprocess.sources.s3dis import S3DISSource
from testkit import dataset_files as fx

UUID = "0a70cd8d4f2b48239aaa5db59719158a"


def _write_txt(path, pts, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.concatenate([pts, rgb], 1), fmt=["%.6f"] * 3 + ["%d"] * 3)


def _dataset(root):
    pose, K = fx.make_pose(), fx.make_K()
    X = fx.known_point(pose, K)
    verts, faces = fx.plane_mesh(pose, X)
    rng = np.random.default_rng(0)
    # a grid of points on the plane around X, plus X itself
    R = pose[:3, :3]
    grid = np.array([X + a * R[:, 0] + b * R[:, 1] for a in np.linspace(-1, 1, 7) for b in np.linspace(-1, 1, 7)])
    room = root / "s3dis" / "Area_1" / "office_1"
    _write_txt(room / "Annotations" / "chair_1.txt", grid[:25], rng.integers(0, 255, (25, 3)))
    _write_txt(room / "Annotations" / "stairs_1.txt", grid[25:], rng.integers(0, 255, (24, 3)))
    _write_txt(room / "Annotations" / "wall_1.txt", X[None], np.array([[1, 2, 3]]))
    _write_txt(root / "s3dis" / "Area_1" / "office_10" / "Annotations" / "wall_1.txt", grid + 5, np.zeros((49, 3)))
    data = root / "2d3ds" / "area_1" / "data"
    w2c = np.linalg.inv(pose)
    for cam, frame, p in ((UUID, 0, pose), (UUID, 1, pose), ("ffff", 0, pose)):
        stem = f"camera_{cam}_office_1_frame_{frame}_domain"
        fx.write_png_rgb(data / "rgb" / f"{stem}_rgb.png", fx.gradient_rgb())
        depth = np.full((fx.H, fx.W), int(fx.Z0 * 512), np.uint16)
        depth[0, 0] = 65535
        fx.write_png16(data / "depth" / f"{stem}_depth.png", depth)
        (data / "pose").mkdir(parents=True, exist_ok=True)
        (data / "pose" / f"{stem}_pose.json").write_text(json.dumps(
            {"camera_k_matrix": K.tolist(), "camera_rt_matrix": w2c[:3].tolist(), "frame_num": frame,
             "room": "office_1_1"}))
    # a frame of another room whose name shares the prefix
    fx.write_png_rgb(data / "rgb" / f"camera_{UUID}_office_10_frame_0_domain_rgb.png", fx.gradient_rgb())
    # the area mesh, stored y-up: mesh (x, y, z) = cloud (x, z, -y)
    mesh_verts = np.stack([verts[:, 0], verts[:, 2], -verts[:, 1]], 1)
    far = mesh_verts + 100.0  # another room's faces: cropped away
    obj = root / "2d3ds" / "area_1" / "3d" / "rgb.obj"
    obj.parent.mkdir(parents=True)
    trimesh.Trimesh(np.concatenate([mesh_verts, far]), np.concatenate([faces, faces + 5]), process=False).export(obj)
    return X


@pytest.fixture()
def dataset(tmp_path):
    X = _dataset(tmp_path)
    return tmp_path, X


def test_known_point_and_room_mesh(dataset):
    root, X = dataset
    src = make_source("s3dis", root / "s3dis", images_root=root / "2d3ds", mesh_cache_dir=root / "cache")
    refs = src.discover()
    assert [r.scene_id for r in refs] == ["Area_1_office_1", "Area_1_office_10"]
    scene = src.load(refs[0])
    scene.validate()
    assert [f.name for f in scene.frames] == [f"{UUID}_frame_0", f"{UUID}_frame_1", "ffff_frame_0"]
    np.testing.assert_array_equal(np.bincount(scene.points.segment, minlength=13)[[2, 8, 12]], [1, 25, 24])
    assert set(np.unique(scene.points.instance)) == {0, 1, 2}
    wall = scene.points.coord[scene.points.segment == 2][0]
    np.testing.assert_allclose(wall, X, atol=1e-5)
    for f in scene.frames:
        assert f.depth is None and f.rgb.shape == (fx.H, fx.W, 3)
        u, v, z = fx.project(f.pose, f.K, X)
        assert (u, v, z) == pytest.approx((fx.U0, fx.V0, fx.Z0), abs=1e-3)
    # the cached room mesh is in the cloud frame and holds only this room's faces
    mesh = trimesh.load(scene.mesh_path, process=False)
    assert len(mesh.faces) == 4
    assert np.linalg.norm(np.asarray(mesh.vertices) - X, axis=1).min() < 1e-5
    # normals estimated from the flat neighbourhood are the plane's normal
    axis = scene.frames[0].pose[:3, 2]
    assert np.abs(scene.points.normal @ axis).min() > 0.99
    other = src.load(refs[1])
    assert other.frames == [] and other.mesh_path is None  # its one image has no pose json: skipped
    assert other.meta["skipped_frames"] == [f"{UUID}_frame_0"]
    assert src.load(refs[0]).mesh_path == scene.mesh_path  # cached


def test_sensor_depth_and_points_only(dataset):
    root, X = dataset
    src = S3DISSource(root / "s3dis", images_root=root / "2d3ds", use_sensor_depth=True, frame_gap=2)
    scene = src.load(src.discover()[0])
    scene.validate(require_depth=True)
    assert [f.name for f in scene.frames] == [f"{UUID}_frame_0", "ffff_frame_0"]
    assert scene.mesh_path is None
    d = scene.frames[0].depth
    assert d[fx.V0, fx.U0] == pytest.approx(fx.Z0) and np.isnan(d[0, 0])
    plain = S3DISSource(root / "s3dis")
    assert plain.load(plain.discover()[0]).frames == []


def test_hash_and_errors(dataset):
    root, _ = dataset
    src = S3DISSource(root / "s3dis", images_root=root / "2d3ds", mesh_cache_dir=root / "cache")
    refs = src.discover()
    assert refs == src.discover()
    ann = root / "s3dis" / "Area_1" / "office_1" / "Annotations" / "chair_1.txt"
    with open(ann, "a") as f:
        f.write("103.0\x000000 1.0 2.0 3 4 5\n")  # the kind of corruption v1.2 ships in Area_5/office_19
    after = src.discover()
    assert after[0].content_hash != refs[0].content_hash and after[1] == refs[1]
    with pytest.raises(SourceError, match=r"Area_1_office_1.*chair_1\.txt.*malformed"):
        src.load(after[0])
    ann.unlink()
    pose = next((root / "2d3ds" / "area_1" / "data" / "pose").glob("camera_ffff*"))
    pose.write_text(json.dumps({"camera_k_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}))
    with pytest.raises(SourceError, match=r"camera_ffff_office_1_frame_0_domain_pose\.json.*malformed"):
        src.load(src.discover()[0])
    pose.unlink()
    assert src.load(src.discover()[0]).meta["skipped_frames"] == ["ffff_frame_0"]
    (root / "2d3ds" / "area_1" / "3d" / "rgb.obj").unlink()
    src = S3DISSource(root / "s3dis", images_root=root / "2d3ds", mesh_cache_dir=root / "cache2")
    with pytest.raises(SourceError, match=r"Area_1_office_1.*area_1/3d/rgb\.obj.*missing area mesh"):
        src.load(src.discover()[0])


# Pointcept's Concerto S3DIS script: area_5b's mesh -> area_5a's frame (mesh axes, y up)
_5B_TO_5A_MESH = np.array([[0, 0, -1, -4.09703582], [0, 1, 0, 0], [1, 0, 0, -6.22617759], [0, 0, 0, 1]])
_MESH_TO_CLOUD = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)


def test_area_5b_poses_are_moved_into_the_area_5_frame(tmp_path):
    """A 2D-3D-S area_5b camera (pose registered to the 5b model, z-up cloud
    axes) and its 5b mesh (y up); the Stanford3dDataset room is in the Area_5
    frame. The camera must see the room's point X at its pixel."""
    pose_5b, K = fx.make_pose(), fx.make_K()
    X_5b = fx.known_point(pose_5b, K)
    verts_5b, faces = fx.plane_mesh(pose_5b, X_5b)
    to_area5 = _MESH_TO_CLOUD @ _5B_TO_5A_MESH @ np.linalg.inv(_MESH_TO_CLOUD)
    X = to_area5[:3, :3] @ X_5b + to_area5[:3, 3]
    _write_txt(tmp_path / "s3dis" / "Area_5" / "office_40" / "Annotations" / "wall_1.txt", X[None], np.array([[1, 2, 3]]))
    data = tmp_path / "2d3ds" / "area_5b" / "data"
    stem = f"camera_{UUID}_office_40_frame_3_domain"
    fx.write_png_rgb(data / "rgb" / f"{stem}_rgb.png", fx.gradient_rgb())
    (data / "pose").mkdir(parents=True)
    (data / "pose" / f"{stem}_pose.json").write_text(json.dumps(
        {"camera_k_matrix": K.tolist(), "camera_rt_matrix": np.linalg.inv(pose_5b)[:3].tolist()}))
    mesh_verts = np.stack([verts_5b[:, 0], verts_5b[:, 2], -verts_5b[:, 1]], 1)  # y up
    obj = tmp_path / "2d3ds" / "area_5b" / "3d" / "rgb.obj"
    obj.parent.mkdir(parents=True)
    trimesh.Trimesh(mesh_verts, faces, process=False).export(obj)
    src = S3DISSource(tmp_path / "s3dis", images_root=tmp_path / "2d3ds", mesh_cache_dir=tmp_path / "cache")
    scene = src.load(src.discover()[0])
    (f,) = scene.frames
    np.testing.assert_allclose(f.pose, to_area5 @ pose_5b, atol=1e-5)
    u, v, z = fx.project(f.pose, f.K, X)
    assert (u, v, z) == pytest.approx((fx.U0, fx.V0, fx.Z0), abs=1e-3)
    mesh = trimesh.load(scene.mesh_path, process=False)  # the 5b mesh lands on the same frame
    assert np.linalg.norm(np.asarray(mesh.vertices) - X, axis=1).min() < 1e-4


def test_known_bad_byte_of_office_19_is_repaired_with_a_warning(tmp_path):
    ann = tmp_path / "Area_5" / "office_19" / "Annotations" / "ceiling_1.txt"
    ann.parent.mkdir(parents=True)
    # the official file: one number on one line holds a stray byte ("103.0?0000")
    ann.write_bytes(b"1.000000 2.000000 3.000000 10 20 30\n103.0\x100000 4.500000 2.750000 11 21 31\n")
    src = S3DISSource(tmp_path)
    with pytest.warns(UserWarning, match=r"Area_5/office_19/Annotations/ceiling_1\.txt.*line\(s\) \[2\]"):
        scene = src.load(src.discover()[0])
    np.testing.assert_allclose(scene.points.coord[1], [103.0, 4.5, 2.75])
    assert scene.points.color[1].tolist() == [11, 21, 31]


def test_error_branches_name_the_file(dataset):
    root, _ = dataset
    src = S3DISSource(root / "s3dis", images_root=root / "2d3ds", use_sensor_depth=True)

    def fails(pattern):
        with pytest.raises(SourceError, match=pattern):
            src.load(src.discover()[0])

    ann = root / "s3dis" / "Area_1" / "office_1" / "Annotations" / "wall_1.txt"
    good = ann.read_text()
    ann.write_text("1 2 3 4\n")
    fails(r"wall_1\.txt.*expected 'x y z r g b' per line, got 4 columns")
    ann.write_text("nan 2 3 4 5 6\n")
    fails(r"wall_1\.txt.*NaN/inf values")
    ann.write_text(good)
    pose = next((root / "2d3ds" / "area_1" / "data" / "pose").glob("camera_ffff*"))
    bad_rt = [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    pose.write_text(json.dumps({"camera_k_matrix": fx.make_K().tolist(), "camera_rt_matrix": bad_rt}))
    fails(r"camera_ffff_office_1_frame_0_domain_pose\.json.*not orthonormal")
    pose.write_text(json.dumps({"camera_k_matrix": [[1, 0], [0, 1]], "camera_rt_matrix": bad_rt}))
    fails(r"pose\.json.*camera_k_matrix must be 3x3")
    pose.unlink()
    depth = next((root / "2d3ds" / "area_1" / "data" / "depth").glob(f"camera_{UUID}_office_1_frame_0*"))
    fx.write_png16(depth, np.ones((3, 3), np.uint16))
    fails(rf"camera_{UUID}_office_1_frame_0_domain_depth\.png.*depth is \[3, 3\], colour is \[24, 32\]")
    for f in (root / "s3dis" / "Area_1" / "office_1" / "Annotations").glob("*.txt"):
        f.unlink()
    (root / "s3dis" / "Area_1" / "office_1" / "Annotations" / "x.txt").write_text("")
    src2 = S3DISSource(root / "s3dis")
    with pytest.raises(SourceError, match=r"Area_1_office_1.*Annotations.*hold no points"):
        src2.load(src2.discover()[0])
