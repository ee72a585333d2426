"""The synthetic indoor-room source."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from preprocess.procedural.labeled_ply import LabeledPlyError, read_labeled_ply
from preprocess.procedural.rooms import CLASS_NAMES, dense_room
from preprocess.render.complete_depth import complete_depth
from preprocess.sources import SourceError, make_source

SMALL = dict(num_scenes=2, frames_per_scene=3, image_width=48, image_height=36, points_per_scene=3000)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_per_seed(tmp_path):
    a = make_source("synthetic", tmp_path / "a", seed=3, **SMALL)
    b = make_source("synthetic", tmp_path / "b", seed=3, **SMALL)
    refs_a, refs_b = a.discover(), b.discover()
    assert refs_a == refs_b and len(refs_a) == 2
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert files_a == files_b and len(files_a) == 6
    sa, sb = a.load(refs_a[0]), b.load(refs_b[0])
    np.testing.assert_array_equal(sa.points.coord, sb.points.coord)
    np.testing.assert_array_equal(sa.points.segment, sb.points.segment)
    np.testing.assert_array_equal(sa.frames[0].rgb, sb.frames[0].rgb)
    # another seed, another room; rooms of one seed differ from each other
    c = make_source("synthetic", tmp_path / "c", seed=4, **SMALL)
    refs_c = c.discover()
    assert {r.content_hash for r in refs_c}.isdisjoint({r.content_hash for r in refs_a})
    assert refs_a[0].content_hash != refs_a[1].content_hash


def test_discover_does_not_regenerate_existing_rooms(tmp_path):
    src = make_source("synthetic", tmp_path, **SMALL)
    src.discover()
    mesh = tmp_path / src.scene_id(0) / "mesh.ply"
    stamp = mesh.stat().st_mtime_ns
    src.discover()
    assert mesh.stat().st_mtime_ns == stamp
    # other settings: regenerated
    make_source("synthetic", tmp_path, **{**SMALL, "image_width": 40}).discover()
    assert '"width": 40' in (tmp_path / src.scene_id(0) / "cameras.json").read_text()


def test_loaded_scene_is_valid_labelled_and_on_the_surface(tmp_path):
    src = make_source("synthetic", tmp_path, seed=1, **SMALL)
    ref = src.discover()[0]
    scene = src.load(ref)
    scene.validate()
    assert scene.key == f"synthetic/{ref.scene_id}" and scene.content_hash == ref.content_hash
    assert len(scene.points) == 3000 and len(scene.frames) == 3
    assert all(f.depth is None for f in scene.frames) and all(f.rgb.std() > 5 for f in scene.frames)
    labels = np.unique(scene.points.segment)
    assert {0, 1, 2} <= set(labels.tolist()) and len(labels) >= 5  # floor, wall, ceiling + furniture
    assert scene.points.instance.max() >= 6
    assert scene.meta["class_names"] == list(CLASS_NAMES)
    np.testing.assert_allclose(np.linalg.norm(scene.points.normal, axis=1), 1.0, atol=1e-5)
    mesh = trimesh.load(scene.mesh_path, force="mesh", process=False)
    assert len(mesh.faces) > 1000 and mesh.visual.kind == "face"  # a generic PLY reader sees the colours
    # closest-point distance to the mesh (open3d's, trimesh's needs rtree)
    import open3d as o3d

    rs = o3d.t.geometry.RaycastingScene()
    rs.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
    dist = rs.compute_distance(o3d.core.Tensor(scene.points.coord)).numpy()
    assert dist.max() < 1e-5
    # cameras ~1.5 m high inside the room; depth then renders for every pixel
    done = complete_depth(scene)
    done.validate(require_depth=True)
    for f in done.frames:
        assert 1.3 < f.pose[2, 3] < 1.7
        assert np.isfinite(f.depth).all()  # a closed room: every ray hits something


def test_corrupt_room_mesh_names_scene_and_file(tmp_path):
    src = make_source("synthetic", tmp_path, **SMALL)
    ref = src.discover()[0]
    mesh = tmp_path / ref.scene_id / "mesh.ply"
    mesh.write_bytes(mesh.read_bytes()[:-100])
    with pytest.raises(SourceError, match=rf"{ref.scene_id}.*mesh.ply.*truncated"):
        src.load(ref)
    with pytest.raises(LabeledPlyError, match="mesh.ply"):
        read_labeled_ply(mesh)


def test_nan_pose_names_scene_camera_file_and_frame(tmp_path):
    import json

    src = make_source("synthetic", tmp_path, **SMALL)
    ref = src.discover()[0]
    cameras = tmp_path / ref.scene_id / "cameras.json"
    data = json.loads(cameras.read_text())
    data["frames"][1]["pose"][0][3] = float("nan")
    cameras.write_text(json.dumps(data))
    name = data["frames"][1]["name"]
    with pytest.raises(SourceError, match=rf"{ref.scene_id}.*cameras.json.*{name}"):
        src.load(ref)


def test_dense_room_has_enough_faces():
    room = dense_room(min_faces=20_000, seed=0)
    assert len(room.mesh.faces) >= 20_000
