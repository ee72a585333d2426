"""ScanNet++ adapter on a tiny fixture (COLMAP images.txt / cameras.txt,
nerfstudio transforms_undistorted.json, JPEG DSLR images, PLY mesh, segments)."""
import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from preprocess.sources import SourceError, make_source
from preprocess.sources.scannetpp import ScanNetPPSource
from testkit import dataset_files as fx

SCENE = "0a5c013435"


def colmap_line(image_id, pose_c2w, name):
    w2c = np.linalg.inv(pose_c2w)
    qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
    t = w2c[:3, 3]
    return f"{image_id} {qw} {qx} {qy} {qz} {t[0]} {t[1]} {t[2]} 1 {name}"


def _scene(root, sid, pose, transforms=True, images=("DSC00010.JPG", "DSC00002.JPG", "DSC00005.JPG")):
    d = root / "data" / sid
    K = fx.make_K()
    X = fx.known_point(pose, K)
    verts, faces = fx.plane_mesh(pose, X)
    fx.write_ply(d / "scans" / "mesh_aligned_0.05.ply", verts, faces, np.full((5, 3), 200, np.uint8))
    (d / "scans" / "segments.json").write_text(json.dumps({"segIndices": [1, 1, 2, 2, 3]}))
    (d / "scans" / "segments_anno.json").write_text(json.dumps(
        {"segGroups": [{"id": 0, "objectId": 5, "segments": [2], "label": "table"}]}))
    colmap = d / "dslr" / "colmap"
    colmap.mkdir(parents=True)
    lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
    for i, name in enumerate(images):
        lines += [colmap_line(i + 1, pose, name), "" if i == 0 else "12.5 3.25 -1 4.0 5.0 17"]
    (colmap / "images.txt").write_text("\n".join(lines) + "\n")
    (colmap / "cameras.txt").write_text("# Camera list\n1 OPENCV_FISHEYE 64 48 40 40 32 24 0.01 0.002 0 0\n")
    if transforms:
        (d / "dslr" / "nerfstudio").mkdir(parents=True)
        (d / "dslr" / "nerfstudio" / "transforms_undistorted.json").write_text(json.dumps({
            "camera_model": "PINHOLE", "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
            "w": fx.W, "h": fx.H, "frames": []}))
    for name in images:
        img = fx.gradient_rgb()
        from PIL import Image

        (d / "dslr" / "undistorted_images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / "dslr" / "undistorted_images" / name, format="JPEG")
    return X


@pytest.fixture()
def dataset(tmp_path):
    X = _scene(tmp_path, SCENE, fx.make_pose())
    _scene(tmp_path, "1ada7a0617", fx.make_pose(axis=(1, 1, 0), angle=-1.2, t=(3, 0, 2)), transforms=False)
    return tmp_path, X


def test_known_point_lands_on_its_pixel(dataset):
    root, X = dataset
    src = make_source("scannetpp", root)
    refs = src.discover()
    assert [r.scene_id for r in refs] == [SCENE, "1ada7a0617"]
    scene = src.load(refs[0])
    scene.validate()
    assert scene.mesh_path.name == "mesh_aligned_0.05.ply"
    assert [f.name for f in scene.frames] == ["DSC00002", "DSC00005", "DSC00010"]
    np.testing.assert_allclose(scene.points.coord[4], X, atol=1e-5)
    np.testing.assert_array_equal(scene.points.instance, [-1, -1, 5, 5, -1])
    for f in scene.frames:
        assert f.depth is None and f.rgb.shape == (fx.H, fx.W, 3)
        u, v, z = fx.project(f.pose, f.K, X)
        assert (u, v, z) == pytest.approx((fx.U0, fx.V0, fx.Z0), abs=1e-3)
    assert [f.name for f in ScanNetPPSource(root, frame_gap=2).load(refs[0]).frames] == ["DSC00002", "DSC00010"]


def test_fisheye_without_undistorted_intrinsics_is_an_error(dataset):
    root, _ = dataset
    src = ScanNetPPSource(root)
    with pytest.raises(SourceError, match=r"1ada7a0617.*cameras\.txt.*OPENCV_FISHEYE.*undistorted"):
        src.load(src.discover()[1])


def test_hash_and_malformed_files(dataset):
    root, _ = dataset
    src = ScanNetPPSource(root)
    refs = src.discover()
    assert refs == src.discover()
    images = root / "data" / SCENE / "dslr" / "colmap" / "images.txt"
    images.write_text(images.read_text().replace("1 DSC00010.JPG", "x DSC00010.JPG"))
    after = src.discover()
    assert after[0].content_hash != refs[0].content_hash and after[1] == refs[1]
    with pytest.raises(SourceError, match=rf"{SCENE}.*images\.txt.*malformed"):
        src.load(after[0])
    images.unlink()
    with pytest.raises(SourceError, match=r"images\.txt.*missing"):
        src.load(src.discover()[0])
    # an image listed in images.txt but not distributed is skipped; none at all is an error
    other = root / "data" / "1ada7a0617" / "dslr"
    (other / "nerfstudio").mkdir()
    (other / "nerfstudio" / "transforms_undistorted.json").write_text(json.dumps(
        {"camera_model": "PINHOLE", "fl_x": 30.0, "fl_y": 28.0, "cx": 15.5, "cy": 11.5, "w": fx.W, "h": fx.H}))
    (other / "undistorted_images" / "DSC00005.JPG").unlink()
    scene = src.load(src.discover()[1])
    assert [f.name for f in scene.frames] == ["DSC00002", "DSC00010"]
    assert scene.meta["skipped_frames"] == ["DSC00005.JPG"]
    for p in (other / "undistorted_images").iterdir():
        p.unlink()
    with pytest.raises(SourceError, match=r"1ada7a0617.*DSC00002\.JPG.*none of the 3 images"):
        src.load(src.discover()[1])


def test_colmap_pinhole_fallback_and_resized_images(tmp_path):
    """No transforms json, a PINHOLE cameras.txt for 2x larger images: COLMAP's
    +0.5 pixel-centre convention and the resize are both undone."""
    pose = fx.make_pose()
    X = _scene(tmp_path, SCENE, pose, transforms=False, images=("DSC00001.JPG",))
    K = fx.make_K()
    # the same camera at 2x resolution, written in COLMAP's convention (pixel centres at +0.5)
    fx2, fy2 = 2 * K[0, 0], 2 * K[1, 1]
    cx2, cy2 = (K[0, 2] + 0.5) * 2, (K[1, 2] + 0.5) * 2
    (tmp_path / "data" / SCENE / "dslr" / "colmap" / "cameras.txt").write_text(
        f"# Camera list\n1 PINHOLE {2 * fx.W} {2 * fx.H} {fx2} {fy2} {cx2} {cy2}\n")
    src = ScanNetPPSource(tmp_path)
    scene = src.load(src.discover()[0])
    f = scene.frames[0]
    np.testing.assert_allclose(f.K, K, atol=1e-5)
    u, v, z = fx.project(f.pose, f.K, X)
    assert (u, v) == pytest.approx((fx.U0, fx.V0), abs=1e-3)


def test_fisheye_images_are_undistorted_here(tmp_path):
    """Only dslr/resized_images (fisheye) + cameras.txt OPENCV_FISHEYE: a bright
    dot drawn where the fisheye model puts pinhole pixel (PU, PV) ends up there."""
    PU, PV = 27, 19
    pose = fx.make_pose()
    X = _scene(tmp_path, SCENE, pose, transforms=False, images=("DSC00001.JPG",))
    dslr = tmp_path / "data" / SCENE / "dslr"
    (dslr / "undistorted_images" / "DSC00001.JPG").unlink()
    (dslr / "undistorted_images").rmdir()
    K = fx.make_K()
    k = [-0.05, 0.01, 0.0, 0.0]  # a strong fisheye: theta_d well below tan(theta)
    (dslr / "colmap" / "cameras.txt").write_text(
        f"1 OPENCV_FISHEYE {fx.W} {fx.H} {K[0, 0]} {K[1, 1]} {K[0, 2] + 0.5} {K[1, 2] + 0.5} {k[0]} {k[1]} {k[2]} {k[3]}\n")
    # equidistant fisheye (OpenCV): theta_d = theta (1 + k1 theta^2 + k2 theta^4 + ...)
    x, y = (PU - K[0, 2]) / K[0, 0], (PV - K[1, 2]) / K[1, 1]
    r = np.hypot(x, y)
    th = np.arctan(r)
    thd = th * (1 + k[0] * th ** 2 + k[1] * th ** 4)
    us, vs = K[0, 0] * x * thd / r + K[0, 2], K[1, 1] * y * thd / r + K[1, 2]
    assert abs(us - PU) > 0.5  # the distortion moves the dot noticeably
    img = np.zeros((fx.H, fx.W, 3), np.uint8)
    yy, xx = np.mgrid[0:fx.H, 0:fx.W]
    img[(xx - us) ** 2 + (yy - vs) ** 2 < 1.6] = 255
    from PIL import Image

    (dslr / "resized_images").mkdir()
    Image.fromarray(img).save(dslr / "resized_images" / "DSC00001.JPG", format="PNG")
    src = ScanNetPPSource(tmp_path)
    scene = src.load(src.discover()[0])
    f = scene.frames[0]
    assert scene.meta["undistorted_here"]
    np.testing.assert_allclose(f.K, K, atol=1e-5)
    g = f.rgb[..., 0].astype(float)
    cy, cx = (g * yy).sum() / g.sum(), (g * xx).sum() / g.sum()
    assert (cx, cy) == pytest.approx((PU, PV), abs=0.35)
    u, v, _ = fx.project(f.pose, f.K, X)
    assert (u, v) == pytest.approx((fx.U0, fx.V0), abs=1e-3)


def test_anonymisation_masks_get_no_depth_so_no_correspondences(tmp_path):
    """The toolkit's undistort.py writes undistorted_anon_masks/<stem>.png (255 =
    keep, 0 = masked). Masked pixels of a rendered frame get NaN depth."""
    from PIL import Image

    from pipelines.correspondence import frame_correspondence
    from preprocess.render.complete_depth import complete_depth

    X = _scene(tmp_path, SCENE, fx.make_pose(), images=("DSC00001.JPG", "DSC00002.JPG"))
    masks = tmp_path / "data" / SCENE / "dslr" / "undistorted_anon_masks"
    masks.mkdir()
    m = np.full((fx.H, fx.W), 255, np.uint8)
    m[fx.V0 - 2:fx.V0 + 3, fx.U0 - 2:fx.U0 + 3] = 0  # a blurred face over the known point
    Image.fromarray(m).save(masks / "DSC00001.png")
    Image.fromarray(np.full((fx.H, fx.W), 255, np.uint8)).save(masks / "DSC00002.png")
    src = ScanNetPPSource(tmp_path)
    scene = src.load(src.discover()[0])
    assert list(scene.meta["invalid_pixels"]) == ["DSC00001"]  # an all-255 mask masks nothing
    assert scene.meta["invalid_pixels"]["DSC00001"].sum() == 25
    done = complete_depth(scene)
    masked, clear = done.frames
    assert np.isnan(masked.depth[fx.V0, fx.U0]) and np.isfinite(masked.depth).sum() == fx.H * fx.W - 25
    assert clear.depth[fx.V0, fx.U0] == pytest.approx(fx.Z0, abs=1e-3)
    x = X[None].astype(np.float32)
    assert len(frame_correspondence(x, masked)) == 0 and len(frame_correspondence(x, clear)) == 1
    assert ScanNetPPSource(tmp_path, use_masks=False).load(src.discover()[0]).meta["invalid_pixels"] == {}
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(masks / "DSC00002.png")
    with pytest.raises(SourceError, match=r"DSC00002\.png.*mask is 5x5"):
        src.load(src.discover()[0])


def test_error_branches_name_the_file(tmp_path):
    _scene(tmp_path, SCENE, fx.make_pose(), transforms=False, images=("DSC00001.JPG",))
    dslr = tmp_path / "data" / SCENE / "dslr"
    scans = tmp_path / "data" / SCENE / "scans"
    src = ScanNetPPSource(tmp_path)

    def fails(pattern):
        with pytest.raises(SourceError, match=pattern):
            src.load(src.discover()[0])

    cams = dslr / "colmap" / "cameras.txt"
    cams.write_text("1 RADIAL 32 24 30 15.5 11.5 0.1 0.2\n")
    fails(r"cameras\.txt.*unsupported camera model RADIAL")
    cams.write_text("1 PINHOLE 32 24 30 28\n")
    fails(r"cameras\.txt.*PINHOLE takes 4 parameters, got 2")
    cams.write_text("1 PINHOLE w 24 30 28 15 11\n")
    fails(r"cameras\.txt.*malformed camera line")
    cams.write_text("2 PINHOLE 32 24 30 28 15 11\n")
    fails(r"cameras\.txt.*no camera 1 \(used by DSC00001\.JPG\)")
    (dslr / "nerfstudio").mkdir()
    tr = dslr / "nerfstudio" / "transforms_undistorted.json"
    tr.write_text(json.dumps({"camera_model": "OPENCV_FISHEYE", "fl_x": 1, "fl_y": 1, "cx": 1, "cy": 1, "w": 32, "h": 24}))
    fails(r"transforms_undistorted\.json.*camera_model is OPENCV_FISHEYE, expected PINHOLE")
    tr.write_text(json.dumps({"fl_x": 1}))
    fails(r"transforms_undistorted\.json.*malformed transforms json")
    tr.unlink()
    cams.write_text("1 PINHOLE 32 24 30 28 15 11\n")
    (scans / "segments.json").write_text(json.dumps({"segIndices": [1, 2]}))
    fails(r"segments\.json.*segIndices has 2 entries, mesh has 5 vertices")
    (scans / "segments.json").write_text(json.dumps({"segIndices": [1] * 5}))
    (scans / "segments_anno.json").write_text(json.dumps({"segGroups": [{"segments": [1]}]}))
    fails(r"segments_anno\.json.*malformed annotation json")
