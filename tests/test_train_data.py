"""What a training run says about and does with its data: the start-up line,
config.json's data section, data versions on resume, run.steps on resume."""
import json
import shutil

import numpy as np
import pytest

from concerto.train import main
from pipelines.store import ShardWriter, commit, latest_version
from testkit.pretrain_store import room_scene, write_store


@pytest.fixture()
def store_url(tmp_path):
    return write_store(tmp_path / "s", shard_sizes=(2,), n_points=600, without_images=1)


def run(store, out, *extra):
    return main(["--data", store, "--config", "tiny", "--output", str(out), "--no-progress",
                 "--set", "run.save_every=1", "--set", "data.num_workers=0", *extra])


def add_scene(store: str, scene_id: str, state: str = "complete") -> int:
    info = ShardWriter(store).write([room_scene(np.random.default_rng(7), scene_id, 600, True)])
    return commit(store, latest_version(store), [info], state=state)


@pytest.mark.slow
def test_start_line_config_and_versions_on_resume(store_url, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(store_url, out, "--steps", "2") == 0
    printed = capsys.readouterr().out
    assert f"data: {store_url} manifest v1, 3 samples (synthetic 3)" in printed
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["store"] == store_url and data["manifest_version"] == 1
    assert {"batch_size", "num_workers", "seed", "version", "skip_corrupt"} <= set(data)

    assert add_scene(store_url, "late") == 2
    assert add_scene(store_url, "unfinished", state="partial") == 3  # a build still running: not read
    shutil.rmtree(out / "checkpoints" / "step_00000002")
    assert run(store_url, out, "--steps", "2", "--resume") == 0
    printed = capsys.readouterr().out
    assert "resuming on manifest v1" in printed and "now has v2 (pass --data-version latest" in printed
    assert "manifest v1, 3 samples" in printed

    shutil.rmtree(out / "checkpoints" / "step_00000002")
    assert run(store_url, out, "--steps", "2", "--resume", "--data-version", "latest") == 0
    printed = capsys.readouterr().out
    assert "moved from manifest v1 to v2" in printed and "manifest v2, 5 samples (synthetic 5)" in printed
    assert json.loads((out / "config.json").read_text())["data"]["manifest_version"] == 2


def test_changing_steps_on_resume_is_refused(store_url, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(store_url, out, "--steps", "1") == 0
    capsys.readouterr()
    assert run(store_url, out, "--steps", "3", "--resume") == 2
    err = capsys.readouterr().err
    assert "started with run.steps=1, now 3" in err and "cannot change on resume" in err
    # the way the refusal points to: a new run from this one's weights
    assert f"--init-from {out}" in err, err
    new = tmp_path / "longer"
    assert run(store_url, new, "--steps", "3", "--init-from", str(out)) == 0
    assert f"model: student and teacher encoders start from '{out / 'backbone.pth'}'" in capsys.readouterr().out
    assert (new / "checkpoints" / "step_00000003").is_dir()
    assert json.loads((new / "config.json").read_text())["model"]["init_from"] == str(out)


def test_init_from_loads_the_backbone_into_student_and_teacher(store_url, tmp_path, capsys):
    """model.init_from: a run folder, a step folder or a backbone file; both encoders
    start equal to it; a backbone of another size is one clear error."""
    import torch

    from concerto.config import load_config
    from concerto.train.state import TrainError, build_state, resolve_config, start_run

    src = tmp_path / "src"
    assert run(store_url, src, "--steps", "1") == 0
    saved = torch.load(src / "backbone.pth", weights_only=True)["state_dict"]

    def state_for(init_from):
        cfg = load_config("tiny", ["data.num_workers=0", "run.steps=2", f"model.init_from={init_from}"])
        start = start_run(cfg, store_url, tmp_path / "new", resume=False)
        return build_state(resolve_config(cfg, start.store_info), store_url, start)

    for init_from in (src, src / "backbone.pth", src / "checkpoints" / "step_00000001"):
        s = state_for(init_from)
        for net in (s.student, s.teacher):
            got = net.backbone.state_dict()
            assert got.keys() == saved.keys() and all(torch.equal(got[k], saved[k]) for k in saved), init_from
    # another size: one line naming the file and the preset
    big = tmp_path / "big.pth"
    torch.save({"config": {}, "state_dict": {k: torch.zeros(3, *v.shape) for k, v in saved.items()}}, big)
    with pytest.raises(TrainError, match=r"model.init_from '.*big.pth': does not fit the encoder of model.preset "
                                         r"'tiny' \(other shapes"):
        state_for(big)
    with pytest.raises(Exception, match="model.init_from.*neither a file, a run folder nor a released model"):
        state_for(tmp_path / "nothing-here")


def test_bad_data_version_is_one_clear_error(store_url, tmp_path, capsys):
    assert run(store_url, tmp_path / "r", "--data-version", "newest") == 2
    assert "--data-version" in capsys.readouterr().err
    assert run(store_url, tmp_path / "r", "--data-version", "7") == 2
    assert "manifest version 7 not found" in capsys.readouterr().err


def test_steps_from_epochs_when_unset(store_url, tmp_path, capsys):
    """run.steps null: run.epochs passes over the store's samples (the released configs count epochs)."""
    out = tmp_path / "run"
    assert run(store_url, out, "--set", "run.steps=null", "--set", "run.epochs=1", "--set", "data.batch_size=1") == 0
    printed = capsys.readouterr().out
    assert "run.steps = 3: 1 epochs over 3 samples" in printed
    assert json.loads((out / "config.json").read_text())["run"]["steps"] == 3
    assert (out / "checkpoints" / "step_00000003").is_dir()
