"""Setting up a run: process group, resume, data, the resolved config, models,
optimiser, data loader.

In order: ``start_run`` finds what the config cannot say (ranks, the checkpoint
resumed, the data version and its samples) -> ``RunStart``; ``resolve_config``
turns the user's config into the run's own (a new object; the user's is not
changed) -> ``PretrainConfig``; ``build_state`` builds, from that, everything the
step, the checkpoints and the logs work on -> ``TrainState``. Every rank builds
identical models (same seed); on resume the saved state replaces them, and the run
continues on the data version it started with.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from concerto.batching import resolve_accumulation, steps_for_epochs
from concerto.config import ConfigError, PretrainConfig
from concerto.train.checkpoint import latest_training_state, load_training_state, set_rng_state


class TrainError(RuntimeError):
    """A run that cannot start (bad data, bad resume state); one line, names the cause."""


@dataclass(frozen=True)
class StoreInfo:
    """What resolving a config needs that the config does not say: the samples the
    run reads, its ranks, and on resume the ``run.steps`` the run started with."""

    num_samples: int
    world: int = 1
    started_steps: Optional[int] = None


@dataclass
class RunStart:
    """Where one rank's run starts, found before its config is resolved: its place in
    the process group, the checkpoint it resumes (Nones for a new run), the manifest
    version it reads and that version's sample count."""

    rank: int
    world: int
    device: torch.device
    output: Path
    version: Optional[int]
    num_samples: int
    saved: Optional[dict] = None
    saved_rng: Optional[dict] = None
    resume_path: Optional[Path] = None

    @property
    def store_info(self) -> StoreInfo:
        started = (self.saved or {}).get("config", {}).get("run", {}).get("steps")
        return StoreInfo(self.num_samples, self.world, None if started is None else int(started))


@dataclass
class TrainState:
    """One rank's run. ``cfg`` is the resolved config (``resolve_config``); ``model``
    is the student, DDP-wrapped when world > 1; ``step`` counts optimiser steps done."""

    cfg: PretrainConfig
    rank: int
    world: int
    device: torch.device
    output: Path
    image_encoder: Optional[torch.nn.Module]
    student: torch.nn.Module
    teacher: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Any
    grid_hw: tuple
    accumulate: int = 1  # micro-batches per optimiser step (concerto.batching.resolve_accumulation)
    step: int = 0


# ----------------------------------------------------------------------------- distributed


def init_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device). Initialises the process group when launched by torchrun."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap_ddp(student: torch.nn.Module, world: int, device: torch.device,
             find_unused_parameters: bool = False) -> torch.nn.Module:
    if world == 1:
        return student
    return torch.nn.parallel.DistributedDataParallel(
        student, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters)


# ----------------------------------------------------------------------------- checks


def check_config(cfg: PretrainConfig) -> None:
    """What the config alone can tell is wrong, before the process group or the store is touched."""
    from concerto.model.config import PRESETS

    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"config key 'model.preset': unknown preset '{cfg.model.preset}'; "
                          f"expected one of {sorted(PRESETS)}")
    if cfg.distill.roll_mask_weight > 0 and cfg.views.global_num != 2:
        raise ConfigError(f"config key 'views.global_num': the roll-mask term needs 2 global views, got {cfg.views.global_num}")
    v = cfg.data.version
    if not (v is None or v == "latest" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)):
        raise ConfigError(f"config key 'data.version': a manifest version >= 1, 'latest' or null, got {v!r}")


def check_resume_steps(steps: int, started: Optional[int], path: Path) -> None:
    """Schedules (lr, weight decay, momentum, temperatures, masking) span
    ``run.steps``: changing it on resume would bend every schedule mid-run.
    ``started``: the resumed run's ``run.steps`` (``RunStart.store_info``)."""
    if started is not None and started != steps:
        raise TrainError(f"resume from '{path}': the run started with run.steps={started}, now {steps}; "
                         f"every schedule spans run.steps, so it cannot change on resume (to train longer, start "
                         f"a new run from this one's weights: --init-from {path.parent.parent} --output <new folder>)")


def latest_complete_version(data: Any) -> Optional[int]:
    """The store's latest complete manifest version (None for a store object)."""
    if not isinstance(data, (str, Path)):
        return getattr(data, "version", None)
    from concerto.data import DataError
    from pipelines.store import StoreError, load_manifest

    try:
        return load_manifest(str(data), complete=True).version
    except StoreError as exc:
        raise DataError(f"data store '{data}': {exc}") from exc


