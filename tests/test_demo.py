"""python -m concerto.demo: every command end to end on small PLY scans the test writes, with and without
colour and normals, against results computed directly with concerto.inference / the segmentor."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from concerto.demo.__main__ import main
from concerto.demo.features import estimate_normals, plan_chunks, embed_scan
from concerto.demo.scan import ScanError, read_scan
from concerto.inference import Encoder, prepare_cloud, random_encoder

SEED = 5  # of every --checkpoint random in this file


def room(n=3000, seed=0, size=(3.0, 2.5, 2.2)):
    """A box room's floor and four walls: coord float32 [N, 3] m, color uint8, normal float32 (into the room)."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, 1, (n, 3)) * size
    side = rng.integers(0, 5, n)
    normal = np.zeros((n, 3))
    surfaces = [(2, 0.0, 1), (0, 0.0, 1), (0, size[0], -1), (1, 0.0, 1), (1, size[1], -1)]  # (axis, at, inward)
    for s, (axis, value, sign) in enumerate(surfaces):
        c[side == s, axis] = value
        normal[side == s, axis] = sign
    color = (rng.uniform(0, 1, (n, 3)) * 255).astype(np.uint8)
    return c.astype(np.float32), color, normal.astype(np.float32)


def write_ply(path, coord, color=None, normal=None, faces=None):
    """Binary PLY with x y z [nx ny nz] [red green blue] vertices (and optional triangle faces)."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")] if normal is not None else []
    fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")] if color is not None else []
    v = np.empty(len(coord), dtype=fields)
    v["x"], v["y"], v["z"] = np.asarray(coord, np.float32).T
    if normal is not None:
        v["nx"], v["ny"], v["nz"] = np.asarray(normal, np.float32).T
    if color is not None:
        v["red"], v["green"], v["blue"] = np.asarray(color).T
    props = "".join(f"property {'float' if t == '<f4' else 'uchar'} {k}\n" for k, t in fields)
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(coord)}\n{props}"
    body = v.tobytes()
    if faces is not None:
        header += f"element face {len(faces)}\nproperty list uchar int vertex_indices\n"
        f = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        f["n"], f["i"] = 3, faces
        body += f.tobytes()
    with open(path, "wb") as fh:
        fh.write((header + "end_header\n").encode() + body)
    return path


def read_ply_vertices(path):
    import trimesh

    data = trimesh.load(str(path), process=False).metadata["_ply_raw"]["vertex"]["data"]
    coord = np.stack([data[k] for k in "xyz"], 1)
    rgb = np.stack([data[k] for k in ("red", "green", "blue")], 1)
    return coord, rgb


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    coord, color, normal = room()
    return {"full": write_ply(root / "full.ply", coord, color, normal),
            "bare": write_ply(root / "bare.ply", coord),
            "arrays": (coord, color, normal), "root": root}


@pytest.fixture(scope="module")
def encoder():
    return random_encoder("tiny", seed=SEED)


def run(*argv) -> int:
    return main([str(a) for a in argv] + ["--no-progress"])


RANDOM = ("--checkpoint", "random", "--seed", SEED)


# ----------------------------------------------------------------------------- pca


def test_pca_colours_every_input_point(scans, encoder, tmp_path, capsys):
    coord, color, normal = scans["arrays"]
    assert run("pca", scans["full"], *RANDOM, "--output", tmp_path, "--save-features") == 0
    out_coord, rgb = read_ply_vertices(tmp_path / "full_pca.ply")
    assert len(out_coord) == len(coord)
    np.testing.assert_allclose(out_coord, coord, atol=1e-6)  # the file's own coordinates
    from concerto.eval.pictures import pca_rgb

    feat = encoder.embed(coord, color, normal)
    np.testing.assert_array_equal(np.load(tmp_path / "full_features.npy"), feat)
    expected = np.clip(np.round(pca_rgb(feat) * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb, expected)
    from PIL import Image

    png = np.asarray(Image.open(tmp_path / "full_pca.png"))
    assert png.shape[1] == 2 * 480 + 8 and png.shape[0] > 360  # top | perspective, plus a title strip
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 100
    assert (tmp_path / "full_rgb.png").is_file()
    assert "note:" not in capsys.readouterr().err  # colour and normals came from the file


def test_pca_without_colour_or_normals_says_what_it_assumed(scans, encoder, tmp_path, capsys):
    coord, _, _ = scans["arrays"]
    assert run("pca", scans["bare"], *RANDOM, "--output", tmp_path, "--save-features", "--pca-dims", "6",
               "--dtype", "float16") == 0
    err = capsys.readouterr().err
    assert "bare.ply: no colour in the file; the encoder sees black (0)" in err
    assert "bare.ply: no normals in the file; estimated" in err
    assert len(read_ply_vertices(tmp_path / "bare_pca.ply")[0]) == len(coord)
    assert not (tmp_path / "bare_rgb.png").exists()
    saved = np.load(tmp_path / "bare_features.npy")
    assert saved.shape == (len(coord), 6) and saved.dtype == np.float16
    # what it ran is the encoder on black colour and the estimated normals
    feat = encoder.embed(coord, None, estimate_normals(coord))
    from concerto.demo.features import pca_basis

    np.testing.assert_allclose(saved, pca_basis([feat], 6).project(feat).astype(np.float16), atol=2e-2, rtol=1e-2)


# ----------------------------------------------------------------------------- similarity


def test_similarity_is_largest_at_the_query(scans, tmp_path, capsys):
    coord, _, _ = scans["arrays"]
    target = 123
    q = ",".join(f"{v + 0.001:.6f}" for v in coord[target])
    assert run("similarity", scans["full"], *RANDOM, "--output", tmp_path, "--query", q) == 0
    assert f"query: point {target}," in capsys.readouterr().err
    sim = np.load(tmp_path / "full_similarity.npy")
    assert sim.shape == (len(coord),)
    assert sim[target] == pytest.approx(1.0, abs=1e-5) and sim.max() <= sim[target] + 1e-5
    assert sim.min() < 0.9  # not a constant map
    out_coord, rgb = read_ply_vertices(tmp_path / "full_similarity.ply")
    assert len(out_coord) == len(coord)
    from concerto.eval.pictures import colormap

    top = np.round(colormap(np.array([0.0, 1.0]))[1] * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[target], top)  # the query has the map's top colour
    assert (tmp_path / "full_similarity.png").stat().st_size > 1000
    # the same by index, on the scan without colour and normals
    assert run("similarity", scans["bare"], *RANDOM, "--output", tmp_path, "--query-index", 7) == 0
    sim = np.load(tmp_path / "bare_similarity.npy")
    assert sim[7] == pytest.approx(1.0, abs=1e-5) and sim.max() <= sim[7] + 1e-5


# ----------------------------------------------------------------------------- segment


@pytest.fixture(scope="module")
def heads(tmp_path_factory, encoder):
    """A linear and a decoder segmentor.pth as concerto.eval.segment writes them, and a released-layout head."""
    from concerto.eval.segment import export_segmentor
    from concerto.eval.segmentor import build_segmentor
    from concerto.train.checkpoint import export_backbone

    root = tmp_path_factory.mktemp("heads")
    names = ["floor", "wall", "chair", "table", "other"]
    out = {"names": names}
    for mode in ("linear", "decoder"):
        model = build_segmentor(encoder.model, mode, len(names), seed=2)
        out[mode] = export_segmentor(model, names, root / f"segmentor_{mode}.pth")
    gen = torch.Generator().manual_seed(0)
    channels = sum(encoder.config.enc_channels)
    out["w"] = torch.randn(20, channels, generator=gen) * 0.1
    out["b"] = torch.randn(20, generator=gen) * 0.1
    torch.save({"config": {"backbone_out_channels": channels, "num_classes": 20},
                "state_dict": {"seg_head.weight": out["w"], "seg_head.bias": out["b"]}}, root / "released_head.pth")
    out["released"] = root / "released_head.pth"
    out["backbone"] = export_backbone(encoder.model, root / "backbone.pth")
    return out


def linear_labels(encoder, coord, color, normal, weight, bias):
    """The head's argmax computed directly: features of every stage (``Encoder`` levels = all) @ W.T + b."""
    every_stage = Encoder(encoder.model, levels=encoder.config.num_stages - 1)
    feat = torch.from_numpy(every_stage.embed(coord, color, normal))
    return (feat @ weight.T + bias).argmax(1).numpy()


