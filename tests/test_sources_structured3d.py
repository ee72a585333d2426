"""Structured3D adapter on a tiny unzipped fixture (rgb_rawlight.png, 16-bit
depth.png in mm, semantic.png, camera_pose.txt in mm with half-angle fovs)."""
import numpy as np
import pytest

from preprocess.sources import SourceError, make_source
from preprocess.sources.structured3d import Structured3DSource
from testkit import dataset_files as fx

XFOV, YFOV = 0.8, 0.65  # half-angles, radians
EYE_MM = np.array([1200.0, -3400.0, 1500.0])
TOWARDS = np.array([0.6, 0.8, 0.0])  # horizontal view
UP = np.array([0.0, 0.0, 1.0])  # z up, as Structured3D's world


def official_projection(X_m, eye_mm, towards, up, w, h):
    """Structured3D's misc/utils.py parse_camera_info + project_3d_points_to_2d."""
    W_ = towards / np.linalg.norm(towards)
    up = up / np.linalg.norm(up)
    U = np.cross(W_, up)
    V = -np.cross(W_, U)
    K = np.diag([1.0, 1.0, 1.0])
    K[0, 2], K[1, 2] = w / 2, h / 2
    K[0, 0], K[1, 1] = K[0, 2] / np.tan(XFOV), K[1, 2] / np.tan(YFOV)
    p = np.stack([U, V, W_]) @ (X_m * 1000 - eye_mm)
    x3, y3, z3 = p[0], -p[1], abs(p[2])
    return x3 * K[0, 0] / z3 + K[0, 2], y3 * K[1, 1] / z3 + K[1, 2], z3 / 1000


def _position(root, scene, room, pos, eye_mm, towards, up, depth_mm=2500):
    d = root / "Structured3D" / scene / "2D_rendering" / room / "perspective" / "full" / pos
    d.mkdir(parents=True)
    fx.write_png_rgb(d / "rgb_rawlight.png", fx.gradient_rgb())
    depth = np.full((fx.H, fx.W), depth_mm, np.uint16)
    depth[0, 0] = 0  # no reading
    fx.write_png16(d / "depth.png", depth)
    sem = np.full((fx.H, fx.W), 5, np.uint8)  # NYU40 5 = chair
    sem[:, :4] = 22  # ceiling
    sem[:, 4:8] = 13  # not a benchmark class
    fx.write_png_rgb(d / "semantic.png", np.stack([sem] * 3, -1)[..., 0])
    (d / "camera_pose.txt").write_text(" ".join(f"{x:.6f}" for x in [*eye_mm, *towards, *up, XFOV, YFOV, 1]) + "\n")
    return d


@pytest.fixture()
def dataset(tmp_path):
    _position(tmp_path, "scene_00000", "485142", "0", EYE_MM, TOWARDS, UP)
    _position(tmp_path, "scene_00000", "485142", "1", EYE_MM + [100, 0, 0], [-0.8, 0.6, 0.0], UP, depth_mm=3000)
    _position(tmp_path, "scene_00001", "7", "0", EYE_MM, [0, 0.6, -0.8], [0, 0.8, 0.6])
    return tmp_path


def test_known_point_lands_on_its_pixel_and_depth_is_metres(dataset):
    src = make_source("structured3d", dataset)
    refs = src.discover()
    assert [r.scene_id for r in refs] == ["scene_00000_room_485142", "scene_00001_room_7"]
    scene = src.load(refs[0])
    scene.validate(require_depth=True)
    assert scene.mesh_path is None and [f.name for f in scene.frames] == ["0", "1"]
    f = scene.frames[0]
    # the point the dataset's own projection puts on the centre of pixel (U0, V0) at
    # 2.5 m: its coordinates have pixel edges at integers, so that centre is (U0+0.5, V0+0.5)
    cx, cy = fx.W / 2, fx.H / 2
    fxx, fyy = cx / np.tan(XFOV), cy / np.tan(YFOV)
    Wd = TOWARDS / np.linalg.norm(TOWARDS)
    U = np.cross(Wd, UP)
    V = -np.cross(Wd, U)
    x3, y3 = (fx.U0 + 0.5 - cx) * 2500 / fxx, (fx.V0 + 0.5 - cy) * 2500 / fyy
    X = (EYE_MM + U * x3 - V * y3 + Wd * 2500) / 1000
    u_off, v_off, z_off = official_projection(X, EYE_MM, TOWARDS, UP, fx.W, fx.H)
    assert (u_off, v_off) == pytest.approx((fx.U0 + 0.5, fx.V0 + 0.5), abs=1e-6)
    assert f.K[0, 2] == pytest.approx((fx.W - 1) / 2) and f.K[1, 2] == pytest.approx((fx.H - 1) / 2)
    u, v, z = fx.project(f.pose, f.K, X)
    assert (u, v, z) == pytest.approx((fx.U0, fx.V0, 2.5), abs=1e-3)
    assert f.depth[fx.V0, fx.U0] == pytest.approx(2.5)
    assert np.isnan(f.depth[0, 0])
    # the unprojected cloud contains X (pixel (U0, V0) of frame 0)
    assert np.linalg.norm(scene.points.coord - X, axis=1).min() < 1e-4
    # rotation is proper and camera y points down (against world up)
    assert np.linalg.det(f.pose[:3, :3]) == pytest.approx(1, abs=1e-5)
    assert f.pose[:3, 1] @ UP == pytest.approx(-1, abs=1e-6)


