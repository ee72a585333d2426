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


def test_frame_gap(dataset):
    root, _, _ = dataset
    src = ScanNetSource(root, frame_gap=2)
    scene = src.load(next(r for r in src.discover() if r.scene_id == "scene0000_00"))
    assert [f.name for f in scene.frames] == ["0", "2"]
    src3 = ScanNetSource(root, frame_gap=3)
    assert [f.name for f in src3.load(src3.discover()[0]).frames] == ["0"]


def test_discovery_hashes_are_stable_and_change_with_files(dataset):
    root, _, _ = dataset
    src = ScanNetSource(root)
    refs = src.discover()
    assert [r.scene_id for r in refs] == ["scene0000_00", "scene0001_00"]
    assert refs == ScanNetSource(root).discover()
    assert ScanNetSource(root, frame_gap=2).discover()[0].content_hash != refs[0].content_hash
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
    with pytest.raises(ValueError, match="frame_gap"):
        ScanNetSource(tmp_path, frame_gap=0)
    with pytest.raises(ValueError, match="not a directory"):
        ScanNetSource(tmp_path / "nope")


def test_scannet200_labels_from_the_aggregation_and_the_label_map(dataset):
    """ScanNet's scannetv2-labels.combined.tsv maps a group's raw label to a
    category id; ScanNet200 keeps 200 of them (wall id 1 -> class 0, chair id 2 ->
    class 1, 'plant' id 25 is not one of the 200 -> -1)."""
    root, _, _ = dataset
    (root / "scannetv2-labels.combined.tsv").write_text(
        "id\traw_category\tcategory\tcount\tnyu40id\n1\twall\twall\t8277\t1\n2\tchair\tchair\t4646\t5\n"
        "25\tplant\tplant\t331\t40\n")
    agg = root / "scans" / "scene0000_00" / "scene0000_00.aggregation.json"
    agg.write_text(json.dumps({"segGroups": [{"id": 0, "objectId": 0, "segments": [7], "label": "wall"},
                                             {"id": 1, "objectId": 1, "segments": [9], "label": "chair"},
                                             {"id": 2, "objectId": 2, "segments": [8], "label": "plant"}]}))
    src = ScanNetSource(root, labels="scannet200")
    scene = src.load(src.discover()[0])
    np.testing.assert_array_equal(scene.points.segment, [0, 0, -1, -1, 1])
    np.testing.assert_array_equal(scene.points.instance, [0, 0, 2, 2, 1])
    (root / "scannetv2-labels.combined.tsv").write_text("just\ta header\n")
    with pytest.raises(SourceError, match=r"scannetv2-labels\.combined\.tsv.*'id' and 'raw_category'"):
        src.load(src.discover()[0])


# --------------------------------------------------------------------------- .sens variants and errors


def _sens_scene(root, frames=None, **sens_kwargs):
    """A scene whose .sens is written with the given SensorData settings."""
    pose = fx.make_pose()
    K = fx.make_K()
    X = fx.known_point(pose, K)
    d = root / "scans" / "scene0007_00"
    verts, faces = fx.plane_mesh(pose, X)
    fx.write_ply(d / "scene0007_00_vh_clean_2.ply", verts, faces, np.full((5, 3), 9, np.uint8))
    depth_mm = np.full(COLOR_HW, int(fx.Z0 * 1000), np.uint16)
    frames = frames or [{"pose": pose, "rgb": fx.gradient_rgb(), "depth_mm": depth_mm}]
    fx.write_sens(d / "scene0007_00.sens", frames, K, K, COLOR_HW, COLOR_HW, **sens_kwargs)
    return ScanNetSource(root, use_sensor_depth=True), d / "scene0007_00.sens"


def _load(src):
    return src.load(src.discover()[0])


def test_raw_colour_and_raw_ushort_depth_are_read(tmp_path):
    src, _ = _sens_scene(tmp_path, color_compression=0, depth_compression=0)
    (f,) = _load(src).frames
    np.testing.assert_array_equal(f.rgb, fx.gradient_rgb())  # raw: byte exact
    assert f.depth[fx.V0, fx.U0] == pytest.approx(fx.Z0)


