"""One stored image group -> one training sample (concerto.data.sample), the released way."""
import numpy as np

from concerto.data.sample import SampleSpec, build_sample
from concerto.config import MaskConfig, ViewConfig
from concerto.patches import PatchGrid, pixel_to_patch_coords


# points near the middle of the ones both images see (so in the principal view), and two
# pixels inside the 56 x 42 centre crop of a 64 x 48 image, (u, v): LOW's row and column are lower
LATER_WINS, FIRST_WINS = 739, 780
LOW_PIXEL, HIGH_PIXEL = (10, 10), (50, 40)


def _raw(rng):
    g = np.stack(np.meshgrid(np.arange(50), np.arange(40), indexing="ij"), -1).reshape(-1, 2) * 0.05
    coord = np.c_[g, np.zeros(len(g))].astype(np.float32)
    n = len(coord)
    pix = np.stack([rng.integers(0, 64, n), rng.integers(0, 48, n)], 1)
    # image 0 sees points 0..999, image 1 points 500..1999: 500..999 are seen by both
    pts0, pts1 = np.arange(0, 1000), np.arange(500, 2000)
    # two central points get a second pixel in image 0, listed after their first; the
    # last in (row, col) order is kept: the later one for LATER_WINS, the first for FIRST_WINS
    pix[LATER_WINS], pix[FIRST_WINS] = LOW_PIXEL, HIGH_PIXEL
    pts0 = np.r_[pts0, LATER_WINS, FIRST_WINS]
    pix0 = np.r_[pix[:1000], [HIGH_PIXEL, LOW_PIXEL]]
    return dict(key="seg", coord=coord, color=rng.integers(0, 256, (n, 3)).astype(np.uint8),
                normal=np.tile([0, 0, 1.0], (n, 1)).astype(np.float32),
                rgb=[rng.integers(0, 256, (48, 64, 3)).astype(np.uint8) for _ in range(2)],
                corr_point=[pts0, pts1], corr_pixel=[pix0, pix[500:2000]])


def test_principal_view_centres_on_points_every_image_sees_and_patch_coords():
    rng = np.random.default_rng(0)
    raw = _raw(rng)
    spec = SampleSpec(views=ViewConfig(max_points=400, principal_max_points=300, local_num=2), mask=MaskConfig(),
                      grid=PatchGrid(56, 14))
    out = build_sample(raw, spec, step=0, rng=np.random.default_rng(1))
    principal = out["global_origin_coord"][: out["global_count"][0]]
    both = raw["coord"][500:1000].mean(0)
    anyone = raw["coord"].mean(0)  # the centre of the points some image sees
    assert np.linalg.norm(principal.mean(0)[:2] - both[:2]) < 0.1 < np.linalg.norm(principal.mean(0)[:2] - anyone[:2])
    assert len(principal) == 300
    # continuous patch coordinates truncate to the patch ids; one pixel per (point, image)
    rc = out["corr_rc"]
    assert np.array_equal(rc[:, 0].astype(int) * 4 + rc[:, 1].astype(int), out["corr_patch"])
    pairs = out["corr_row"] * 10 + out["corr_image"]
    assert len(np.unique(pairs)) == len(pairs)
    # which of a point's two pixels gave its patch
    row_of = {int(p): r for r, p in enumerate(out["global_index"][: out["global_count"][0]])}
    assert (pixel_to_patch_coords(np.array([LOW_PIXEL, HIGH_PIXEL]), (48, 64), spec.grid) >= 0).all()  # not cropped
    for point, pixel in ((LATER_WINS, HIGH_PIXEL), (FIRST_WINS, HIGH_PIXEL)):
        assert point in row_of, point
        j = np.nonzero((out["corr_row"] == row_of[point]) & (out["corr_image"] == 0))[0]
        expected = pixel_to_patch_coords(np.array([pixel]), (48, 64), spec.grid)[0]
        assert len(j) == 1 and np.array_equal(rc[j[0]], expected), (point, rc[j], expected)
    # colour reaches the network as colour / 255
    assert out["global_feat"][:, 3:6].min() >= 0 and out["global_feat"][:, 3:6].max() <= 1
    assert out["images"].shape[1:] == (3, 56, 56) and np.isfinite(out["images"]).all()