def choose_data_version(wanted: Optional[int | str], data: Any, saved: Optional[dict], rank: int) -> Optional[int]:
    """The manifest version this run reads; ``wanted``: ``data.version`` (see ``DataConfig.version``)."""
    started = saved.get("data_version") if saved else None
    if isinstance(wanted, int):
        return wanted
    if wanted == "latest" or started is None:
        return latest_complete_version(data) if isinstance(data, (str, Path)) else None
    newest = latest_complete_version(data)
    if rank == 0 and newest is not None and newest != started:
        print(f"data: resuming on manifest v{started}, the version this run started with; the store now has "
              f"v{newest} (pass --data-version latest to move on to it)", flush=True)
    return started


def check_data(data: Any, version: Optional[int]) -> int:
    """Fail fast on an unusable store, before the models are built; returns its sample count."""
    from concerto.data import check_store, open_store

    store = open_store(str(data), version) if isinstance(data, (str, Path)) else data
    check_store(store, str(data) if isinstance(data, (str, Path)) else type(data).__name__)
    return len(store)


def resolve_config(cfg: PretrainConfig, info: StoreInfo) -> PretrainConfig:
    """The run's config: a new object, ``cfg`` with what it leaves to the start of the
    run filled in; ``cfg`` itself is not changed. ``run.steps`` None becomes the steps
    a resumed run started with, else ``run.epochs`` passes over ``info.num_samples``
    at the global batch (concerto.batching.steps_for_epochs)."""
    resolved = copy.deepcopy(cfg)
    if resolved.run.steps is None:
        started = info.started_steps
        resolved.run.steps = started if started is not None else steps_for_epochs(info.num_samples, cfg, info.world)
    return resolved


# ----------------------------------------------------------------------------- models


def build_image_encoder(cfg: PretrainConfig):
    from concerto.image_encoder import ImageEncoder

    cm = cfg.cross_modal
    if cm.encoder_config is not None:
        return ImageEncoder.from_config(dict(cm.encoder_config), image_size=cm.image_size, seed=cfg.run.seed)
    return ImageEncoder.from_pretrained(cm.model_id, image_size=cm.image_size)


def build_backbone(cfg: PretrainConfig):
    """The student's encoder: the ``model.preset`` size preset (concerto.model.config.PRESETS)
    with the run's grid, drop path and input colour range (which exports then carry)."""
    from concerto.model import PointTransformerV3, PTv3Config

    over: dict[str, Any] = {"grid_size": cfg.model.grid_size, "input_color_range": cfg.views.color_range}
    if cfg.model.drop_path is not None:
        over["drop_path"] = cfg.model.drop_path
    return PointTransformerV3(PTv3Config.preset(cfg.model.preset, **over))


def init_weights_path(init_from: str) -> str:
    """The backbone file ``model.init_from`` names: a file as given, a run or step
    folder's ``backbone.pth``, a released name as is (downloaded by load_pretrained)."""
    from concerto.model.checkpoint import PRETRAINED

    path = Path(init_from).expanduser()
    if path.is_dir():
        if (path / "backbone.pth").is_file():
            return str(path / "backbone.pth")
        raise ConfigError(f"config key 'model.init_from': folder '{path}' holds no backbone.pth (expected a run "
                          f"folder, one of its checkpoints/step_* folders or a backbone file)")
    if path.is_file() or init_from in PRETRAINED:
        return str(path) if path.is_file() else init_from
    raise ConfigError(f"config key 'model.init_from': '{init_from}' is neither a file, a run folder nor a released "
                      f"model ({', '.join(sorted(PRETRAINED))})")


def init_backbone(backbone: torch.nn.Module, init_from: str, preset: str) -> str:
    """Load the encoder weights ``init_from`` names into ``backbone`` (every key, same
    shapes); returns the file read. The run's own config (grid, drop path) stays."""
    from concerto.model.checkpoint import CheckpointError, load_pretrained, read_checkpoint

    where = init_weights_path(init_from)
    try:
        if where == init_from and not Path(where).exists():  # a released name
            state = load_pretrained(where).state_dict()
        else:
            _, state = read_checkpoint(where)
    except (CheckpointError, OSError) as exc:
        raise TrainError(f"model.init_from '{where}': {exc}") from exc
    mine = backbone.state_dict()
    missing, extra = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
    shapes = [k for k in mine if k in state and tuple(state[k].shape) != tuple(mine[k].shape)]
    if missing or extra or shapes:
        detail = "; ".join(f"{what} {keys[:3]}" for what, keys in (("missing keys", missing), ("unexpected keys", extra),
                                                                     ("other shapes", shapes)) if keys)
        raise TrainError(f"model.init_from '{where}': does not fit the encoder of model.preset "
                         f"'{preset}' ({detail}); pick the preset it was trained with")
    backbone.load_state_dict(state)
    return where


