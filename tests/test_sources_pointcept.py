"""Pointcept/Concerto preprocessed layout: reading it, and the round trip
export_pointcept -> pointcept source."""
import json

import numpy as np
import pytest

from preprocess.records import Correspondence, ProcessedScene
from preprocess.scene import Frame, PointCloud, Scene
from preprocess.sources import SourceError, make_source
from preprocess.sources.pointcept import PointceptSource, export_pointcept
from testkit import dataset_files as fx


def _write_pointcept_scannet(root, scene_id="scene0000_00", split="train"):
    """What Pointcept's concerto/scannet/preprocess_scannet.py writes (with -p -c)."""
    pose = fx.make_pose()
    K = fx.make_K()
    X = fx.known_point(pose, K)
    verts, _ = fx.plane_mesh(pose, X)
    pc = root / split / scene_id
    pc.mkdir(parents=True)
    np.save(pc / "coord.npy", verts.astype(np.float32))
    np.save(pc / "color.npy", np.arange(15, dtype=np.uint8).reshape(5, 3))
    np.save(pc / "normal.npy", np.tile(-pose[:3, 2], (5, 1)).astype(np.float32))
    np.save(pc / "segment20.npy", np.array([0, 1, -1, 19, -1], np.int64))
    np.save(pc / "segment200.npy", np.array([5, 6, -1, 7, -1], np.int64))
    np.save(pc / "instance.npy", np.array([0, 0, -1, -1, 1], np.int64))
    img = root / "images" / split / scene_id
    K4 = np.eye(4, dtype=np.float32)
    K4[:3, :3] = K
    (img / "intrinsic").mkdir(parents=True)
    np.save(img / "intrinsic" / "intrinsic.npy", K4)
    (img / "pose").mkdir()
    (img / "correspondence").mkdir()
    for idx in (0, 75, 150):
        fx.write_png_rgb(img / "color" / f"{idx}.png", fx.gradient_rgb(seed=idx))
        fx.write_png16(img / "depth" / f"{idx}.png", np.full((fx.H, fx.W), int(fx.Z0 * 1000), np.uint16))
        np.save(img / "pose" / f"{idx}.npy", pose.astype(np.float32))
        corr = np.array([[fx.U0, fx.V0, 4], [0, 0, 0]], np.float64) if idx != 150 else -np.ones((1, 3))
        np.save(img / "correspondence" / f"{idx}.npy", corr)
    return X


def test_reads_pointcept_scannet_output(tmp_path):
    X = _write_pointcept_scannet(tmp_path)
    src = make_source("pointcept", tmp_path, name="scannet_pc")
    refs = src.discover()
    assert [r.scene_id for r in refs] == ["scene0000_00"]
    scene = src.load(refs[0])
    scene.validate(require_depth=True)
    assert scene.key == "scannet_pc/scene0000_00" and scene.meta["split"] == "train"
    assert [f.name for f in scene.frames] == ["0", "75", "150"]  # numeric order, not lexical
    np.testing.assert_array_equal(scene.points.segment, [0, 1, -1, 19, -1])  # segment20 preferred
    np.testing.assert_array_equal(scene.points.instance, [0, 0, -1, -1, 1])
    for f in scene.frames:
        u, v, z = fx.project(f.pose, f.K, X)
        assert abs(u - fx.U0) < 1e-2 and abs(v - fx.V0) < 1e-2
        assert f.depth[fx.V0, fx.U0] == pytest.approx(z, abs=1e-3)
    corr = scene.meta["correspondences"]
    assert len(corr["150"]) == 0
    c = corr["0"]
    assert c.point_index.dtype == np.int32 and c.pixel.dtype == np.uint16
    assert c.pixel[0].tolist() == [fx.U0, fx.V0] and c.point_index[0] == 4
    assert [f.name for f in PointceptSource(tmp_path, frame_gap=2).load(refs[0]).frames] == ["0", "150"]
    assert PointceptSource(tmp_path, segment_key="segment200").load(refs[0]).points.segment.tolist() == [5, 6, -1, 7, -1]


