"""Shared adapter helpers: depth reprojection, normals, registry."""
import numpy as np

from preprocess.sources import available_sources
from preprocess.sources._common import (
    depth_from_raw,
    estimate_normals,
    fill_holes_min,
    reproject_depth,
    vertex_normals,
)
from testkit import dataset_files as fx


def test_all_dataset_kinds_are_registered():
    assert {"scannet", "scannetpp", "s3dis", "arkitscenes", "structured3d", "pointcept"} <= set(available_sources())


def test_depth_units_and_invalid_codes():
    raw = np.array([[0, 1000, 65535]], np.uint16)
    d = depth_from_raw(raw, 1000.0, invalid=(0, 65535))
    assert np.isnan(d[0, 0]) and d[0, 1] == 1.0 and np.isnan(d[0, 2])


def test_reprojected_depth_of_a_tilted_plane_matches_the_plane():
    """Depth of the plane z = 2 + 0.1 x seen by a low-res camera, moved to a
    high-res camera 5 cm to the side: every filled pixel matches the plane."""
    Ks = fx.make_K(fx=15, fy=15, cx=7.5, cy=5.5)
    Kd = fx.make_K(fx=30, fy=30, cx=15.5, cy=11.5)
    v, u = np.mgrid[0:12, 0:16].astype(float)
    # ray (a, b, 1) hits z = 2 + 0.1 x where x = a z  ->  z = 2 / (1 - 0.1 a)
    a = (u - Ks[0, 2]) / Ks[0, 0]
    depth = (2 / (1 - 0.1 * a)).astype(np.float32)
    T = np.eye(4)
    T[0, 3] = -0.05  # destination camera sits at x = +0.05
    out = fill_holes_min(reproject_depth(depth, Ks, Kd, (24, 32), T), iterations=1)
    vv, uu = np.nonzero(np.isfinite(out))
    assert len(vv) > 0.8 * 24 * 32
    ad = (uu - Kd[0, 2]) / Kd[0, 0]
    # destination ray (ad, bd, 1) in source coords: x_src = ad z + 0.05
    z_true = (2 + 0.1 * 0.05) / (1 - 0.1 * ad)
    assert np.abs(out[vv, uu] - z_true).max() < 0.02


def test_normals_of_a_plane():
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-1, 1, (200, 2)), np.zeros(200)] @ fx.rotation((1, 0, 0), 0.5).T
    n = estimate_normals(pts)
    expected = fx.rotation((1, 0, 0), 0.5)[:, 2]
    assert np.abs(n @ expected).min() > 0.999
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], float)
    np.testing.assert_allclose(vertex_normals(verts, np.array([[0, 1, 2]])), [[0, 0, 1]] * 3, atol=1e-6)


def test_every_adapter_pickles_for_dask_workers(tmp_path):
    import pickle

    from preprocess.sources import make_source

    for kind in ("scannet", "scannetpp", "s3dis", "arkitscenes", "structured3d", "pointcept"):
        src = make_source(kind, tmp_path, name=f"my_{kind}", frame_gap=3)
        src.cache()["something_open"] = open(__file__)  # per-process state is not shipped
        clone = pickle.loads(pickle.dumps(src))
        src.cache()["something_open"].close()
        assert clone.name == f"my_{kind}" and clone.options == src.options and clone.cache() == {}
        assert clone.discover() == []


# options_key as the adapters computed it when the option was still called
# frame_skip (so every stored content hash depended on these exact strings)
PRE_RENAME_KEYS = {
    "scannet": "scannet|frame_skip=3|hash_mode='stat'|label_map=None|labels='scannet20'|use_sensor_depth=False",
    "s3dis": "s3dis|frame_skip=3|hash_mode='stat'|images_root=None|mesh_cache_dir=None|mesh_margin=0.1|"
             "normal_neighbours=16|use_sensor_depth=False",
    "pointcept": "pointcept|depth_scale=None|frame_skip=3|hash_mode='stat'|layout='auto'|pose_convention=None|"
                 "read_depth=True|segment_key=None|splits=None",
    "hm3d": "hm3d|backend='mesh'|camera_height=1.5|category_map=None|frame_skip=3|hash_mode='stat'|hfov=90.0|"
            "image_height=720|image_width=720|jitter=0.25|max_rooms=None|num_views=4|point_spacing=0.02|"
            "recipe='released'|render_backend='auto'|room_method='auto'|scene_dataset_config=None|seed=0",
}


def test_frame_gap_hashes_under_its_old_name_and_frame_skip_is_a_deprecated_alias(tmp_path):
    import pytest

    from preprocess.sources import make_source

    for kind, key in PRE_RENAME_KEYS.items():
        new = make_source(kind, tmp_path, frame_gap=3)
        assert new.frame_gap == 3 and new.options_key() == key, kind
        with pytest.warns(DeprecationWarning, match="frame_skip"):
            old = make_source(kind, tmp_path, frame_skip=3)
        assert old.options == new.options and old.options_key() == key, kind
    with pytest.warns(DeprecationWarning):
        assert make_source("scannet", tmp_path, frame_skip=2, frame_gap=2).frame_gap == 2
    with pytest.raises(ValueError, match="disagree"):
        make_source("scannet", tmp_path, frame_skip=2, frame_gap=3)
