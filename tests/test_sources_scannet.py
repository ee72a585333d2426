"""ScanNet adapter on a tiny fixture in ScanNet's real formats (.sens with JPEG
colour and zlib depth, binary PLY mesh, labels PLY, segs/aggregation json)."""
import json
import os

import numpy as np
import pytest

from preprocess.sources import SourceError, make_source
from preprocess.sources.scannet import SCANNET20_NYU40_IDS, ScanNetSource
from testkit import dataset_files as fx

COLOR_HW = (fx.H, fx.W)
DEPTH_HW = (12, 16)


def _write_scene(root, scene_id, pose, with_labels=True):
    d = root / "scans" / scene_id
    K_color = fx.make_K()
    K_depth = fx.make_K(fx=15.0, fy=14.0, cx=7.5, cy=5.5)
    X = fx.known_point(pose, K_color)
    verts, faces = fx.plane_mesh(pose, X)
    colors = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90], [100, 110, 120], [200, 100, 50]], np.uint8)
    fx.write_ply(d / f"{scene_id}_vh_clean_2.ply", verts, faces, colors)
    if with_labels:
        nyu = np.array([1, 2, 13, 39, 0], np.uint16)
        fx.write_ply(d / f"{scene_id}_vh_clean_2.labels.ply", verts, faces, colors, extra={"label": ("ushort", nyu)})
        (d / f"{scene_id}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": [7, 7, 8, 8, 9]}))
        (d / f"{scene_id}.aggregation.json").write_text(json.dumps(
            {"segGroups": [{"id": 0, "objectId": 0, "segments": [7], "label": "wall"},
                           {"id": 1, "objectId": 1, "segments": [9], "label": "chair"}]}))
    bad = np.full((4, 4), -np.inf)
    depth_mm = np.full(DEPTH_HW, int(fx.Z0 * 1000), np.uint16)
    depth_mm[0, 0] = 0  # a pixel without a reading
    frames = [
        {"pose": pose, "rgb": fx.gradient_rgb(seed=0), "depth_mm": depth_mm},
        {"pose": bad, "rgb": fx.gradient_rgb(seed=1), "depth_mm": depth_mm},
        {"pose": pose, "rgb": fx.gradient_rgb(seed=2), "depth_mm": depth_mm},
    ]
    fx.write_sens(d / f"{scene_id}.sens", frames, K_color, K_depth, COLOR_HW, DEPTH_HW)
    return X, K_color


@pytest.fixture()
def dataset(tmp_path):
    pose = fx.make_pose()
    X, K = _write_scene(tmp_path, "scene0000_00", pose)
    _write_scene(tmp_path, "scene0001_00", fx.make_pose(axis=(0, 1, 0), angle=-0.4, t=(0, 0, 1)), with_labels=False)
    return tmp_path, X, K


def test_known_point_lands_on_its_pixel(dataset):
    root, X, K = dataset
    src = make_source("scannet", root)
    assert isinstance(src, ScanNetSource)
    ref = next(r for r in src.discover() if r.scene_id == "scene0000_00")
    scene = src.load(ref)
    scene.validate()
    assert scene.key == "scannet/scene0000_00"
    assert scene.mesh_path.name == "scene0000_00_vh_clean_2.ply"
    assert [f.name for f in scene.frames] == ["0", "2"]  # frame 1 has a -inf pose
    assert scene.meta["skipped_frames"] == ["1"]
    np.testing.assert_allclose(scene.points.coord[4], X, atol=1e-5)
    for frame in scene.frames:
        assert frame.depth is None  # rendered later from the mesh
        assert frame.rgb.shape == (fx.H, fx.W, 3)
        np.testing.assert_allclose(frame.K, K, atol=1e-6)
        u, v, z = fx.project(frame.pose, frame.K, scene.points.coord[4].astype(np.float64))
        assert abs(u - fx.U0) < 1e-2 and abs(v - fx.V0) < 1e-2
        assert abs(z - fx.Z0) < 1e-4
    # the JPEG colour survived: red ramps left to right
    assert scene.frames[0].rgb[5, -1, 0] > scene.frames[0].rgb[5, 0, 0] + 150


