"""`python -m concerto.train`: config, tiny runs, exact resume, DDP, bad input."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from concerto.config import ConfigError, PretrainConfig, load_config
from concerto.train import main, train
from pipelines.store import commit
from testkit.pretrain_store import write_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("store") / "s", shard_sizes=(2, 2), n_points=700, without_images=1)


def tiny(steps=4, **sets):
    cfg = load_config("tiny", [f"{k}={v}" for k, v in sets.items()])
    cfg.run.steps = steps
    cfg.run.save_every = 100
    return cfg


def states(run: Path, step: int) -> dict:
    return torch.load(run / "checkpoints" / f"step_{step:08d}" / "state.pt", weights_only=False)


def assert_same_params(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol), k


# ----------------------------------------------------------------------------- config


def test_unknown_config_key_is_one_clear_error(capsys, store_url):
    with pytest.raises(ConfigError, match="unknown config key 'optim.nope'"):
        load_config("tiny", ["optim.nope=1"])
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_config("tiny", ["modle.preset=base"])
    assert main(["--data", store_url, "--config", "tiny", "--set", "distill.bogus=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "distill.bogus" in err


def test_train_help_lists_every_preset(capsys):
    from concerto.config import PRESETS

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert len(PRESETS) == 5 and f"a preset ({' | '.join(sorted(PRESETS))})" in text, text
    assert "--init-from" in text


def test_config_file_and_sets(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: tiny\noptim:\n  lr: 0.001\n  betas: [0.8, 0.9]\nviews:\n  max_points: 300\n")
    cfg = load_config(str(f), ["distill.mask_weight=0.5", "optim.amp=true"])
    assert cfg.optim.lr == 0.001 and cfg.optim.betas == (0.8, 0.9) and cfg.views.max_points == 300
    assert cfg.distill.mask_weight == 0.5 and cfg.optim.amp is True and cfg.model.preset == "tiny"
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"preset": "base", "run": {"stepz": 3}}))
    with pytest.raises(ConfigError, match="'run.stepz'"):
        load_config(str(j))
    with pytest.raises(ConfigError, match="expected a number"):
        load_config("tiny", ["optim.lr=fast"])
    base = PretrainConfig.base()
    assert (base.distill.mask_weight, base.distill.roll_mask_weight, base.distill.unmask_weight,
            base.cross_modal.weight) == (1 / 8, 1 / 8, 2 / 8, 4 / 8)


def test_layer_decay_groups_and_schedules():
    from concerto.train import apply_schedules, layer_decay_groups

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Linear(2, 2)
            self.enc = torch.nn.ModuleDict({f"enc{e}": torch.nn.ModuleDict(
                {f"block{b}": torch.nn.Linear(2, 2) for b in range(d)}) for e, d in enumerate((1, 2))})
            self.head = torch.nn.Linear(2, 2)

    net = Net()
    groups = layer_decay_groups(net, 0.004, 0.9, (1, 2))
    lr_of = {id(p): g["max_lr"] for g in groups for p in g["params"]}
    expect = {"embedding": 0.004, "head": 0.004, "enc.enc1.block1": 0.004, "enc.enc1.block0": 0.004 * 0.9,
              "enc.enc0.block0": 0.004 * 0.81}
    for name, p in net.named_parameters():
        assert lr_of[id(p)] == pytest.approx(expect[name.rsplit(".", 1)[0]]), name
    cfg = tiny(100)
    opt = torch.optim.AdamW(groups, lr=0.004)
    first = apply_schedules(opt, cfg, 0)
    assert first["lr"] == pytest.approx(0.0004) and first["weight_decay"] == pytest.approx(0.04)
    assert first["teacher_temp"] == pytest.approx(0.04) and first["momentum"] == pytest.approx(0.994)
    end = apply_schedules(opt, cfg, 99)
    assert end["weight_decay"] == pytest.approx(0.2, abs=1e-3) and end["teacher_temp"] == pytest.approx(0.07)
    assert opt.param_groups[-1]["lr"] < opt.param_groups[0]["lr"]


# ----------------------------------------------------------------------------- bad data


def test_store_without_manifest_and_empty_store(tmp_path, capsys):
    (tmp_path / "none").mkdir()
    assert main(["--data", str(tmp_path / "none"), "--config", "tiny", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data store") and "\n" not in err and "manifest" in err.lower()
    commit(str(tmp_path / "empty"), None, [])
    assert main(["--data", str(tmp_path / "empty"), "--config", "tiny", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "empty" in err and "\n" not in err


# ----------------------------------------------------------------------------- image encoder


def test_image_encoder_patch_features_and_bad_id(tmp_path):
    from concerto.image_encoder import ImageEncoder, ImageEncoderError

    enc = ImageEncoder.from_config(dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, patch_size=14, image_size=42))
    assert enc.grid.grid_hw == (3, 3) and enc.channels == 16
    out = enc(torch.randn(2, 3, 42, 42))
    assert out.shape == (2, 3, 3, 16)
    direct = enc.model(pixel_values=torch.randn(1, 3, 42, 42))
    assert direct.last_hidden_state.shape[1] == 1 + 9  # CLS dropped by the wrapper
    assert not any(p.requires_grad for p in enc.parameters())
    # a SigLIP-style vision tower (no CLS token, patch 16) through the same interface
    from transformers import SiglipVisionConfig

    sig = ImageEncoder.from_config(SiglipVisionConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                      intermediate_size=32, patch_size=16, image_size=48))
    assert sig.grid.grid_hw == (3, 3) and sig(torch.randn(1, 3, 48, 48)).shape == (1, 3, 3, 16)
    (tmp_path / "no_model").mkdir()
    for bad in (str(tmp_path / "no_model"),):
        with pytest.raises(ImageEncoderError) as err:
            ImageEncoder.from_pretrained(bad)
        assert bad in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_tiny_run_trains_and_resumes_exactly(store_url, tmp_path):
    full = train(tiny(4), store_url, tmp_path / "full", progress=False)
    assert full["step"] == 4
    last = full["last"]
    for k in ("mask", "roll_mask", "unmask", "cross_modal", "loss"):
        assert k in last and torch.isfinite(torch.tensor(last[k])), k
    a = train(tiny(4), store_url, tmp_path / "split", progress=False, stop_after=2)
    assert a["step"] == 2 and (tmp_path / "split/checkpoints/step_00000002/state.pt").is_file()
    b = train(tiny(4), store_url, tmp_path / "split", progress=False, resume=True)
    assert b["step"] == 4
    s_full, s_split = states(tmp_path / "full", 4), states(tmp_path / "split", 4)
    assert_same_params(s_full["student"], s_split["student"])
    assert_same_params(s_full["teacher"], s_split["teacher"])
    assert s_full["loader"] == s_split["loader"]
    # artefacts: official-layout backbone, tensorboard events, resolved config
    from concerto.model import load_checkpoint

    model = load_checkpoint(str(tmp_path / "full" / "backbone.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, s_full["student"]["backbone." + k]), k
    assert list((tmp_path / "full" / "tb").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "full" / "config.json").read_text())["model"]["preset"] == "tiny"
    # the teacher moved towards the student but is not it
    k = next(k for k in s_full["teacher"] if k.endswith("weight") and "backbone" in k)
    assert not torch.equal(s_full["teacher"][k], s_full["student"][k])


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_torchrun_two_ranks_tiny(store_url, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, torch, torch.distributed as dist
        from concerto.config import load_config
        from concerto.train import train
        cfg = load_config("tiny", ["run.steps=24", "run.save_every=12", "data.batch_size=1"])
        s = train(cfg, {store_url!r}, {str(tmp_path / 'run')!r}, progress=False)
        rank = dist.get_rank()
        torch.save(s, {str(tmp_path)!r} + f"/summary{{rank}}.pt")
        dist.destroy_process_group()
    """))
    # the student's final parameters are in the rank-0 checkpoint; every rank also
    # reports a checksum through the summary (grad all-reduce keeps them equal)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29613", str(script)], env=_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0, s1 = (torch.load(tmp_path / f"summary{r}.pt", weights_only=False) for r in (0, 1))
    assert s0["world_size"] == 2 and s0["step"] == s1["step"] == 24
    assert torch.isfinite(torch.tensor(s0["last"]["loss"])) and torch.isfinite(torch.tensor(s1["last"]["loss"]))
    assert s0["param_checksum"] == s1["param_checksum"]
    state = states(tmp_path / "run", 24)
    assert state["world_size"] == 2


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_parameters(store_url, tmp_path):
    cmd = [sys.executable, "-m", "concerto.train", "--data", store_url, "--config", "tiny", "--steps", "8",
           "--set", "run.save_every=2", "--no-progress"]
    ref = subprocess.run(cmd + ["--output", str(tmp_path / "ref")], env=_env(), capture_output=True, text=True,
                         timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--output", str(run)], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (run / "checkpoints" / "step_00000004").is_dir() and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "step_00000004").is_dir()
    assert not (run / "checkpoints" / "step_00000008").is_dir()
    res = subprocess.run(cmd + ["--output", str(run), "--resume"], env=_env(), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from step 4 of 8" in res.stdout, res.stdout
    a, b = states(tmp_path / "ref", 8), states(run, 8)
    assert_same_params(a["student"], b["student"])
    assert_same_params(a["teacher"], b["teacher"])


@pytest.mark.slow
def test_resume_of_a_run_killed_before_its_first_checkpoint_says_it_starts_again(store_url, tmp_path):
    """The user's step: SIGKILL before the first save (every 50 steps), then --resume."""
    run = tmp_path / "early"
    cmd = [sys.executable, "-m", "concerto.train", "--data", store_url, "--config", "tiny", "--steps", "3",
           "--no-progress", "--output", str(run)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    # config.json is written once the models are built, before the first step
    while not (run / "config.json").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "config.json").is_file() and not list(run.glob("checkpoints/step_*"))
    res = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("resume:"))
    assert str(run / "checkpoints") in line and "saved every 50 steps" in line and "starting from step 0" in line
    assert "resumed from" not in res.stdout
    again = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "resumed from step 3 of 3" in again.stdout, again.stdout