def build_student_teacher(cfg: PretrainConfig, image_encoder, device: torch.device, init: bool = True):
    """(student, teacher): the teacher starts as a copy of the student and never drops paths.
    ``init``: load ``model.init_from`` into the encoder first (a new run; a resumed one
    gets its saved weights instead)."""
    from concerto.ssl.pretrainer import StudentNet, TeacherNet, upcast_channels

    backbone = build_backbone(cfg)
    if init and cfg.model.init_from:
        init_backbone(backbone, cfg.model.init_from, cfg.model.preset)
    enc, d, cm = backbone.config.enc_channels, cfg.distill, cfg.cross_modal
    student = StudentNet(backbone, upcast_channels(enc, d.upcast_level), upcast_channels(enc, cm.upcast_level),
                         image_encoder.channels if image_encoder else 1, d.head_hidden, d.head_embed,
                         d.num_prototypes, d.upcast_level, cm.upcast_level, cfg.model.grid_size,
                         patch_pool=cm.patch_pool).to(device)
    teacher = TeacherNet(student).to(device)
    for m in teacher.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    return student, teacher


# ----------------------------------------------------------------------------- optimiser


def layer_decay_groups(model: torch.nn.Module, lr: float, decay: float, enc_depths) -> list[dict]:
    """AdamW groups: encoder block b of stage e gets lr * decay ** (blocks after it);
    everything else (embedding, pooling, heads, predictor) the full lr."""
    total = sum(enc_depths)
    groups: dict[float, list] = {}
    pattern = re.compile(r"(?:^|\.)enc(\d+)\.block(\d+)\.")
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = pattern.search(name)
        scale = 1.0
        if m:
            e, b = int(m.group(1)), int(m.group(2))
            scale = decay ** (total - sum(enc_depths[:e]) - b - 1)
        groups.setdefault(scale, []).append(p)
    return [{"params": ps, "max_lr": lr * s, "lr": lr * s} for s, ps in sorted(groups.items(), reverse=True)]


def build_optimizer(cfg: PretrainConfig, student, lr_scale: float = 1.0) -> torch.optim.Optimizer:
    o = cfg.optim
    groups = layer_decay_groups(student, o.lr * lr_scale, o.layer_decay, student.backbone.config.enc_depths)
    return torch.optim.AdamW(groups, lr=o.lr * lr_scale, betas=tuple(o.betas), weight_decay=o.weight_decay_start)


# ----------------------------------------------------------------------------- data


def build_sample_spec(cfg: PretrainConfig, grid, mean, std, with_images: bool):
    """The loader workers' SampleSpec: the run's own view / mask settings plus the
    image encoder's patch grid and normalisation. ``cfg`` must say ``run.steps`` (the
    mask schedule spans them): set it, or pass ``resolve_config(cfg, StoreInfo(n))``."""
    from concerto.data import SampleSpec
    from concerto.ssl.image_augment import ImageAugment

    if cfg.run.steps is None:
        raise ConfigError("config key 'run.steps': null (run.epochs over the store) is resolved at the start of a "
                          "run; outside train() set it or pass concerto.train.resolve_config(cfg, StoreInfo(samples))")
    cm = cfg.cross_modal
    augment = ImageAugment(cm.image_shift_p, cm.image_shift_std, cm.image_blur_p, cm.image_blur_kernel,
                           tuple(cm.image_blur_sigma))
    resample = "bilinear" if cm.image_crop == "grid_multiple" else "bicubic"
    return SampleSpec(views=cfg.views, mask=cfg.mask, grid=grid, image_mean=tuple(mean), image_std=tuple(std),
                      total_steps=cfg.run.steps, with_images=with_images, image_augment=augment,
                      image_crop=cm.image_crop, image_resample=resample)


def sample_spec_for(cfg: PretrainConfig, image_encoder):
    """SampleSpec for ``image_encoder`` (None: no images, the DINOv2 grid and normalisation)."""
    from concerto.patches import PatchGrid

    if image_encoder is None:
        return build_sample_spec(cfg, PatchGrid(518, 14), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False)
    return build_sample_spec(cfg, image_encoder.grid, image_encoder.mean, image_encoder.std, True)


def build_loader(cfg: PretrainConfig, data, spec, rank: int, world: int, version: Optional[int], accumulate: int):
    from concerto.data import ShardLoader

    return ShardLoader(data, spec, cfg.data.batch_size, rank=rank, world_size=world,
                       num_workers=cfg.data.num_workers, seed=cfg.data.seed,
                       accumulate=accumulate, version=version, skip_corrupt=cfg.data.skip_corrupt)


def describe_data(loader) -> str:
    """One line per run start: store URL, manifest version, samples (image groups) per source."""
    from pipelines.store.layout import COUNT_IMAGE_GROUPS

    store = loader.dataset.store
    url = getattr(store, "url", type(store).__name__)
    manifest = getattr(store, "manifest", None)
    per_source = ", ".join(f"{src} {c[COUNT_IMAGE_GROUPS]}" for src, c in manifest.source_counts().items()) if manifest else "?"
    return f"data: {url} manifest v{loader.version}, {len(store)} samples ({per_source})"


