"""The mesh-rendered sources (ScanNet, ScanNet++, S3DIS, ARKitScenes) hand the
renderer a mesh and poses it agrees with: the depth it renders at (U0, V0) is
the known point's z-depth, and the plane fills the view."""
import numpy as np
import pytest

import test_sources_arkitscenes as arkit
import test_sources_s3dis as s3dis
import test_sources_scannet as scannet
import test_sources_scannetpp as scannetpp
from preprocess.render.complete_depth import complete_depth
from preprocess.sources import make_source
from testkit import dataset_files as fx


@pytest.mark.parametrize("kind", ["scannet", "scannetpp", "s3dis", "arkitscenes"])
def test_rendered_depth_matches_the_known_point(kind, tmp_path):
    if kind == "scannet":
        scannet._write_scene(tmp_path, "scene0000_00", fx.make_pose())
        src = make_source(kind, tmp_path)
    elif kind == "scannetpp":
        scannetpp._scene(tmp_path, scannetpp.SCENE, fx.make_pose())
        src = make_source(kind, tmp_path)
    elif kind == "s3dis":
        s3dis._dataset(tmp_path)
        src = make_source(kind, tmp_path / "s3dis", images_root=tmp_path / "2d3ds", mesh_cache_dir=tmp_path / "cache")
    else:
        arkit._video(tmp_path, arkit.VID, fx.make_pose())
        src = make_source(kind, tmp_path)
    scene = src.load(src.discover()[0])
    assert scene.mesh_path is not None and all(f.depth is None for f in scene.frames)
    rendered = complete_depth(scene).validate(require_depth=True)
    for f in rendered.frames:
        assert f.depth[fx.V0, fx.U0] == pytest.approx(fx.Z0, abs=1e-3)
        assert np.isfinite(f.depth).all()
        np.testing.assert_allclose(f.depth, fx.Z0, atol=1e-3)  # a plane facing the camera: constant z-depth