def test_segment_labels_are_the_heads_argmax(scans, heads, encoder, tmp_path, capsys):
    coord, color, normal = scans["arrays"]
    assert run("segment", scans["full"], "--head", heads["linear"], "--output", tmp_path) == 0
    labels = np.load(tmp_path / "full_labels.npy")
    head = torch.load(heads["linear"], weights_only=True)["head"]
    expected = linear_labels(encoder, coord, color, normal, head["weight"], head["bias"])
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(labels)) > 1
    counts = json.loads((tmp_path / "full_counts.json").read_text())
    assert counts["points"] == len(coord)
    assert list(counts["counts"].values()) == np.bincount(labels, minlength=5).tolist()
    assert list(counts["counts"]) == heads["names"]
    out_coord, rgb = read_ply_vertices(tmp_path / "full_segment.ply")
    assert len(out_coord) == len(coord)
    assert len(np.unique(rgb, axis=0)) == len(np.unique(labels))  # one colour per class
    biggest = max(counts["counts"], key=counts["counts"].get)
    assert capsys.readouterr().err.splitlines()[-5].split()[0] == biggest  # the printed table, largest first
    assert (tmp_path / "full_segment.png").is_file()


def test_segment_released_head_and_decoder(scans, heads, encoder, tmp_path):
    coord, color, normal = scans["arrays"]
    assert run("segment", scans["full"], "--head", heads["released"], "--checkpoint", heads["backbone"],
               "--output", tmp_path / "rel") == 0
    labels = np.load(tmp_path / "rel" / "full_labels.npy")
    np.testing.assert_array_equal(labels, linear_labels(encoder, coord, color, normal, heads["w"], heads["b"]))
    counts = json.loads((tmp_path / "rel" / "full_counts.json").read_text())["counts"]
    assert len(counts) == 20 and "wall" in counts  # 20 classes: the ScanNet names
    # a decoder segmentor: the Segmentor's argmax on the voxel representatives, broadcast to their points
    assert run("segment", scans["bare"], "--head", heads["decoder"], "--output", tmp_path / "dec",
               "--normals", "zero") == 0
    from concerto.demo.segment import load_head

    model = load_head(heads["decoder"]).model
    prep = prepare_cloud(coord, None, None, 0.02)
    with torch.no_grad():
        logits = model(*(torch.from_numpy(a) for a in (prep.coord, prep.feat, prep.grid_coord)),
                       torch.tensor([len(prep.coord)]))
    np.testing.assert_array_equal(np.load(tmp_path / "dec" / "bare_labels.npy"), logits.argmax(1).numpy()[prep.inverse])


