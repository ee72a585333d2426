"""PCA colours, z-buffer splatting, PLY output and the pictures of real encoder features."""
import numpy as np
import pytest
from PIL import Image

from concerto.eval.pictures import (
    colormap,
    cosine_similarity,
    main,
    pca_rgb,
    render,
    save_feature_pictures,
    save_similarity_picture,
    splat,
    write_ply,
)
from concerto.inference import random_encoder


def colour_clusters(image: np.ndarray, k: int = 3, iters: int = 20, seed: int = 0):
    """k-means (numpy) over the non-white pixels: (centres [k, 3], share of pixels [k])."""
    px = image.reshape(-1, 3).astype(np.float64)
    px = px[(px < 250).any(1)]
    rng = np.random.default_rng(seed)
    centres = px[rng.choice(len(px), k, replace=False)]
    for _ in range(iters):
        assign = ((px[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        centres = np.stack([px[assign == j].mean(0) if (assign == j).any() else centres[j] for j in range(k)])
    return centres, np.bincount(assign, minlength=k) / len(px)


def two_block_scene(n=3000, seed=0):
    """A floor slab and a box standing on it, with features that differ between the two."""
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 4, (n, 2)), rng.uniform(0, 0.02, n)]
    box = rng.uniform([1, 1, 0], [2, 2, 1], (n, 3))
    coord = np.concatenate([floor, box]).astype(np.float32)
    feat = np.concatenate([rng.normal([5, 0, 0, 0], 0.3, (n, 4)), rng.normal([-5, 0, 0, 0], 0.3, (n, 4))])
    return coord, feat.astype(np.float32)


def test_pca_rgb_range_determinism_and_separation():
    coord, feat = two_block_scene()
    rgb = pca_rgb(feat)
    assert rgb.shape == (len(feat), 3) and rgb.dtype == np.float32
    assert rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_array_equal(rgb, pca_rgb(feat))
    # shift- and scale-invariant (centred PCA, percentile scaling)
    np.testing.assert_allclose(rgb, pca_rgb(2 * feat + 3), atol=1e-5)
    # the first component separates the two parts
    assert abs(rgb[:3000, 0].mean() - rgb[3000:, 0].mean()) > 0.8
    # an outlier does not squash everything else (robust scaling)
    feat2 = feat.copy()
    feat2[0] = 1e4
    rgb2 = pca_rgb(feat2)
    assert abs(rgb2[1:3000, 0].mean() - rgb2[3000:, 0].mean()) > 0.5
    assert pca_rgb(feat[:, :2]).shape == (len(feat), 3)  # fewer than 3 channels: padded


def test_splat_zbuffer_nearest_wins():
    u = np.array([5.0, 5.0, 20.0])
    v = np.array([5.0, 5.0, 20.0])
    depth = np.array([2.0, 1.0, np.inf])
    rgb = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], np.float32)
    img = splat(u, v, depth, rgb, 32, 24, radius=1)
    assert tuple(img[5, 5]) == (0, 0, 255) and tuple(img[4, 6]) == (0, 0, 255)  # the nearer blue point
    assert tuple(img[20, 20]) == (255, 255, 255)  # depth inf: not drawn
    assert (img != 255).any(2).sum() == 9


def test_render_views_and_highlight():
    coord, feat = two_block_scene(800)
    rgb = pca_rgb(feat)
    top = render(coord, rgb, "top", (200, 150))
    persp = render(coord, rgb, "perspective", (200, 150))
    for img in (top, persp):
        assert img.shape == (150, 200, 3) and ((img != 255).any(2)).mean() > 0.05
    marked = render(coord, rgb, "top", (200, 150), highlight=10)
    assert ((marked == [255, 0, 255]).all(2)).any()
    with pytest.raises(ValueError, match="view must be"):
        render(coord, rgb, "side")


def test_write_ply_roundtrip(tmp_path):
    import trimesh

    coord, feat = two_block_scene(100)
    rgb = pca_rgb(feat)
    path = write_ply(tmp_path / "c.ply", coord, rgb)
    cloud = trimesh.load(path)
    np.testing.assert_allclose(np.asarray(cloud.vertices), coord, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], np.round(rgb * 255).astype(np.uint8))


def test_similarity_and_colormap():
    coord, feat = two_block_scene(500)
    sim = cosine_similarity(feat, 0)
    assert sim[0] == pytest.approx(1.0, abs=1e-5)
    assert sim[:500].mean() > 0.9 and sim[500:].mean() < -0.9
    c = colormap(np.array([-1.0, 0.0, 1.0]))
    assert c.shape == (3, 3) and not np.allclose(c[0], c[2])
    with pytest.raises(ValueError, match="query 5000 outside"):
        cosine_similarity(feat, 5000)