def test_png_colour_is_read(tmp_path):
    src, _ = _sens_scene(tmp_path, color_compression=1)
    np.testing.assert_array_equal(_load(src).frames[0].rgb, fx.gradient_rgb())


@pytest.mark.parametrize("case,kwargs,frame_extra,pattern", [
    ("version", {"version": 3}, {}, r"unsupported \.sens version 3 \(expected 4\)"),
    ("colour compression", {"color_compression": 7}, {}, r"unknown compression types \(colour 7, depth 1\)"),
    ("depth compression", {"depth_compression": 9}, {}, r"unknown compression types \(colour 2, depth 9\)"),
    ("unknown colour", {"color_compression": -1}, {}, r"frame 0 colour.*unsupported colour compression 'unknown'"),
    ("occi depth", {"depth_compression": 2}, {}, r"frame 0 depth.*unsupported depth compression 'occi_ushort'"),
    ("raw colour size", {"color_compression": 0}, {"color_bytes": b"\x01" * 100},
     r"frame 0 colour.*raw colour has 100 bytes, expected 2304"),
    ("raw depth size", {"depth_compression": 0}, {"depth_bytes": b"\x01\x02" * 10},
     r"frame 0 depth.*depth has 20 bytes, expected 1536"),
    ("corrupt zlib", {}, {"depth_bytes": b"not zlib at all"}, r"frame 0 depth.*corrupt zlib depth"),
    ("colour size", {}, {"color_bytes": fx.jpeg_bytes(fx.gradient_rgb(w=16, h=8))},
     r"frame 0 colour.*colour image is \(8, 16\), header says \(24, 32\)"),
    ("undecodable colour", {}, {"color_bytes": b"\xff\xd8 not a jpeg"}, r"frame 0 colour.*cannot decode image"),
])
def test_sens_errors_name_scene_file_and_frame(tmp_path, case, kwargs, frame_extra, pattern):
    frame = {"pose": fx.make_pose(), "rgb": fx.gradient_rgb(),
             "depth_mm": np.full(COLOR_HW, 2500, np.uint16), **frame_extra}
    src, sens = _sens_scene(tmp_path, frames=[frame], **kwargs)
    with pytest.raises(SourceError, match=r"scene0007_00.*scene0007_00\.sens.*" + pattern):
        _load(src)


def test_label_and_segment_count_mismatches_are_named(dataset):
    root, _, _ = dataset
    d = root / "scans" / "scene0000_00"
    verts = np.zeros((3, 3))
    fx.write_ply(d / "scene0000_00_vh_clean_2.labels.ply", verts, None, None, extra={"label": ("ushort", np.ones(3))})
    src = ScanNetSource(root)
    with pytest.raises(SourceError, match=r"scene0000_00_vh_clean_2\.labels\.ply.*3 labels for 5 mesh vertices"):
        src.load(src.discover()[0])
    fx.write_ply(d / "scene0000_00_vh_clean_2.labels.ply", np.zeros((5, 3)), None, None, extra={"nyu": ("ushort", np.ones(5))})
    with pytest.raises(SourceError, match=r"labels\.ply.*no per-vertex 'label' property"):
        src.load(src.discover()[0])
    (d / "scene0000_00_vh_clean_2.labels.ply").unlink()
    (d / "scene0000_00_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": [1, 2]}))
    with pytest.raises(SourceError, match=r"segs\.json.*segIndices has 2 entries, mesh has 5 vertices"):
        src.load(src.discover()[0])
    (d / "scene0000_00_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": [1] * 5}))
    (d / "scene0000_00.aggregation.json").write_text(json.dumps({"segGroups": [{"id": 0}]}))
    with pytest.raises(SourceError, match=r"aggregation\.json.*malformed aggregation json"):
        src.load(src.discover()[0])
    with pytest.raises(ValueError, match="scannet200"):
        ScanNetSource(root, labels="scannet100")