# ----------------------------------------------------------------------------- batch


def test_batch_features_equal_single_scan_runs(scans, encoder, tmp_path):
    coord, color, normal = scans["arrays"]
    folder = tmp_path / "in"
    folder.mkdir()
    c2, col2, n2 = room(1500, seed=1, size=(2.0, 2.0, 2.0))
    np.savez(folder / "second.npz", coord=c2, color=col2, normal=n2)
    scene = folder / "scene0000_00"  # a Pointcept scene folder
    scene.mkdir()
    c3, col3, _ = room(1200, seed=2)
    np.save(scene / "coord.npy", c3)
    np.save(scene / "color.npy", col3)
    assert run("batch", folder, scans["full"], scans["full"], *RANDOM, "--output", tmp_path / "out",
               "--batch-size", 2, "--normals", "zero") == 0
    index = json.loads((tmp_path / "out" / "features.json").read_text())
    assert [s["name"] for s in index["scans"]] == ["scene0000_00", "second", "full", "full_2"]
    expect = {"scene0000_00": (c3, col3), "second": (c2, col2), "full": (coord, color), "full_2": (coord, color)}
    for s in index["scans"]:
        feat = np.load(tmp_path / "out" / s["file"])
        c, col = expect[s["name"]]
        assert s["points"] == len(c) and s["channels"] == encoder.channels
        # batched rows go through the same layers in a bigger matmul: equal up to float rounding
        # (the tolerance of tests/test_inference.py's batching test)
        np.testing.assert_allclose(feat, encoder.embed(c, col, None), atol=1e-4)
    # fewer channels: one PCA over all scans, its basis written
    assert run("batch", folder, *RANDOM, "--output", tmp_path / "pca", "--pca-dims", 4) == 0
    basis = np.load(tmp_path / "pca" / "pca_basis.npz")
    second = np.load(tmp_path / "pca" / "second.npy")
    assert second.shape == (len(c2), 4)
    single = encoder.embed(c2, col2, n2)
    np.testing.assert_allclose(second, (single - basis["mean"]) @ basis["axes"], rtol=1e-4, atol=1e-4)
    assert np.allclose(basis["axes"].T @ basis["axes"], np.eye(4), atol=1e-5)