def test_nested_structured3d_style_scene_and_arkit_style_names(tmp_path):
    pose, K = fx.make_pose(), fx.make_K()
    X = fx.known_point(pose, K)
    pc = tmp_path / "val" / "scene_03001" / "room_7"
    pc.mkdir(parents=True)
    np.save(pc / "coord.npy", fx.plane_mesh(pose, X)[0].astype(np.float32))
    img = tmp_path / "images" / "val" / "scene_03001" / "room_7"
    fx.write_png_rgb(img / "color" / "prsp" / "0.png", fx.gradient_rgb())
    fx.write_png_rgb(img / "color" / "pano" / "0.png", fx.gradient_rgb(w=64, h=32))
    (img / "pose").mkdir(parents=True)
    (img / "intrinsic").mkdir()
    np.save(img / "pose" / "0.npy", pose)
    np.save(img / "intrinsic" / "0.npy", K)
    (img / "correspondence" / "prsp_correspondence").mkdir(parents=True)
    np.save(img / "correspondence" / "prsp_correspondence" / "0.npy", np.array([[fx.U0, fx.V0, 4]], np.int32))
    src = PointceptSource(tmp_path)
    scene = src.load(src.discover()[0])
    assert scene.scene_id == "scene_03001_room_7"
    assert [f.name for f in scene.frames] == ["prsp/0"]  # the panorama is skipped
    assert scene.frames[0].depth is None
    assert scene.meta["correspondences"]["prsp/0"].point_index.tolist() == [4]
    assert scene.points.color.dtype == np.uint8 and np.isfinite(scene.points.normal).all()


def _synthetic_scene():
    pose, K = fx.make_pose(), fx.make_K()
    X = fx.known_point(pose, K)
    verts, faces = fx.plane_mesh(pose, X)
    depth = np.full((fx.H, fx.W), fx.Z0, np.float32)
    depth[0, :5] = np.nan
    frames = [Frame(name=str(i), rgb=fx.gradient_rgb(seed=i), K=K.astype(np.float32), pose=pose.astype(np.float32),
                    depth=depth.copy()) for i in range(5)]
    pts = PointCloud(coord=verts.astype(np.float32), color=np.full((5, 3), 7, np.uint8),
                     normal=np.tile(np.float32([0, 0, 1]), (5, 1)), segment=np.array([3, -1, 2, 2, 0], np.int32),
                     instance=np.array([-1, 1, 1, 2, 2], np.int32))
    return Scene("scene0042_00", "scannet", pts, frames, content_hash="abc").validate(), X


def test_round_trip_export_then_read(tmp_path):
    scene, X = _synthetic_scene()
    corrs = [Correspondence(np.array([4, 0], np.int32), np.array([[fx.U0, fx.V0], [3, 1]], np.uint16)),
             Correspondence.empty(), Correspondence(np.array([2], np.int32), np.array([[31, 23]], np.uint16)),
             Correspondence.empty()]
    processed = ProcessedScene(scene.replace(frames=scene.frames[:4]), corrs, np.array([[0, 1, 2, 3]], np.int32))
    pc_dir = export_pointcept(processed, tmp_path / "out", split="val", path_prefix="data/mine")
    assert pc_dir == tmp_path / "out" / "val" / "scene0042_00"
    split = json.loads((tmp_path / "out" / "splits" / "val.json").read_text())
    assert list(split) == ["scene0042_00_0"]
    assert split["scene0042_00_0"]["pointclouds"] == "data/mine/val/scene0042_00"
    assert split["scene0042_00_0"]["images"][2] == "data/mine/images/val/scene0042_00/color/2.png"

    back = PointceptSource(tmp_path / "out").load(PointceptSource(tmp_path / "out").discover()[0])
    back.validate(require_depth=True)
    np.testing.assert_array_equal(back.points.coord, scene.points.coord)
    np.testing.assert_array_equal(back.points.color, scene.points.color)
    np.testing.assert_array_equal(back.points.normal, scene.points.normal)
    np.testing.assert_array_equal(back.points.segment, scene.points.segment)
    np.testing.assert_array_equal(back.points.instance, scene.points.instance)
    assert [f.name for f in back.frames] == ["0", "1", "2", "3"]
    for a, b in zip(scene.frames, back.frames):
        np.testing.assert_array_equal(a.rgb, b.rgb)  # PNG is lossless
        np.testing.assert_allclose(a.K, b.K)
        np.testing.assert_allclose(a.pose, b.pose, atol=1e-6)
        np.testing.assert_array_equal(np.isnan(a.depth), np.isnan(b.depth))
        np.testing.assert_allclose(a.depth[~np.isnan(a.depth)], b.depth[~np.isnan(b.depth)], atol=5e-4)
    got = back.meta["correspondences"]
    for i, c in enumerate(corrs):
        np.testing.assert_array_equal(got[str(i)].point_index, c.point_index)
        np.testing.assert_array_equal(got[str(i)].pixel, c.pixel)
    u, v, _ = fx.project(back.frames[0].pose, back.frames[0].K, X)
    assert abs(u - fx.U0) < 1e-2 and abs(v - fx.V0) < 1e-2

    # a plain Scene (no segments): frames grouped by 4, as Pointcept's splits.py does
    export_pointcept(scene, tmp_path / "out", split="val")
    split = json.loads((tmp_path / "out" / "splits" / "val.json").read_text())
    assert sorted(split) == ["scene0042_00_0", "scene0042_00_1"]
    assert len(split["scene0042_00_1"]["images"]) == 1


