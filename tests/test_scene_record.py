"""The scene record's validation: each bad input names the scene and the field."""
from __future__ import annotations

import numpy as np
import pytest

from preprocess.scene import Frame, PointCloud, Scene, SceneValidationError


def _scene(n=10, h=6, w=8) -> Scene:
    rng = np.random.default_rng(0)
    pc = PointCloud(
        coord=rng.normal(size=(n, 3)).astype(np.float32),
        color=rng.integers(0, 256, (n, 3), dtype=np.uint8),
        normal=np.tile(np.float32([0, 0, 1]), (n, 1)),
        segment=np.zeros(n, np.int32),
    )
    K = np.float32([[10, 0, w / 2], [0, 10, h / 2], [0, 0, 1]])
    frame = Frame("f0", rgb=np.zeros((h, w, 3), np.uint8), K=K, pose=np.eye(4, dtype=np.float32),
                  depth=np.full((h, w), 2.0, np.float32))
    return Scene(scene_id="s1", source="src", points=pc, frames=[frame])


def _expect(scene, field, match=None):
    with pytest.raises(SceneValidationError) as info:
        scene.validate(require_depth=True)
    assert info.value.scene == "src/s1" and info.value.field == field
    assert "src/s1" in str(info.value) and field in str(info.value)
    if match:
        assert match in str(info.value)


def test_good_scene_validates():
    assert _scene().validate(require_depth=True).key == "src/s1"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_coords(bad):
    s = _scene()
    s.points.coord[3, 1] = bad
    _expect(s, "points.coord", "index 3")


def test_empty_cloud():
    s = _scene()
    s.points = PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.float32))
    _expect(s, "points.coord", "empty")


def test_dtype_and_shape_mismatch():
    s = _scene()
    s.points.coord = s.points.coord.astype(np.float64)
    _expect(s, "points.coord", "dtype")
    s = _scene()
    s.points.color = s.points.color[:5]
    _expect(s, "points.color", "shape")
    s = _scene()
    s.points.segment = s.points.segment.astype(np.int64)
    _expect(s, "points.segment", "dtype")


def test_non_orthonormal_rotation():
    s = _scene()
    s.frames[0].pose[0, 0] = 1.5
    _expect(s, "frames[0:f0].pose", "orthonormal")


def test_reflection_is_not_a_rotation():
    s = _scene()
    s.frames[0].pose[:3, :3] = np.diag([1, 1, -1]).astype(np.float32)
    _expect(s, "frames[0:f0].pose", "determinant")


@pytest.mark.parametrize("fx", [0.0, -5.0])
def test_non_positive_focal(fx):
    s = _scene()
    s.frames[0].K[0, 0] = fx
    _expect(s, "frames[0:f0].K", "focal")


def test_zero_depth_is_rejected():
    s = _scene()
    s.frames[0].depth[2, 2] = 0.0
    _expect(s, "frames[0:f0].depth", "never 0")


def test_depth_shape_mismatch():
    s = _scene()
    s.frames[0].depth = np.ones((5, 8), np.float32)
    _expect(s, "frames[0:f0].depth", "shape")


def test_missing_depth_only_when_required():
    s = _scene()
    s.frames[0].depth = None
    s.validate()
    _expect(s, "frames[0:f0].depth", "missing")


def test_nan_depth_is_allowed_as_invalid():
    s = _scene()
    s.frames[0].depth[0, 0] = np.nan
    s.validate(require_depth=True)