# ----------------------------------------------------------------------------- video


def test_pca_video_frames_turn(scans, tmp_path):
    assert run("pca-video", scans["full"], *RANDOM, "--output", tmp_path, "--frames", 4, "--size", 160, 120) == 0
    from PIL import Image

    frames = [np.asarray(Image.open(tmp_path / "full_turntable" / f"frame_{i:03d}.png")) for i in range(4)]
    assert all(f.shape == (120, 160, 3) for f in frames)
    for i in range(4):
        for j in range(i + 1, 4):
            assert (frames[i] != frames[j]).any(axis=2).mean() > 0.05, (i, j)
    gif = Image.open(tmp_path / "full_turntable.gif")
    assert gif.n_frames == 4
    assert len(read_ply_vertices(tmp_path / "full_pca.ply")[0]) == len(scans["arrays"][0])


# ----------------------------------------------------------------------------- big scans


def test_tiles_cover_every_point_and_match_one_pass(encoder):
    coord, color, normal = room(12000, seed=3, size=(6.0, 5.0, 2.5))
    plan = plan_chunks(coord, 0.02, 6000, 1.0)
    assert len(plan) > 1
    cores = np.concatenate([core for core, _ in plan])
    assert np.array_equal(np.sort(cores), np.arange(len(coord)))  # a partition
    full, _ = embed_scan(encoder, coord, color, normal)
    tiled, info = embed_scan(encoder, coord, color, normal, max_points=6000, overlap=1.0)
    assert info.chunks == len(plan) and info.max_voxels <= 6000
    cos = (full * tiled).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(tiled, axis=1)
    assert cos.min() > 0.999, cos.min()  # measured: 1.0000 mean, 0.9999 min
    # a tile holding everything is exactly one pass
    one, info = embed_scan(encoder, coord, color, normal, max_points=10 ** 6)
    np.testing.assert_array_equal(one, full)


def test_max_points_on_the_command_line(scans, tmp_path, capsys):
    assert run("pca", scans["full"], *RANDOM, "--output", tmp_path, "--max-points", 1500,
               "--chunk-overlap", 0.5) == 0
    assert "tiles of at most" in capsys.readouterr().err
    assert len(read_ply_vertices(tmp_path / "full_pca.ply")[0]) == len(scans["arrays"][0])


# ----------------------------------------------------------------------------- inputs


def test_readers_agree_across_formats(tmp_path):
    coord, color, normal = room(500)
    ref = read_scan(write_ply(tmp_path / "a.ply", coord, color, normal))
    np.save(tmp_path / "b.npy", np.concatenate([coord, color, normal], 1))
    np.save(tmp_path / "c.npy", {"coord": coord, "color": color, "normal": normal}, allow_pickle=True)
    np.savez(tmp_path / "d.npz", coord=coord, color=color, normal=normal)
    torch.save({"coord": coord, "color": color, "normal": normal, "segment20": np.zeros(500, np.int64)},
               tmp_path / "e.pth")
    for name in ("b.npy", "c.npy", "d.npz", "e.pth"):
        s = read_scan(tmp_path / name)
        np.testing.assert_array_equal(s.coord, ref.coord)
        np.testing.assert_array_equal(s.color, ref.color)
        np.testing.assert_allclose(s.normal, ref.normal)
    # colours stored as 0..1 floats are scaled, and the note says so
    np.savez(tmp_path / "f.npz", coord=coord, color=color / 255.0)
    s = read_scan(tmp_path / "f.npz")
    np.testing.assert_array_equal(s.color, color)
    assert any("colour values are in 0..1; scaled to 0..255" in n for n in s.notes), s.notes