# ----------------------------------------------------------------------------- resume


def read_resume(output: Path, rank: int, world: int) -> tuple[Optional[dict], Optional[dict], Optional[Path]]:
    """(saved state, this rank's RNG state, folder) of the latest checkpoint, or Nones."""
    path = latest_training_state(output / "checkpoints")
    if path is None:
        return None, None, None
    saved, rng = load_training_state(path, rank)
    saved_world = saved.get("world_size", 1)
    if saved_world != world:
        raise TrainError(f"resume from '{path}': saved with {saved_world} ranks, running with {world}")
    return saved, rng, path


def restore(s: TrainState, saved: dict, path: Path) -> None:
    """Load a saved state into freshly built models, optimiser and loader. On
    another data version than the saved one the loader starts the next epoch
    (the saved position means nothing in another sample list)."""
    s.student.load_state_dict(saved["student"])
    s.teacher.load_state_dict(saved["teacher"])
    s.optimizer.load_state_dict(saved["optimizer"])
    if saved.get("data_version") not in (None, s.loader.version):
        s.loader.sampler.set_epoch(int(saved["loader"]["epoch"]) + 1)
        if s.rank == 0:
            print(f"data: moved from manifest v{saved['data_version']} to v{s.loader.version}; "
                  f"continuing at epoch {s.loader.sampler.epoch}", flush=True)
    else:
        try:
            s.loader.load_state_dict(saved["loader"])
        except ValueError as exc:
            raise TrainError(f"resume from '{path}': {exc}") from exc
    s.step = int(saved["step"])


def seed_step_rng(seed: int, rank: int, step: int, saved_rng: Optional[dict]) -> None:
    """Per-rank RNG for the steps to come: a fresh seed (``run.seed``, rank, step),
    replaced by the saved states on resume."""
    torch.manual_seed(seed + 1000 * rank + step)
    if saved_rng is not None:
        set_rng_state(saved_rng)


# ----------------------------------------------------------------------------- all of it


def start_run(cfg: PretrainConfig, data: Any, output: Path, resume: bool) -> RunStart:
    """Process group, torch threads, the checkpoint to resume (when ``resume`` finds one
    under ``<output>/checkpoints``), the data version and a check of the store, before
    any model is built."""
    rank, world, device = init_distributed()
    if cfg.run.num_threads > 0:
        torch.set_num_threads(cfg.run.num_threads)
    saved, saved_rng, path = read_resume(output, rank, world) if resume else (None, None, None)
    if resume and saved is None and rank == 0:
        # a run killed before its first save has nothing to resume; say so rather than restart silently
        print(f"resume: no checkpoint in '{output / 'checkpoints'}' yet (checkpoints are saved every "
              f"{cfg.run.save_every} steps); starting from step 0", flush=True)
    version = choose_data_version(cfg.data.version, data, saved, rank)
    return RunStart(rank, world, device, output, version, check_data(data, version), saved, saved_rng, path)


def build_state(cfg: PretrainConfig, data: Any, start: RunStart) -> TrainState:
    """Models, loader, optimiser for the resolved ``cfg``; restored from ``start.saved``
    on resume."""
    rank, world, device = start.rank, start.world, start.device
    accumulate, lr_scale = resolve_accumulation(cfg, world)
    if start.saved is not None:
        check_resume_steps(cfg.run.steps, start.store_info.started_steps, start.resume_path)
    torch.manual_seed(cfg.run.seed)  # identical initialisation on every rank
    image_encoder = build_image_encoder(cfg).to(device) if cfg.cross_modal.weight > 0 else None
    student, teacher = build_student_teacher(cfg, image_encoder, device, init=start.saved is None)
    spec = sample_spec_for(cfg, image_encoder)
    loader = build_loader(cfg, data, spec, rank, world, start.version, accumulate)
    if rank == 0:
        print(describe_data(loader), flush=True)
        if start.saved is None and cfg.model.init_from:
            print(f"model: student and teacher encoders start from '{init_weights_path(cfg.model.init_from)}'",
                  flush=True)
    s = TrainState(cfg, rank, world, device, start.output, image_encoder, student, teacher, student,
                   build_optimizer(cfg, student, lr_scale), loader, spec.grid.grid_hw, accumulate)
    if start.saved is not None:
        restore(s, start.saved, start.resume_path)
        if rank == 0:
            print(f"resumed from step {s.step} of {cfg.run.steps} ('{start.resume_path}')", flush=True)
    seed_step_rng(cfg.run.seed, rank, s.step, start.saved_rng)
    s.model = wrap_ddp(student, world, device, cfg.run.find_unused_parameters)
    return s