def test_hash_changes_and_bad_files(tmp_path):
    _write_pointcept_scannet(tmp_path)
    src = PointceptSource(tmp_path)
    h0 = src.discover()[0].content_hash
    assert src.discover()[0].content_hash == h0
    pose_file = tmp_path / "images" / "train" / "scene0000_00" / "pose" / "75.npy"
    np.save(pose_file, np.eye(4, dtype=np.float32) * 2)  # not rigid
    assert src.discover()[0].content_hash != h0
    with pytest.raises(SourceError, match=r"scene0000_00.*75\.npy.*rigid"):
        src.load(src.discover()[0])
    pose_file.unlink()
    with pytest.raises(SourceError, match=r"75\.npy.*missing pose"):
        src.load(src.discover()[0])
    (tmp_path / "train" / "scene0000_00" / "coord.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(SourceError, match=r"scene0000_00.*coord\.npy"):
        src.load(src.discover()[0])


def test_sensor_sized_depth_next_to_full_size_colour_is_not_used(tmp_path):
    """Pointcept's ScanNet output: 1296x968 colour with 640x480 sensor depth."""
    _write_pointcept_scannet(tmp_path)
    fx.write_png16(tmp_path / "images/train/scene0000_00/depth/75.png", np.full((12, 16), 2500, np.uint16))
    src = PointceptSource(tmp_path)
    scene = src.load(src.discover()[0])
    assert [f.depth is None for f in scene.frames] == [False, True, False]
    assert scene.meta["depth_size_mismatch"] == ["75"]


# --------------------------------------------------------------------------- Concerto's own layouts
from testkit import concerto_layouts as cl  # noqa: E402


def _check_camera(frame, K, pose, X):
    np.testing.assert_allclose(frame.K, K, atol=1e-4)
    np.testing.assert_allclose(frame.pose, pose, atol=1e-5)
    u, v, z = fx.project(frame.pose, frame.K, X)
    assert abs(u - fx.U0) < 1e-3 and abs(v - fx.V0) < 1e-3 and z == pytest.approx(fx.Z0, abs=1e-4)


def test_concerto_scannetpp_index_named_poses_and_colmap_K(tmp_path):
    cams = cl.write_concerto_scannetpp(tmp_path)
    src = PointceptSource(tmp_path)
    scene = src.load(src.discover()[0])
    assert scene.meta["layout"] == "scannetpp"
    assert [f.name for f in scene.frames] == [c[0] for c in cams]  # DSC00007, DSC00010, DSC00120
    for f, (_, K, pose, X) in zip(scene.frames, cams):
        _check_camera(f, K, pose, X)  # K: COLMAP's +0.5 removed
    assert scene.meta["correspondences"]["DSC00120"].point_index.tolist() == [2]
    assert [f.name for f in PointceptSource(tmp_path, frame_gap=2).load(src.discover()[0]).frames] == ["DSC00007", "DSC00120"]


def test_concerto_structured3d_mirrored_world_and_shifted_indices(tmp_path):
    cams = cl.write_concerto_structured3d(tmp_path)
    src = PointceptSource(tmp_path)
    scene = src.load(src.discover()[0])
    assert scene.meta["layout"] == "structured3d"
    assert [f.name for f in scene.frames] == ["prsp/0"]
    assert scene.meta["skipped_frames"] == ["prsp/1"]  # its camera was never saved
    for f, (_, pose, K, X) in zip(scene.frames, cams[:1]):
        _check_camera(f, K, pose, X)  # colour 0 belongs to pose file 1: the shift is undone
        assert np.linalg.det(f.pose[:3, :3]) == pytest.approx(1.0, abs=1e-5)
        # the point cloud is back in the Structured3D world: X is one of its points
        assert np.linalg.norm(scene.points.coord - X, axis=1).min() < 1e-4
    # every stored correspondence lands on its pixel with the recovered camera
    for f in scene.frames:
        c = scene.meta["correspondences"][f.name]
        pts = scene.points.coord[c.point_index].astype(np.float64)
        for p, (u, v) in zip(pts[::50], c.pixel[::50]):
            pu, pv, _ = fx.project(f.pose, f.K, p)
            assert abs(pu - u) < 1e-2 and abs(pv - v) < 1e-2
    assert scene.frames[0].depth[fx.V0, fx.U0] == pytest.approx(fx.Z0)


def test_concerto_structured3d_without_shift(tmp_path):
    cams = cl.write_concerto_structured3d(tmp_path, empty_first_view=False)
    scene = PointceptSource(tmp_path).load(PointceptSource(tmp_path).discover()[0])
    assert [f.name for f in scene.frames] == ["prsp/0", "prsp/1", "prsp/2"] and not scene.meta["skipped_frames"]
    for f, (_, pose, K, X) in zip(scene.frames, cams):
        _check_camera(f, K, pose, X)


def test_concerto_structured3d_shift_without_correspondences_is_named(tmp_path):
    cl.write_concerto_structured3d(tmp_path)
    corr = tmp_path / "images/val/scene_03001/room_7/correspondence/prsp_correspondence/0.npy"
    corr.unlink()
    with pytest.raises(SourceError, match=r"prsp/0\.png.*2 pose files for 2 colour images.*index shift"):
        PointceptSource(tmp_path).load(PointceptSource(tmp_path).discover()[0])


def test_concerto_s3dis_world_to_camera_per_camera_folders(tmp_path):
    cams = cl.write_concerto_s3dis(tmp_path)
    src = PointceptSource(tmp_path)
    refs = src.discover()
    assert [r.scene_id for r in refs] == ["office_1"] and src.load(refs[0]).meta["split"] == "Area_5"
    scene = src.load(refs[0])
    assert scene.meta["layout"] == "s3dis"
    assert [f.name for f in scene.frames] == [c[0] for c in cams]  # frame 2, 10, 31: numeric order
    for f, (_, K, pose, X) in zip(scene.frames, cams):
        _check_camera(f, K, pose, X)
        assert f.depth[fx.V0, fx.U0] == pytest.approx(fx.Z0)  # 2D-3D-S depth, 1/512 m
        assert scene.meta["correspondences"][f.name].pixel[0].tolist() == [fx.U0, fx.V0]


def test_layout_option_is_checked(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        PointceptSource(tmp_path, layout="colmap")


def test_error_branches_name_the_file(tmp_path):
    _write_pointcept_scannet(tmp_path)
    pc = tmp_path / "train" / "scene0000_00"
    img = tmp_path / "images" / "train" / "scene0000_00"
    src = PointceptSource(tmp_path)

    def fails(pattern):
        with pytest.raises(SourceError, match=pattern):
            src.load(src.discover()[0])

    coord = np.load(pc / "coord.npy")
    np.save(pc / "coord.npy", coord[:, :2])
    fails(r"coord\.npy.*expected \[N,3\] coordinates, got shape \[5, 2\]")
    bad = coord.copy()
    bad[0, 0] = np.nan
    np.save(pc / "coord.npy", bad)
    fails(r"coord\.npy.*NaN/inf coordinates")
    np.save(pc / "coord.npy", coord)
    np.save(pc / "color.npy", np.zeros((4, 3), np.uint8))
    fails(r"color\.npy.*expected 5 rows x 3, got shape \[4, 3\]")
    np.save(pc / "color.npy", np.zeros((5, 3), np.uint8))
    np.save(img / "pose" / "75.npy", np.eye(3))
    fails(r"pose/75\.npy.*pose must be \[4,4\], got \[3, 3\]")
    np.save(img / "pose" / "75.npy", fx.make_pose().astype(np.float32))
    np.save(img / "intrinsic" / "intrinsic.npy", np.eye(2))
    fails(r"intrinsic\.npy.*intrinsics must be \[3,3\] or \[4,4\]")
    (img / "intrinsic" / "intrinsic.npy").unlink()
    np.save(img / "intrinsic" / "a.npy", np.eye(3))
    np.save(img / "intrinsic" / "b.npy", np.eye(3))
    fails(r"intrinsic/0\.npy.*missing intrinsics for colour image 0")
    np.save(img / "intrinsic" / "intrinsic.npy", fx.make_K())
    np.save(img / "correspondence" / "0.npy", np.zeros((3, 2)))
    fails(r"correspondence/0\.npy.*must be \[M,3\]")
    np.save(img / "correspondence" / "0.npy", np.array([[fx.U0, fx.V0, 99]]))
    fails(r"correspondence/0\.npy.*out of range")