def test_a_mesh_gives_vertex_normals_or_samples(tmp_path):
    v = np.array([[0, 0, 0], [2, 0, 0], [2, 2, 0], [0, 2, 0]], np.float32)
    path = write_ply(tmp_path / "floor.ply", v, faces=np.array([[0, 1, 2], [0, 2, 3]]))
    s = read_scan(path)
    assert len(s) == 4 and np.allclose(np.abs(s.normal), [0, 0, 1])
    s = read_scan(path, mesh_samples=1000)
    assert len(s) == 1000 and np.allclose(s.coord[:, 2], 0) and (s.coord[:, :2] >= 0).all()
    assert (s.coord[:, :2] <= 2).all() and np.allclose(np.abs(s.normal[:, 2]), 1)


def test_estimated_normals_face_into_the_room():
    coord, _, normal = room(4000, seed=4)
    est = estimate_normals(coord)
    assert np.allclose(np.linalg.norm(est, axis=1), 1, atol=1e-5)
    # the room's own (inward) normals, away from the edges where two surfaces meet
    inner = ((coord[:, :2] > 0.2) & (coord[:, :2] < np.array([2.8, 2.3]))).all(1) | (coord[:, 2] > 0.2)
    inner &= (coord[:, 2] > 0.2) | (normal[:, 2] == 1)
    agree = (est[inner] * normal[inner]).sum(1)
    assert np.mean(agree > 0.9) > 0.9
    up = estimate_normals(coord, orient="up")
    assert (up[normal[:, 2] == 1][:, 2] > 0.9).mean() > 0.9


def written(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d: write_ply(d / "nan.ply", np.array([[0, 0, 0], [np.nan, 1, 1], [1, 1, 1]], np.float32)),
     "nan.ply: field 'coord' has 1 points with NaN or infinite values (first at point 1)"),
    (lambda d: np.savez(d / "nocoord.npz", xyz=np.zeros((4, 3))) or d / "nocoord.npz",
     "nocoord.npz: field 'coord' is missing (keys: ['xyz'])"),
    (lambda d: np.save(d / "flat.npy", np.zeros((4, 2))) or d / "flat.npy",
     "flat.npy: an array of shape [4, 2]; expected [N, 3]"),
    (lambda d: np.savez(d / "badcol.npz", coord=np.zeros((4, 3)), color=np.zeros((3, 3))) or d / "badcol.npz",
     "badcol.npz: field 'color' has shape [3, 3], expected [4, 3]"),
    (lambda d: written(d / "x.las", b"LASF"), "x.las: unknown scan format '.las'"),
    (lambda d: written(d / "junk.ply", b"not a ply"), "junk.ply: not a readable PLY file"),
    (lambda d: written(d / "cut.npz", b"PK\x03\x04 truncated"), "cut.npz: not a readable .npz file"),
    (lambda d: written(d / "text.npy", b"1 2 3"), "text.npy: not a readable .npy file"),
])
def test_bad_scans_fail_with_one_line_naming_file_and_field(tmp_path, capsys, make, message):
    path = make(tmp_path)
    assert run("pca", path, *RANDOM, "--output", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err
    with pytest.raises(ScanError):
        read_scan(path)


def test_bad_options_fail_clearly(scans, heads, tmp_path, capsys):
    assert run("segment", scans["full"], "--head", heads["released"], "--output", tmp_path) == 2
    assert "a released linear head; give its backbone with --checkpoint" in capsys.readouterr().err
    assert run("similarity", scans["full"], *RANDOM, "--output", tmp_path, "--query", "1,2") == 2
    assert "--query must be three numbers x,y,z" in capsys.readouterr().err
    assert run("similarity", scans["full"], *RANDOM, "--output", tmp_path, "--query-index", 10 ** 6) == 2
    assert "outside the scan's 3000 points" in capsys.readouterr().err
    assert run("batch", scans["full"], *RANDOM, "--output", tmp_path, "--pca-dims", 999) == 2
    assert "--pca-dims must be in [1, 128]" in capsys.readouterr().err
    assert run("pca", tmp_path / "missing.ply", *RANDOM, "--output", tmp_path) == 2
    assert "missing.ply: no such file or folder" in capsys.readouterr().err


def test_module_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "concerto.demo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("pca", "similarity", "segment", "batch", "pca-video"):
        assert cmd in out.stdout
