"""concerto.load / Encoder.embed: checkpoints (training run, official layout), determinism, equivariance."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import concerto
from concerto.inference import (
    Encoder,
    InferenceError,
    canonical_grid_sample,
    center_shift,
    load,
    prepare_cloud,
    random_encoder,
)
from concerto.model import PointTransformerV3, PTv3Config
from concerto.train.checkpoint import export_backbone
from testkit.pretrain_store import write_store

FIXTURES = Path(__file__).parent / "fixtures"


def cloud(n=800, seed=0, extent=(2.0, 1.6, 1.0)):
    rng = np.random.default_rng(seed)
    coord = rng.uniform(0, 1, (n, 3)).astype(np.float32) * np.asarray(extent, np.float32)
    color = rng.integers(0, 256, (n, 3)).astype(np.uint8)
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    return coord, color, normal / np.linalg.norm(normal, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def encoder():
    return random_encoder("tiny", seed=3)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real training run: `concerto.train.train` for 2 steps on a tiny real shard store."""
    from concerto.config import load_config
    from concerto.train import train

    root = tmp_path_factory.mktemp("run")
    url = write_store(root / "store", shard_sizes=(2,), n_points=700, without_images=0)
    cfg = load_config("tiny")
    cfg.run.steps = 2
    cfg.run.save_every = 100
    train(cfg, url, root / "run", progress=False)
    return root / "run"


def test_import_concerto_is_light_and_exposes_load():
    import subprocess

    code = "import sys, concerto; assert 'torch' not in sys.modules; assert callable(concerto.load); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    assert concerto.Encoder is Encoder


def test_embed_shape_and_full_resolution(encoder):
    coord, color, normal = cloud()
    # duplicate a few points so several inputs share a voxel
    coord = np.concatenate([coord, coord[:50] + 1e-4])
    color = np.concatenate([color, color[:50]])
    normal = np.concatenate([normal, normal[:50]])
    feat = encoder.embed(coord, color, normal)
    assert feat.shape == (len(coord), encoder.channels) == (850, 32 + 32 + 64)
    assert feat.dtype == np.float32 and np.isfinite(feat).all()
    # points in the same 2 cm voxel carry the same feature (the voxel's), others differ
    prep = prepare_cloud(coord, color, normal, 0.02)
    same = prep.inverse[:50] == prep.inverse[800:]
    assert same.any()
    np.testing.assert_array_equal(feat[:50][same], feat[800:][same])
    assert len(np.unique(feat.round(5), axis=0)) > len(coord) // 2


def test_embed_is_deterministic(encoder):
    coord, color, normal = cloud(seed=1)
    a = encoder.embed(coord, color, normal)
    torch.manual_seed(123)  # a different global RNG state must not matter
    b = encoder.embed(coord, color, normal)
    np.testing.assert_array_equal(a, b)
    # a fresh encoder with the same seed gives the same features too
    np.testing.assert_array_equal(a, random_encoder("tiny", seed=3).embed(coord, color, normal))


def test_embed_is_permutation_equivariant(encoder):
    coord, color, normal = cloud(seed=2)
    # voxels with several points: the chosen representative must not depend on order
    coord = np.concatenate([coord, coord + np.float32(0.003)])
    color = np.concatenate([color, 255 - color])
    normal = np.concatenate([normal, -normal])
    feat = encoder.embed(coord, color, normal)
    perm = np.random.default_rng(7).permutation(len(coord))
    feat_p = encoder.embed(coord[perm], color[perm], normal[perm])
    np.testing.assert_array_equal(feat[perm], feat_p)