def test_points_colours_labels(dataset):
    src = Structured3DSource(dataset)
    scene = src.load(src.discover()[0])
    n_valid = 2 * (fx.H * fx.W - 1)
    assert len(scene.points) == n_valid  # a flat wall seen head-on: nothing grazing
    seg = scene.points.segment
    assert set(np.unique(seg)) == {-1, 4, 16}  # chair -> 4, ceiling -> 16, NYU 13 -> ignore
    assert scene.points.color.dtype == np.uint8 and scene.points.normal.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(scene.points.normal, axis=1), 1, atol=1e-5)
    # normals of frame 0's wall face its camera
    pose = scene.frames[0].pose
    assert (scene.points.normal[: n_valid // 2] @ pose[:3, 2] < -0.99).all()
    vox = Structured3DSource(dataset, voxel_size=0.5).load(src.discover()[0])
    assert 0 < len(vox.points) < len(scene.points)


def test_hash_and_errors(dataset):
    src = Structured3DSource(dataset)
    refs = src.discover()
    assert refs == src.discover()
    cam = dataset / "Structured3D/scene_00000/2D_rendering/485142/perspective/full/1/camera_pose.txt"
    cam.write_text("1 2 3 oops\n")
    assert src.discover()[0].content_hash != refs[0].content_hash
    assert src.discover()[1].content_hash == refs[1].content_hash
    with pytest.raises(SourceError, match=r"scene_00000_room_485142.*full/1/camera_pose\.txt.*non-numeric"):
        src.load(src.discover()[0])
    cam.write_text("1 2 3 0 1 0 0 0 1 0.8\n")
    with pytest.raises(SourceError, match=r"camera_pose\.txt.*expected"):
        src.load(src.discover()[0])
    (cam.parent / "depth.png").unlink()
    with pytest.raises(SourceError, match=r"full/1/depth\.png.*missing"):
        src.load(src.discover()[0])


def _zip_dataset(src_root, out_dir):
    """The published form: zip archives whose members start with Structured3D/."""
    import zipfile

    out_dir.mkdir()
    base = src_root / "Structured3D"
    for i, scene in enumerate(sorted(base.glob("scene_*"))):
        with zipfile.ZipFile(out_dir / f"Structured3D_perspective_full_{i:02d}.zip", "w") as zf:
            for f in sorted(scene.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(src_root).as_posix())


def test_reads_the_zip_archives_in_place(dataset, tmp_path):
    import pickle

    zdir = tmp_path / "zips"
    _zip_dataset(dataset, zdir)
    folder, zipped = Structured3DSource(dataset), Structured3DSource(zdir)
    refs = zipped.discover()
    assert [r.scene_id for r in refs] == [r.scene_id for r in folder.discover()]
    assert refs == Structured3DSource(zdir).discover()
    a, b = folder.load(folder.discover()[0]), zipped.load(refs[0])
    np.testing.assert_array_equal(a.points.coord, b.points.coord)
    np.testing.assert_array_equal(a.points.segment, b.points.segment)
    for fa, fb in zip(a.frames, b.frames):
        np.testing.assert_array_equal(fa.rgb, fb.rgb)
        np.testing.assert_array_equal(fa.pose, fb.pose)
    clone = pickle.loads(pickle.dumps(zipped))  # open archives are not shipped to workers
    assert clone.load(refs[1]).scene_id == refs[1].scene_id

    # a changed member changes that room's hash (its CRC), not the other's
    import zipfile

    z1 = zdir / "Structured3D_perspective_full_01.zip"
    names = zipfile.ZipFile(z1).namelist()
    with zipfile.ZipFile(z1, "w") as zf:
        for n in names:
            data = b"1 2 3 0 1 0 0 0 1 0.8 0.6 1\n" if n.endswith("camera_pose.txt") else (dataset / n).read_bytes()
            zf.writestr(n, data)
    after = Structured3DSource(zdir).discover()
    assert after[0] == refs[0] and after[1].content_hash != refs[1].content_hash
    with zipfile.ZipFile(z1, "w") as zf:
        for n in names:
            zf.writestr(n, b"not a png" if n.endswith("depth.png") else (dataset / n).read_bytes())
    bad = Structured3DSource(zdir)
    with pytest.raises(SourceError, match=r"scene_00001_room_7.*Structured3D_perspective_full_01\.zip:.*depth\.png.*decode"):
        bad.load(bad.discover()[1])


def test_unlabelled_pixels_give_no_point_and_errata_scenes_are_skipped(tmp_path):
    d = _position(tmp_path, "scene_00000", "485142", "0", EYE_MM, TOWARDS, UP)
    sem = np.full((fx.H, fx.W), 5, np.uint8)
    sem[:, -3:] = 0  # unlabelled: Concerto drops these pixels
    fx.write_png_rgb(d / "semantic.png", np.stack([sem] * 3, -1)[..., 0])
    _position(tmp_path, "scene_01155", "1", "0", EYE_MM, TOWARDS, UP)  # listed invalid in metadata/errata.txt
    src = Structured3DSource(tmp_path)
    refs = src.discover()
    assert [r.scene_id for r in refs] == ["scene_00000_room_485142"]
    scene = src.load(refs[0])
    assert len(scene.points) == fx.H * fx.W - 1 - 3 * fx.H
    assert (scene.points.segment == 4).all()
    kept = Structured3DSource(tmp_path, keep_unlabelled=True, skip_errata=False)
    assert [r.scene_id for r in kept.discover()] == ["scene_00000_room_485142", "scene_01155_room_1"]
    assert len(kept.load(kept.discover()[0]).points) == fx.H * fx.W - 1


def test_error_branches_name_the_file(tmp_path):
    d = _position(tmp_path, "scene_00000", "485142", "0", EYE_MM, TOWARDS, UP)
    src = Structured3DSource(tmp_path)

    def fails(pattern):
        with pytest.raises(SourceError, match=pattern):
            src.load(src.discover()[0])

    cam = d / "camera_pose.txt"
    good = cam.read_text()
    cam.write_text("1 2 3 4 5\n")
    fails(r"full/0/camera_pose\.txt.*expected 'vx vy vz tx ty tz ux uy uz xfov yfov 1', got 5 numbers")
    cam.write_text(" ".join(f"{x}" for x in [*EYE_MM, *TOWARDS, *UP, 2.0, YFOV, 1]))
    fails(r"camera_pose\.txt.*fov half-angles must be in \(0, pi/2\)")
    cam.write_text(" ".join(f"{x}" for x in [*EYE_MM, *UP, *UP, XFOV, YFOV, 1]))
    fails(r"camera_pose\.txt.*view and up directions are parallel")
    cam.write_text(good)
    fx.write_png16(d / "depth.png", np.ones((4, 4), np.uint16))
    fails(r"full/0/depth\.png.*depth is \[4, 4\], colour is \[24, 32\]")
    fx.write_png_rgb(d / "depth.png", fx.gradient_rgb())
    fails(r"depth\.png.*depth image must have one channel")
    fx.write_png16(d / "depth.png", np.full((fx.H, fx.W), 2500, np.uint16))
    fx.write_png_rgb(d / "semantic.png", np.zeros((3, 3, 3), np.uint8))
    fails(r"semantic\.png.*semantic is \[3, 3\], depth is \[24, 32\]")
    (d / "semantic.png").unlink()
    (d / "rgb_rawlight.png").unlink()
    fails(r"full/0/rgb_rawlight\.png.*missing file")
