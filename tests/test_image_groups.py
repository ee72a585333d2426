import numpy as np
import pytest

from pipelines.correspondence import scene_correspondences
from preprocess.geometry import project
from preprocess.records import Correspondence
from pipelines.image_groups import group_frames, process_scene, select_frames
from preprocess.scene import Scene, SceneValidationError
from testkit.correspondence_scenes import intrinsics, look_at, make_cloud, make_frame, random_scene


def _corrs(counts):
    return [Correspondence(np.arange(c, dtype=np.int32), np.zeros((c, 2), np.uint16)) for c in counts]


def test_select_frames_gap_and_minimum():
    counts = [50, 0, 10, 500, 7, 300, 300, 1]
    assert select_frames(_corrs(counts), frame_gap=1, min_correspondences=10).tolist() == [0, 2, 3, 5, 6]
    assert select_frames(_corrs(counts), frame_gap=3, min_correspondences=10).tolist() == [0, 3, 6]
    assert select_frames(_corrs(counts), frame_gap=2, min_correspondences=100).tolist() == [6]
    assert select_frames([], frame_gap=75, min_correspondences=1).tolist() == []
    with pytest.raises(ValueError):
        select_frames(_corrs(counts), frame_gap=0, min_correspondences=1)


def test_group_frames_remainders():
    assert group_frames([]).shape == (1, 0) and group_frames([]).dtype == np.int32
    assert group_frames([7]).tolist() == [[7, 7, 7, 7]]
    assert group_frames([3, 9]).tolist() == [[3, 9, 3, 9]]
    assert group_frames([1, 2, 3]).tolist() == [[1, 2, 3, 1]]
    assert group_frames([0, 5, 10, 15]).tolist() == [[0, 5, 10, 15]]
    assert group_frames(range(6)).tolist() == [[0, 1, 2, 3], [2, 3, 4, 5]]
    assert group_frames(range(8)).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert group_frames(range(9)).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [5, 6, 7, 8]]
    segs = group_frames(range(11))
    assert segs.dtype == np.int32 and set(segs.ravel().tolist()) == set(range(11))
    assert all(len(set(s)) == 4 for s in segs.tolist())


def _scene_with_blind_frames(rng):
    """Random scene plus frames that see nothing (looking away from the points)."""
    scene = random_scene(rng, n_points=500, n_frames=7, hit_fraction=0.9, nan_fraction=0.0)
    K = intrinsics(20, 20, 15, 10)
    for i in (2, 5):
        pose = look_at((0, 0, 10), (0, 0, 30))
        scene.frames[i] = make_frame(f"blind{i}", K, pose, np.full((20, 30), 1.0, np.float32))
    return scene


def test_process_scene_selects_reindexes_and_drops_depth():
    rng = np.random.default_rng(0)
    scene = _scene_with_blind_frames(rng)
    full = scene_correspondences(scene)
    assert len(full[2]) == 0 and len(full[5]) == 0
    out = process_scene(scene, frame_gap=1, min_correspondences=5)
    kept = [i for i in range(7) if len(full[i]) >= 5]
    assert 2 not in kept and 5 not in kept and len(kept) == 5
    # 5 kept frames -> [0..3] + last four
    assert out.image_groups.tolist() == [[0, 1, 2, 3], [1, 2, 3, 4]]
    assert [f.name for f in out.scene.frames] == [scene.frames[i].name for i in kept]
    assert all(f.depth is None for f in out.scene.frames)
    assert all(f.depth is not None for f in scene.frames)  # input untouched
    for j, i in enumerate(kept):
        np.testing.assert_array_equal(out.correspondences[j].point_index, full[i].point_index)
        np.testing.assert_array_equal(out.correspondences[j].pixel, full[i].pixel)
    seen = np.unique(np.concatenate([full[i].point_index for i in kept]))
    s = out.stats
    assert s["points"] == 500 and s["frames_in"] == 7 and s["frames_selected"] == 5 and s["frames_out"] == 5
    assert s["coverage"] == pytest.approx(seen.size / 500)
    assert s["correspondences"] == [len(full[i]) for i in kept]

    # with a gap of 3 only frames 0, 3, 6 are candidates
    out = process_scene(scene, frame_gap=3, min_correspondences=5)
    assert out.stats["frames_candidates"] == 3
    assert [f.name for f in out.scene.frames] == [scene.frames[i].name for i in (0, 3, 6)]
    assert out.image_groups.tolist() == [[0, 1, 2, 0]]


def test_process_scene_without_usable_frames():
    rng = np.random.default_rng(1)
    scene = Scene(scene_id="bare", source="test", points=make_cloud(rng.normal(size=(10, 3))))
    out = process_scene(scene)
    assert out.image_groups.shape == (1, 0) and out.scene.frames == [] and out.correspondences == []
    assert out.stats["coverage"] == 0.0
    scene = _scene_with_blind_frames(rng)
    out = process_scene(scene, min_correspondences=10**6)
    assert out.image_groups.shape == (1, 0) and out.scene.frames == []


def test_process_scene_downsizes_images_consistently():
    rng = np.random.default_rng(2)
    scene = random_scene(rng, n_points=2000, n_frames=4, hw=(60, 88), hit_fraction=1.0, nan_fraction=0.0)
    out = process_scene(scene, min_correspondences=1, max_image_side=44)
    full = scene_correspondences(scene)
    agree = total = 0
    for frame, corr, orig, src in zip(out.scene.frames, out.correspondences, full, scene.frames):
        assert frame.rgb.shape == (30, 44, 3) and frame.K.dtype == np.float32
        np.testing.assert_array_equal(corr.point_index, orig.point_index)
        # stored pixel = the downsized pixel containing the original pixel's centre
        np.testing.assert_array_equal(corr.pixel.astype(np.int64), (2 * orig.pixel.astype(np.int64) + 1) // 4)
        # and projecting with the scaled K lands on (or next to) that pixel
        uv, _ = project(scene.points.coord[corr.point_index], frame.K, src.pose)
        diff = np.abs(np.floor(uv + 0.5) - corr.pixel)
        assert diff.max() <= 1
        agree += int((diff == 0).all(axis=1).sum())
        total += len(corr)
    # a factor of exactly 2 maps pixel rounding exactly (float32 K aside)
    assert agree / total > 0.99


def test_process_scene_rejects_bad_scene():
    rng = np.random.default_rng(3)
    scene = random_scene(rng, n_points=30, n_frames=2, key="arkitscenes/41069021")
    scene.frames[0].depth = None
    with pytest.raises(SceneValidationError, match="arkitscenes/41069021"):
        process_scene(scene)
    scene = random_scene(rng, n_points=30, n_frames=2, key="arkitscenes/41069022")
    scene.points.coord[3, 1] = np.nan
    with pytest.raises(SceneValidationError, match="points.coord"):
        process_scene(scene)