def test_canonical_grid_sample_ignores_order():
    coord, color, normal = cloud(n=400, seed=4)
    coord = center_shift(coord)
    vals = np.concatenate([color / 127.5 - 1, normal], 1).astype(np.float32)
    rows, grid, inv = canonical_grid_sample(coord, vals, 0.1)
    perm = np.random.default_rng(0).permutation(len(coord))
    rows_p, grid_p, inv_p = canonical_grid_sample(coord[perm], vals[perm], 0.1)
    np.testing.assert_array_equal(grid, grid_p)
    np.testing.assert_array_equal(coord[rows], coord[perm][rows_p])
    np.testing.assert_array_equal(inv[perm], inv_p)
    # every point maps to its own voxel, and the representative is the point nearest the centre
    cell = np.floor(coord / 0.1).astype(int)
    cell -= cell.min(0)
    np.testing.assert_array_equal(grid[inv], cell)
    frac = coord / 0.1 - np.floor(coord / 0.1) - 0.5
    dist = (frac ** 2).sum(1)
    for v in range(len(rows)):
        members = np.nonzero(inv == v)[0]
        assert dist[rows[v]] == dist[members].min()


def test_batching_does_not_change_features(encoder):
    clouds = [cloud(n=n, seed=s, extent=e) for n, s, e in ((500, 5, (1, 1, 1)), (700, 6, (3, 1, 0.5)), (200, 7, (0.5, 0.5, 0.5)))]
    alone = [encoder.embed(*c) for c in clouds]
    together = encoder.embed([c[0] for c in clouds], [c[1] for c in clouds], [c[2] for c in clouds], batch_size=3)
    pairs = encoder.embed([c[0] for c in clouds], [c[1] for c in clouds], [c[2] for c in clouds], batch_size=2)
    for a, b, c in zip(alone, together, pairs):
        np.testing.assert_allclose(a, b, atol=1e-4)
        np.testing.assert_allclose(a, c, atol=1e-4)


def test_embed_without_color_and_normal(encoder):
    coord, _, _ = cloud(n=500, seed=8)
    feat = encoder.embed(torch.from_numpy(coord))
    assert feat.shape == (500, encoder.channels)
    black = encoder.embed(coord, np.zeros((500, 3), np.uint8), np.zeros((500, 3), np.float32))
    np.testing.assert_array_equal(feat, black)


def test_embed_bad_input_names_the_field(encoder):
    coord, color, normal = cloud(n=100, seed=9)
    bad = coord.copy()
    bad[17, 1] = np.nan
    with pytest.raises(InferenceError, match=r"cloud 0: field 'coord' has non-finite values \(first at point 17\)"):
        encoder.embed(bad, color, normal)
    with pytest.raises(InferenceError, match=r"cloud 1: field 'color' has shape \[99, 3\]"):
        encoder.embed([coord, coord], [color, color[:99]], None)
    with pytest.raises(InferenceError, match="field 'coord' must be"):
        encoder.embed(np.zeros((0, 3), np.float32))


@pytest.mark.slow
def test_load_training_run_state_and_backbone(trained_run):
    teacher = load(trained_run)  # newest checkpoints/step_*/state.pt, teacher backbone
    assert isinstance(teacher, Encoder) and teacher.channels == 128
    student = load(trained_run, weights="student")
    exported = load(trained_run / "backbone.pth")  # official layout written by training
    for k, v in exported.model.state_dict().items():
        assert torch.equal(v, student.model.state_dict()[k]), k
    step_dir = next((trained_run / "checkpoints").iterdir())
    from_step = load(step_dir)
    for k, v in from_step.model.state_dict().items():
        assert torch.equal(v, teacher.model.state_dict()[k]), k
    # the teacher is an EMA of the student, not the same weights after 2 steps
    assert any(not torch.equal(v, student.model.state_dict()[k]) for k, v in teacher.model.state_dict().items())
    coord, color, normal = cloud(n=800, seed=10)
    f = teacher.embed(coord, color, normal)
    assert f.shape == (800, 128) and np.isfinite(f).all()
    np.testing.assert_array_equal(f, concerto.load(str(trained_run)).embed(coord, color, normal))


