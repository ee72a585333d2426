import numpy as np
import pytest

from concerto.patches import PatchGrid, crop_box, normalize_image, pixel_to_patch, pixel_to_patch_coords, prepare_image


def test_grid_shapes():
    assert PatchGrid().grid_hw == (37, 37) and PatchGrid().num_patches == 1369
    assert PatchGrid(512, 16).grid_hw == (32, 32)
    assert PatchGrid((224, 448), 14).grid_hw == (16, 32)
    with pytest.raises(ValueError, match="multiple"):
        PatchGrid(500, 14)


def test_crop_box_centres_to_grid_aspect():
    assert crop_box((480, 640), PatchGrid(), "largest") == (80, 0, 480, 480)
    assert crop_box((640, 480), PatchGrid(), "largest") == (0, 80, 480, 480)
    assert crop_box((518, 518), PatchGrid(), "largest") == (0, 0, 518, 518)
    # a wide grid on a 4:3 image trims rows
    assert crop_box((480, 640), PatchGrid((224, 448), 14), "largest") == (0, 80, 640, 320)


def test_crop_box_grid_multiple_as_released():
    """Released data code: the largest centred crop whose sides are a multiple of the
    patch grid (444 x 444 from 640 x 480 for 37 x 37 patches)."""
    assert crop_box((480, 640), PatchGrid()) == (98, 18, 444, 444)
    assert crop_box((518, 518), PatchGrid()) == (0, 0, 518, 518)
    assert crop_box((480, 640), PatchGrid((224, 448), 14)) == (0, 80, 640, 320)
    with pytest.raises(ValueError, match="crop"):
        crop_box((480, 640), PatchGrid(), "middle")
    # continuous coordinates truncate to the integer patch
    pix = np.random.default_rng(0).integers(0, [640, 480], (500, 2))
    rc = pixel_to_patch_coords(pix, (480, 640), PatchGrid())
    patch = pixel_to_patch(pix, (480, 640), PatchGrid())
    inside = patch >= 0
    assert ((rc[:, 0] >= 0) == inside).all()
    assert np.array_equal(rc[inside, 0].astype(int) * 37 + rc[inside, 1].astype(int), patch[inside])


def test_pixel_to_patch_corners_and_cropped():
    g = PatchGrid()
    pix = np.array([[80, 0], [559, 479], [79, 10], [560, 10], [320, 240]])
    out = pixel_to_patch(pix, (480, 640), g, "largest")
    assert out.dtype == np.int64
    assert out[0] == 0 and out[1] == 37 * 37 - 1
    assert out[2] == -1 and out[3] == -1
    assert out[4] == 18 * 37 + 18  # image centre -> centre patch
    assert (pixel_to_patch(np.zeros((0, 2), np.uint16), (480, 640), g) == np.zeros(0)).all()


def _patch_sums(img, grid):
    gh, gw = grid.grid_hw
    p = grid.patch_size
    mono = img.astype(np.float64).sum(axis=2)
    return mono.reshape(gh, p, gw, p).sum(axis=(1, 3)).ravel()


def _margin_ok(pixel, src_hw, grid, margin=1.0):
    """The pixel centre's resized position is at least ``margin`` output pixels
    from any patch border (there the colour splits between two patches)."""
    x0, y0, w, h = crop_box(src_hw, grid)
    out_h, out_w = grid.image_hw
    pos = [(pixel[0] - x0 + 0.5) * out_w / w, (pixel[1] - y0 + 0.5) * out_h / h]
    return all(min(q % grid.patch_size, grid.patch_size - q % grid.patch_size) >= margin for q in pos)


@pytest.mark.parametrize(
    "src_hw, grid",
    [((480, 640), PatchGrid(518, 14)), ((640, 480), PatchGrid(518, 14)), ((960, 1280), PatchGrid(518, 14)), ((240, 320), PatchGrid(512, 16)), ((300, 500), PatchGrid((224, 448), 14))],
)
def test_painted_pixel_lands_in_predicted_patch(src_hw, grid):
    rng = np.random.default_rng(0)
    H, W = src_hw
    x0, y0, w, h = crop_box(src_hw, grid)
    checked = 0
    while checked < 8:
        # a 1-pixel dot is too faint after a 4x downscale; paint the pixel's
        # footprint block so the colour survives, centred on the pixel
        u, v = int(rng.integers(x0, x0 + w)), int(rng.integers(y0, y0 + h))
        if not _margin_ok((u, v), src_hw, grid):
            continue
        img = np.zeros((H, W, 3), np.uint8)
        r = max(0, int(min(w / grid.image_hw[1], h / grid.image_hw[0]) // 2))
        img[max(v - r, 0) : v + r + 1, max(u - r, 0) : u + r + 1] = (255, 40, 200)
        prepared = prepare_image(img, grid)
        assert prepared.shape == (*grid.image_hw, 3) and prepared.dtype == np.uint8
        sums = _patch_sums(prepared, grid)
        predicted = pixel_to_patch(np.array([[u, v]]), src_hw, grid)[0]
        assert predicted >= 0
        assert int(np.argmax(sums)) == predicted, (u, v)
        checked += 1
    # a pixel outside the crop leaves the prepared image black
    if x0 > 0 or y0 > 0:
        img = np.zeros((H, W, 3), np.uint8)
        img[0, 0] = 255
        assert prepare_image(img, grid).max() == 0
        assert pixel_to_patch(np.array([[0, 0]]), src_hw, grid)[0] == -1


def test_nearest_resample_exact_on_integer_scale():
    # 1036 = 2 x 518: each output pixel takes exactly one source pixel, so every
    # source pixel's colour sits in exactly its predicted patch.
    grid = PatchGrid(518, 14)
    H = W = 1036
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    prepared = prepare_image(img, grid, resample="nearest")
    rows, cols = np.mgrid[0:518, 0:518]
    # output pixel (r, c) samples source (2r + 1, 2c + 1) under the centre convention
    np.testing.assert_array_equal(prepared, img[2 * rows + 1, 2 * cols + 1])
    src = np.stack([2 * cols.ravel() + 1, 2 * rows.ravel() + 1], 1)
    patch = pixel_to_patch(src, (H, W), grid)
    np.testing.assert_array_equal(patch, (rows.ravel() // 14) * 37 + cols.ravel() // 14)


def test_normalize_image():
    img = np.full((28, 28, 3), 255, np.uint8)
    t = normalize_image(img)
    assert tuple(t.shape) == (3, 28, 28)
    np.testing.assert_allclose(t[:, 0, 0].numpy(), (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-5)