def test_labels_and_instances(dataset):
    root, _, _ = dataset
    src = ScanNetSource(root)
    scene = src.load(next(r for r in src.discover() if r.scene_id == "scene0000_00"))
    assert SCANNET20_NYU40_IDS[19] == 39
    np.testing.assert_array_equal(scene.points.segment, [0, 1, -1, 19, -1])
    np.testing.assert_array_equal(scene.points.instance, [0, 0, -1, -1, 1])
    assert scene.points.segment.dtype == np.int32
    assert scene.points.color.dtype == np.uint8 and tuple(scene.points.color[4]) == (200, 100, 50)
    # normals from the mesh faces face the camera (against the optical axis)
    axis = scene.frames[0].pose[:3, 2]
    assert (scene.points.normal @ axis < -0.99).all() or (scene.points.normal @ axis > 0.99).all()
    unlabelled = src.load(next(r for r in src.discover() if r.scene_id == "scene0001_00"))
    assert unlabelled.points.segment is None and unlabelled.points.instance is None


def test_sensor_depth_is_reprojected_into_the_colour_camera(dataset):
    root, X, _ = dataset
    src = ScanNetSource(root, use_sensor_depth=True)
    scene = src.load(next(r for r in src.discover() if r.scene_id == "scene0000_00"))
    scene.validate(require_depth=True)
    d = scene.frames[0].depth
    assert d.shape == (fx.H, fx.W) and d.dtype == np.float32
    assert d[fx.V0, fx.U0] == pytest.approx(fx.Z0, abs=1e-4)
    assert np.isnan(d).mean() < 0.1  # the 16x12 sensor covers the colour view
    assert (d[np.isfinite(d)] > 0).all()


def test_frame_skip(dataset):
    root, _, _ = dataset
    src = ScanNetSource(root, frame_skip=2)
    scene = src.load(next(r for r in src.discover() if r.scene_id == "scene0000_00"))
    assert [f.name for f in scene.frames] == ["0", "2"]
    src3 = ScanNetSource(root, frame_skip=3)
    assert [f.name for f in src3.load(src3.discover()[0]).frames] == ["0"]


def test_discovery_hashes_are_stable_and_change_with_files(dataset):
    root, _, _ = dataset
    src = ScanNetSource(root)
    refs = src.discover()
    assert [r.scene_id for r in refs] == ["scene0000_00", "scene0001_00"]
    assert refs == ScanNetSource(root).discover()
    assert ScanNetSource(root, frame_skip=2).discover()[0].content_hash != refs[0].content_hash
    assert ScanNetSource(root, hash_mode="content").discover() == ScanNetSource(root, hash_mode="content").discover()
    agg = root / "scans" / "scene0000_00" / "scene0000_00.aggregation.json"
    agg.write_text(agg.read_text() + " ")
    after = src.discover()
    assert after[0].content_hash != refs[0].content_hash
    assert after[1].content_hash == refs[1].content_hash


def test_missing_and_corrupt_files_name_scene_and_file(dataset):
    root, _, _ = dataset
    src = ScanNetSource(root)
    ref = src.discover()[0]
    sens = root / "scans" / "scene0000_00" / "scene0000_00.sens"
    data = sens.read_bytes()
    sens.write_bytes(data[: len(data) - 100])
    with pytest.raises(SourceError, match=r"scene0000_00.*scene0000_00\.sens.*truncated"):
        src.load(ref)
    os.remove(sens)
    with pytest.raises(SourceError) as err:
        src.load(ref)
    assert err.value.scene == "scannet/scene0000_00" and err.value.what.endswith("scene0000_00.sens")
    mesh = root / "scans" / "scene0001_00" / "scene0001_00_vh_clean_2.ply"
    mesh.write_bytes(b"ply\nformat garbage\n")
    with pytest.raises(SourceError, match=r"scene0001_00_vh_clean_2\.ply"):
        src.load(src.discover()[1])


def test_bad_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown option"):
        ScanNetSource(tmp_path, frame_skp=2)
    with pytest.raises(ValueError, match="frame_skip"):
        ScanNetSource(tmp_path, frame_skip=0)
    with pytest.raises(ValueError, match="not a directory"):
        ScanNetSource(tmp_path / "nope")