def test_load_official_layout(tmp_path):
    """A file the official code wrote (tests/fixtures, see test_golden_concerto), through
    the public load + embed: the official model's features. The official sampled cloud
    is one point per voxel and already centred, so embed keeps it as it is."""
    golden = np.load(FIXTURES / "concerto_golden.npz")
    path = FIXTURES / "concerto_golden_backbone.pth"
    feat = golden["inf_in_feat"]  # (coord, colour / 255, normal)
    coord, color, normal = golden["inf_in_coord"], np.round(feat[:, 3:6] * 255).astype(np.uint8), feat[:, 6:9]
    official = golden["inf_feat"]
    np.testing.assert_allclose(load(path).embed(coord, color, normal), official, atol=1e-4)
    # DDP / wrapped prefixes are stripped
    raw = torch.load(path, weights_only=True)
    torch.save({"config": raw["config"], "state_dict": {"module.backbone." + k: v for k, v in raw["state_dict"].items()}},
               tmp_path / "wrapped.pth")
    np.testing.assert_allclose(load(tmp_path / "wrapped.pth").embed(coord, color, normal), official, atol=1e-4)


def test_export_then_load_round_trip(tmp_path):
    """Our exporter writes the official layout and load reads it back exactly (a round
    trip: that the layout is the official one is test_load_official_layout's)."""
    torch.manual_seed(0)
    model = PointTransformerV3(PTv3Config.tiny())
    path = export_backbone(model, tmp_path / "sonata_like.pth")
    raw = torch.load(path, weights_only=True)
    official = torch.load(FIXTURES / "concerto_golden_backbone.pth", weights_only=True)
    assert set(raw) == set(official) == {"config", "state_dict"}
    enc = load(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, enc.model.state_dict()[k]), k
    coord, color, normal = cloud(n=600, seed=11)
    np.testing.assert_array_equal(Encoder(model).embed(coord, color, normal), enc.embed(coord, color, normal))


def test_input_colour_range_travels_with_the_model_config(tmp_path):
    """PTv3Config.input_color_range: exports carry it; an export or released file
    without it is "unit"; a training state takes views.color_range ("symmetric"
    when its config predates that field), also through config overrides."""
    torch.manual_seed(0)
    model = PointTransformerV3(PTv3Config.tiny(input_color_range="symmetric"))
    assert load(export_backbone(model, tmp_path / "sym.pth")).color_range == "symmetric"
    old = {k: v for k, v in PTv3Config.tiny().to_dict().items() if k != "input_color_range"}
    torch.save({"config": old, "state_dict": model.state_dict()}, tmp_path / "old.pth")
    assert load(tmp_path / "old.pth").color_range == "unit"
    weights = {"backbone." + k: v for k, v in model.state_dict().items()}
    for views, expected in (({"color_range": "unit"}, "unit"), (None, "symmetric")):
        config = {"model": {"preset": "tiny", "grid_size": 0.02}, **({"views": views} if views else {})}
        torch.save({"teacher": weights, "student": weights, "config": config}, tmp_path / "state.pt")
        assert load(tmp_path / "state.pt").color_range == expected
        assert load(tmp_path / "state.pt", attention_backend="sdpa").color_range == expected


def test_load_errors_name_the_checkpoint(tmp_path):
    with pytest.raises(InferenceError, match="no such file or folder"):
        load(tmp_path / "missing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InferenceError, match="folder has no state.pt"):
        load(tmp_path / "empty")
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InferenceError, match="truncated.pth: cannot be read"):
        load(bad)
    notes = tmp_path / "notes.txt"
    notes.write_text("my scan notes\n")
    with pytest.raises(InferenceError, match=r"notes.txt: a text file \(starts with b'my scan '\); expected a file "
                                             r"written by torch.save: an official-layout backbone"):
        load(notes)
    torch.save({"config": PTv3Config.tiny().to_dict(), "state_dict": {"nope": torch.zeros(1)}}, tmp_path / "keys.pth")
    with pytest.raises(InferenceError, match="keys.pth.*missing keys"):
        load(tmp_path / "keys.pth")


def test_pretrained_names_are_known():
    from concerto.model.checkpoint import pretrained_location

    assert pretrained_location("sonata") == ("facebook/sonata", "sonata.pth")
    for size in ("small", "base", "large"):
        assert pretrained_location(f"concerto_{size}") == ("Pointcept/Concerto", f"concerto_{size}.pth")