def test_pictures_of_real_features_show_several_colour_clusters(tmp_path):
    """Encoder features of a room-like cloud: PNGs written, PCA picture has more than one colour cluster."""
    rng = np.random.default_rng(0)
    n = 2500
    floor = np.c_[rng.uniform(0, 3, (n, 2)), np.zeros(n)]
    wall = np.c_[rng.uniform(0, 3, n), np.zeros(n), rng.uniform(0, 2, n)]
    box = rng.uniform([1, 1, 0], [1.8, 1.8, 0.8], (n, 3))
    coord = np.concatenate([floor, wall, box]).astype(np.float32)
    color = np.concatenate([np.tile([150, 110, 75], (n, 1)), np.tile([210, 205, 190], (n, 1)),
                            np.tile([40, 90, 150], (n, 1))]).astype(np.uint8)
    normal = np.concatenate([np.tile([0, 0, 1], (n, 1)), np.tile([0, 1, 0], (n, 1)),
                             np.tile([1, 0, 0], (n, 1))]).astype(np.float32)
    feat = random_encoder("tiny", seed=0).embed(coord, color, normal)
    paths = save_feature_pictures(tmp_path, "room", coord, feat, color, size=(240, 180), max_height=10.0)
    sim_path = save_similarity_picture(tmp_path / "room_similarity.png", coord, feat, query=0, size=(240, 180))
    for p in list(paths.values()) + [sim_path]:
        assert p.is_file() and p.stat().st_size > 1000
    image = np.asarray(Image.open(paths["pca_png"]).convert("RGB"))
    assert image.shape == (180, 2 * 240 + 8, 3)
    centres, share = colour_clusters(image, k=3)
    big = centres[share > 0.1]
    assert len(big) >= 2
    gaps = [np.linalg.norm(a - b) for i, a in enumerate(big) for b in big[i + 1:]]
    assert max(gaps) > 60  # distinct colours, not shades of one
    heat = np.asarray(Image.open(sim_path).convert("RGB"))
    assert len(np.unique(heat.reshape(-1, 3) // 32, axis=0)) > 4


def test_pictures_cli(tmp_path, capsys):
    from testkit.room_store import build_room_store

    url = build_room_store(tmp_path / "rooms", num_scenes=1, points_per_scene=3000, frames_per_scene=4,
                           image_size=(48, 36))
    assert main(["--data", url, "--checkpoint", "random", "--out", str(tmp_path / "pics"), "--size", "160", "120"]) == 0
    out = capsys.readouterr().out
    for key in ("pca_png", "pca_ply", "rgb_png", "similarity_png"):
        assert key in out
    assert len(list((tmp_path / "pics").glob("*.png"))) == 3
    assert main(["--data", url, "--checkpoint", "random", "--index", "99", "--out", str(tmp_path / "x")]) == 2
    assert "out of range" in capsys.readouterr().err


def test_pictures_and_probe_write_into_a_run_folder_by_default(tmp_path, monkeypatch, capsys):
    """Without --out / --output nothing lands in the current directory: runs/<what>-<checkpoint name>/."""
    from concerto.eval.linear_probe import main as probe_main
    from concerto.eval.report import checkpoint_name
    from concerto.model import PointTransformerV3, PTv3Config
    from concerto.train.checkpoint import export_backbone
    from testkit.room_store import build_room_store

    url = build_room_store(tmp_path / "rooms", num_scenes=2, points_per_scene=2000, frames_per_scene=4,
                           image_size=(48, 36))
    run = tmp_path / "runs_elsewhere" / "tiny300"
    export_backbone(PointTransformerV3(PTv3Config.tiny()), run / "backbone.pth")
    (run / "checkpoints" / "step_00000300").mkdir(parents=True)
    assert checkpoint_name(str(run)) == checkpoint_name(str(run / "backbone.pth")) == "tiny300"
    assert checkpoint_name(str(run / "checkpoints" / "step_00000300")) == "tiny300-step_00000300"
    assert checkpoint_name("sonata") == "sonata" and checkpoint_name("random", "base") == "random-base"
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["--data", url, "--checkpoint", str(run), "--size", "160", "120"]) == 0
    printed = capsys.readouterr().out
    assert "pca_png: runs/pictures-tiny300/" in printed, printed
    assert len(list((work / "runs" / "pictures-tiny300").glob("*.png"))) == 3
    assert probe_main(["--data", url, "--checkpoint", "random", "--epochs", "2", "--val-fraction", "0.5",
                       "--no-progress"]) == 0
    assert "wrote runs/linear_probe-random-tiny/linear_probe.json" in capsys.readouterr().out
    assert (work / "runs" / "linear_probe-random-tiny" / "linear_probe.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
