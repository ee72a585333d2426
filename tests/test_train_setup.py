"""Training set-up and logging in one place: the run's config is resolved into a new
object (the user's is never changed), the mask schedule's step count is required
where it is needed, and every loss term the loss returns is averaged over ranks
and logged (ranks may return different terms)."""
import pytest
import torch

from concerto.config import ConfigError, PretrainConfig
from concerto.train import StoreInfo, resolve_config
from concerto.train.metrics import RunLog, average_over_ranks
from concerto.train.state import sample_spec_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- resolve_config


def test_resolve_config_returns_a_new_config_and_leaves_the_input_alone():
    cfg = PretrainConfig.base()
    cfg.data.batch_size, cfg.optim.global_batch, cfg.run.epochs = 2, 8, 3
    before = cfg.to_dict()
    resolved = resolve_config(cfg, StoreInfo(num_samples=20, world=2))
    assert cfg.to_dict() == before and cfg.run.steps is None
    assert resolved is not cfg and resolved.run is not cfg.run and resolved.views is not cfg.views
    assert resolved.run.steps == 3 * 3  # ceil(20 / 8) steps per epoch, 3 epochs
    assert {k: v for k, v in resolved.to_dict().items() if k != "run"} == \
           {k: v for k, v in before.items() if k != "run"}
    # on resume the run keeps the steps it started with; a set run.steps stays as it is
    assert resolve_config(cfg, StoreInfo(20, 2, started_steps=7)).run.steps == 7
    cfg.run.steps = 5
    assert resolve_config(cfg, StoreInfo(20, 2, started_steps=7)).run.steps == 5


@pytest.mark.slow
def test_train_leaves_the_callers_config_alone(tmp_path):
    import json

    from concerto.config import load_config
    from concerto.train import train
    from testkit.pretrain_store import write_store

    url = write_store(tmp_path / "s", shard_sizes=(2,), n_points=600, without_images=1)
    cfg = load_config("tiny", ["run.steps=null", "run.epochs=1", "data.batch_size=1", "data.num_workers=0"])
    before = cfg.to_dict()
    summary = train(cfg, url, tmp_path / "run", progress=False, stop_after=1)
    assert summary["step"] == 1 and cfg.to_dict() == before
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run"]["steps"] == 3  # 3 samples, batch 1


def test_build_sample_spec_needs_resolved_steps_not_a_type_error():
    # sample_spec_for(cfg, None): build_sample_spec with the default (DINOv2) grid
    with pytest.raises(ConfigError, match="run.steps"):
        sample_spec_for(PretrainConfig.base(), None)
    cfg = resolve_config(PretrainConfig.base(), StoreInfo(num_samples=96))
    spec = sample_spec_for(cfg, None)
    assert spec.total_steps == cfg.run.steps == 100  # one step an epoch at the released 96
    assert spec.mask_at(cfg.run.steps - 1).ratio == pytest.approx(cfg.mask.ratio_base)


def test_backbone_carries_the_input_colour_range():
    from concerto.model import official_layout, load_checkpoint
    from concerto.train.state import build_backbone, check_config

    cfg = PretrainConfig.tiny()
    assert build_backbone(cfg).config.input_color_range == "unit"
    cfg.views.color_range = "symmetric"
    model = build_backbone(cfg)
    assert model.config.input_color_range == "symmetric"
    assert load_checkpoint(official_layout(model)).config.input_color_range == "symmetric"
    cfg.model.preset = "huge"
    with pytest.raises(ConfigError, match="model.preset': unknown preset 'huge'; expected one of"):
        check_config(cfg)


# ----------------------------------------------------------------------------- metrics over ranks


def test_one_rank_logs_its_terms_unchanged():
    terms = {"loss": 1.0, "mask": 0.5, "new_term": 0.25}
    assert average_over_ranks(terms, 1) == terms


# rank -> the loss terms that rank's step returned: rank 0 has a term rank 1 lacks
# (as the cross-modal term of an image-less batch) and a new one no list names
RANK_TERMS = {0: {"loss": 1.0, "mask": 0.5, "cross_modal": 0.25, "new_term": 3.0},
              1: {"loss": 3.0, "mask": 1.5, "z_last": 2.0}}


def _average_and_log(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from pathlib import Path

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        losses = average_over_ranks(dict(RANK_TERMS[rank]), world)
        torch.save(losses, f"{out_dir}/losses{rank}.pt")
        log = RunLog(Path(out_dir), rank, 1, 0, 1, progress=False)
        log.log(1, losses, {"lr": 0.1}, 1)
        log.close()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gloo_two_ranks_average_and_log_every_term(tmp_path, free_port):
    import torch.multiprocessing as mp
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mp.spawn(_average_and_log, args=(2, free_port, str(tmp_path)), nprocs=2, join=True)
    want = {"loss": 2.0, "mask": 1.0, "cross_modal": 0.25, "new_term": 3.0, "z_last": 2.0}
    for rank in (0, 1):
        got = torch.load(tmp_path / f"losses{rank}.pt", weights_only=True)
        assert got == pytest.approx(want) and set(got) == set(want), rank
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {f"loss/{k}" for k in want} | {"params/lr"}
    assert events.Scalars("loss/new_term")[0].value == pytest.approx(3.0)