def test_released_name_download_failure_is_one_clear_error(monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError(f"no network for {kwargs['repo_id']}/{kwargs['filename']}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(InferenceError, match=r"checkpoint concerto_base: download .* failed .*Pointcept/Concerto/concerto_base.pth"):
        load("concerto_base")


def _load_released(name: str, env: dict, timeout=120):
    import os
    import subprocess
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (f"import concerto\ntry:\n    e = concerto.load({name!r})\n    print('loaded', e.channels)\n"
            f"except Exception as exc:\n    print(type(exc).__name__, exc)")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(root), **env},
                         capture_output=True, text=True, timeout=timeout)
    return out.stdout.strip(), time.monotonic() - t0


def test_released_name_offline_fails_at_once_and_a_cached_copy_loads(tmp_path):
    """The user's step, offline: no retries for tens of seconds; with the file in the
    Hugging Face cache it loads without the network."""
    from testkit.ports import free_ports

    home = {"HF_HOME": str(tmp_path / "hf")}
    said, took = _load_released("sonata", {**home, "HF_HUB_OFFLINE": "1"})
    assert said.startswith("InferenceError released weights 'sonata' (facebook/sonata/sonata.pth) are not in the "
                           "Hugging Face cache") and "HF_HUB_OFFLINE is set" in said, said
    (closed,) = free_ports(1)  # nothing listens there: a hub that cannot be reached
    said, took = _load_released("sonata", {**home, "HF_ENDPOINT": f"http://127.0.0.1:{closed}"})
    assert f"127.0.0.1:{closed} cannot be reached" in said and took < 20, (said, took)
    # the cache's own layout (refs/main -> snapshots/<revision>/<file>)
    repo = tmp_path / "hf" / "hub" / "models--facebook--sonata"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    export_backbone(PointTransformerV3(PTv3Config.tiny()), repo / "snapshots" / ("0" * 40) / "sonata.pth")
    said, _ = _load_released("sonata", {**home, "HF_HUB_OFFLINE": "1"})
    assert said.startswith("loaded"), said


def test_exact_distance_ties_are_broken_by_values_not_order(encoder):
    # points mirrored about their voxel centre (some exactly equally near it) and exact
    # duplicates with another colour (always tied): the colour decides, not the order
    rng = np.random.default_rng(12)
    centres = (np.unique(rng.integers(0, 40, (300, 3)), axis=0) + 0.5) * 0.02
    offset = rng.uniform(-0.004, 0.004, (len(centres), 3))
    coord = np.concatenate([centres + offset, centres - offset, centres - offset]).astype(np.float64)
    color = rng.integers(0, 256, (len(coord), 3)).astype(np.uint8)
    vals = np.concatenate([color / 127.5 - 1, np.zeros((len(coord), 3))], 1)
    rows, _, _ = canonical_grid_sample(coord, vals, 0.02)
    perm = np.random.default_rng(1).permutation(len(coord))
    rows_p, _, _ = canonical_grid_sample(coord[perm], vals[perm], 0.02)
    np.testing.assert_array_equal(coord[rows], coord[perm][rows_p])
    np.testing.assert_array_equal(color[rows], color[perm][rows_p])
    feat = encoder.embed(coord.astype(np.float32), color)
    np.testing.assert_array_equal(feat[perm], encoder.embed(coord[perm].astype(np.float32), color[perm]))


def test_inference_module_command_prints_usage_and_checks_a_checkpoint(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "concerto.inference"]
    out = subprocess.run(cmd + ["--help"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m concerto.inference"), out
    assert "concerto.load(CHECKPOINT).embed" in out.stdout
    export_backbone(PointTransformerV3(PTv3Config.tiny()), tmp_path / "backbone.pth")
    out = subprocess.run(cmd + [str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and f"{tmp_path}: PTv3 encoder" in out.stdout and "channels per point" in out.stdout, out
    (tmp_path / "notes.txt").write_text("not weights")
    out = subprocess.run(cmd + [str(tmp_path / "notes.txt")], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "notes.txt: a text file" in out.stderr, out
