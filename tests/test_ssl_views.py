"""View generation and masking (numpy, per sample)."""
import numpy as np
import pytest

from concerto.ssl.masking import cube_mask, jitter_masked
from concerto.config import MaskConfig, ViewConfig
from concerto.ssl.masking import MaskShape
from concerto.ssl.views import grid_sample_random, make_views, nearest_crop


def cloud(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    coord = rng.uniform([0, 0, 0], [2, 2, 1], (n, 3)).astype(np.float32)
    color = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return coord, color, normal


def test_grid_sample_keeps_one_point_per_voxel():
    coord, _, _ = cloud()
    idx = grid_sample_random(coord, 0.2, np.random.default_rng(0))
    cells = np.floor((coord - coord.min(0)) / 0.2).astype(int)
    assert len(np.unique(cells[idx], axis=0)) == len(idx) == len(np.unique(cells, axis=0))


def test_nearest_crop_is_the_nearest_set():
    coord, _, _ = cloud(500)
    c = coord[7]
    idx = nearest_crop(coord, c, 50)
    d = np.linalg.norm(coord - c, axis=1)
    assert set(idx.tolist()) == set(np.argsort(d)[:50].tolist()) and idx[0] == 7


def test_cube_mask_ratio_and_cubes_whole():
    coord, _, _ = cloud()
    mask = cube_mask(coord, 0.4, 0.5, np.random.default_rng(1))
    cells = np.floor((coord - coord.min(0)) / 0.4).astype(int)
    keys = [tuple(c) for c in cells]
    by_cell = {}
    for k, m in zip(keys, mask):
        by_cell.setdefault(k, set()).add(bool(m))
    assert all(len(v) == 1 for v in by_cell.values())  # a cube is masked whole or not at all
    masked_cells = sum(1 for v in by_cell.values() if True in v)
    assert masked_cells == int(len(by_cell) * 0.5)


def test_jitter_moves_only_masked_points_within_two_sigma():
    coord, _, _ = cloud(300)
    mask = np.zeros(300, bool)
    mask[:100] = True
    out = jitter_masked(coord, mask, 0.01, np.random.default_rng(0), clip="both")
    assert np.array_equal(out[100:], coord[100:])
    delta = np.abs(out[:100] - coord[:100])
    assert delta.max() <= 0.02 + 1e-6 and delta.max() > 0
    # released: clipped above only
    up = jitter_masked(coord, mask, 0.01, np.random.default_rng(0)) - coord
    assert up[:100].max() <= 0.02 + 1e-6 and up[:100].min() < -0.02


def test_make_views_structure_and_provenance():
    coord, color, normal = cloud()
    seen = np.zeros(len(coord), bool)
    seen[np.linalg.norm(coord - [0.3, 0.3, 0.5], axis=1) < 0.3] = True
    params = ViewConfig(max_points=1000, principal_max_points=800)
    v = make_views(coord, color, normal, params, MaskShape(size=0.2, ratio=0.5, jitter=0.01),
                   np.random.default_rng(0), has_correspondence=seen)
    assert v["global_count"].tolist()[0] == 800 and len(v["global_count"]) == 2
    assert len(v["local_count"]) == 4
    assert all(100 <= c <= 400 for c in v["local_count"])  # local scale 0.1 - 0.4 of max_points
    n = v["global_count"].sum()
    assert v["global_feat"].shape == (n, 9) and v["local_feat"].shape == (v["local_count"].sum(), 9)
    # origin coordinates are the input coordinates of the points the views keep
    np.testing.assert_array_equal(v["global_origin_coord"], coord[v["global_index"]])
    # the principal view is centred on the points seen by images
    principal = v["global_origin_coord"][:800]
    centre = coord[seen].mean(0)
    assert np.linalg.norm(principal.mean(0) - centre) < 0.3
    # features: augmented coord, colour in [-1, 1], unit (or dropped) normals
    assert np.allclose(v["global_feat"][:, :3], v["global_coord"])
    assert v["global_feat"][:, 3:6].min() >= -1 and v["global_feat"][:, 3:6].max() <= 1
    nn = np.linalg.norm(v["global_feat"][:, 6:], axis=1)
    assert np.all((np.abs(nn - 1) < 1e-4) | (nn == 0))
    # augmentation is rigid up to scale: pairwise distances scale uniformly within a view
    a, o = v["global_coord"][:800], principal
    ratio = np.linalg.norm(a[1:50] - a[0], axis=1) / np.linalg.norm(o[1:50] - o[0], axis=1)
    assert 0.85 < np.median(ratio) < 1.15
    assert 0.3 < v["global_mask"].mean() < 0.7


def test_make_views_is_deterministic_per_seed():
    coord, color, normal = cloud(2000)
    p = ViewConfig(max_points=600, principal_max_points=600)
    m = MaskShape.at(MaskConfig(), 0, 100)
    a = make_views(coord, color, normal, p, m, np.random.default_rng([1, 2, 3]))
    b = make_views(coord, color, normal, p, m, np.random.default_rng([1, 2, 3]))
    c = make_views(coord, color, normal, p, m, np.random.default_rng([1, 2, 4]))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["global_coord"], c["global_coord"])


def test_elastic_distortion_is_smooth():
    from concerto.ssl.views import elastic_distortion

    rng = np.random.default_rng(0)
    coord = rng.uniform(0, 3, (2000, 3))
    near = coord + 0.005
    assert np.array_equal(elastic_distortion(coord, 0.2, 0.0, np.random.default_rng(1)), coord)
    a = elastic_distortion(coord, 0.8, 1.6, np.random.default_rng(1)) - coord
    b = elastic_distortion(near, 0.8, 1.6, np.random.default_rng(1)) - near  # same noise field
    assert np.abs(a).mean() > 0.05  # it moves points ...
    assert np.abs(a - b).mean() < 0.1 * np.abs(a).mean()  # ... and neighbours alike


def test_elastic_interpolation_matches_scipy():
    from scipy.interpolate import RegularGridInterpolator
    from scipy.ndimage import uniform_filter1d

    from concerto.ssl.views import elastic_distortion

    coord = np.random.default_rng(2).uniform(-1, 2, (500, 3))
    got = elastic_distortion(coord, 0.3, 1.0, np.random.default_rng(7)) - coord
    rng = np.random.default_rng(7)  # rebuild the same noise grid, interpolate with scipy
    lo = coord.min(0)
    dims = ((coord - lo).max(0) // 0.3).astype(int) + 3
    noise = rng.standard_normal((*dims, 3)).astype(np.float32)
    for _ in range(2):
        for axis in range(3):
            noise = uniform_filter1d(noise, 3, axis=axis, mode="constant", cval=0.0)
    axes = [np.linspace(a - 0.3, a + 0.3 * (d - 2), d) for a, d in zip(lo, dims)]
    expected = RegularGridInterpolator(axes, noise, bounds_error=False, fill_value=0.0)(coord)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_mask_shape_follows_the_run_config_schedule():
    m = MaskConfig()
    assert MaskShape.at(m, 0, 100) == (m.size_start, m.ratio_start, m.jitter, m.jitter_clip)
    assert MaskShape.at(m, 99, 100)[:3] == pytest.approx((m.size_base, m.ratio_base, m.jitter))
    # the view settings the loader workers see are the run's own config objects, not copies
    from concerto.config import PretrainConfig
    from concerto.train import build_sample_spec
    from concerto.patches import PatchGrid

    cfg = PretrainConfig.tiny()
    spec = build_sample_spec(cfg, PatchGrid(56, 14), (0.5,) * 3, (0.5,) * 3, True)
    assert spec.views is cfg.views and spec.mask is cfg.mask
