"""Pretraining configuration: a dataclass tree with base / large / tiny presets.

Values follow the released Concerto configs (Pointcept
``configs/concerto/pretrain-concerto-v1m1-0-base.py`` and ``-1-large-base.py``);
``paper`` follows the paper's text where it differs (DINOv2-L teacher) and
``sonata`` the released Sonata config (``configs/sonata/pretrain-sonata-v1m1-0-base.py``). Overrides come from a YAML or
JSON file (nested mapping) and ``key.sub=value`` strings; an unknown key raises
``ConfigError`` naming it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


class ConfigError(ValueError):
    """Bad configuration: names the offending key or file."""


@dataclass
class ModelConfig:
    """Encoder: a PTv3Config preset name plus the few overrides pretraining needs."""

    preset: str = "base"
    drop_path: Optional[float] = None  # None: the preset's value (teacher always 0)
    grid_size: float = 0.02
    # a new run's student and teacher encoders start from these weights: a backbone file
    # (official layout), a run folder or step folder (its backbone.pth), or a released name
    # (concerto.model.PRETRAINED); heads and optimiser start fresh. Ignored on resume.
    init_from: Optional[str] = None


@dataclass
class ViewConfig:
    """Sonata multi-view generation (point counts are after grid sampling)."""

    grid_size: float = 0.02
    global_num: int = 2
    global_scale: tuple = (0.4, 1.0)
    local_num: int = 4
    local_scale: tuple = (0.1, 0.4)
    max_points: int = 65536
    principal_max_points: int = 65536
    color_drop_all_prob: float = 0.2
    color_drop_part_prob: float = 0.5
    color_drop_part_ratio: float = 0.2
    normal_drop_all_prob: float = 0.2
    normal_drop_part_prob: float = 0.5
    normal_drop_part_ratio: float = 0.2
    elastic: tuple = ((0.2, 0.4), (0.8, 1.6))  # (granularity m, magnitude); [] disables
    # "unit": colour / 255, as the released transforms (NormalizeColor) feed it;
    # "symmetric": colour / 127.5 - 1, only for checkpoints trained that way before;
    # the backbone records it (PTv3Config.input_color_range) so exports carry it
    color_range: str = "unit"


@dataclass
class MaskConfig:
    size_start: float = 0.1
    size_base: float = 0.4
    ratio_start: float = 0.3
    ratio_base: float = 0.7
    warmup_ratio: float = 0.05
    jitter: float = 0.01
    # "upper": the released code clips the jitter noise at +2 sigma only;
    # "both": clip to +-2 sigma
    jitter_clip: str = "upper"
    # True: masks drawn in the training step over the whole batch (torch RNG,
    # int(ratio * cubes of the batch), as released); False: per view in the workers
    per_batch: bool = True


@dataclass
class DistillConfig:
    """Online-clustering self-distillation (Sonata)."""

    head_hidden: int = 4096
    head_embed: int = 256
    num_prototypes: int = 4096
    upcast_level: int = 2
    sinkhorn_iters: int = 3
    teacher_temp_start: float = 0.04
    teacher_temp_base: float = 0.07
    teacher_temp_warmup_ratio: float = 0.05
    student_temp: float = 0.1
    momentum_base: float = 0.994
    momentum_final: float = 1.0
    match_radius: float = 0.32
    mask_weight: float = 1 / 8
    roll_mask_weight: float = 1 / 8
    unmask_weight: float = 2 / 8
    # True (Concerto v1m1): every target, the local views' too, from the teacher's
    # mask head; False: the local views' from the teacher's unmask head (Sonata v1m1)
    shared_teacher_head: bool = True


@dataclass
class CrossModalConfig:
    """Prediction of frozen image-encoder patch features (Concerto)."""

    weight: float = 4 / 8
    model_id: str = "facebook/dinov2-with-registers-giant"
    # a Dinov2Config as a mapping: build a randomly initialised encoder instead of
    # loading model_id (tests, offline runs)
    encoder_config: Optional[dict] = None
    image_size: Optional[int] = None  # None: the encoder config's image size
    upcast_level: int = 3
    loss_scale: float = 10.0
    # "pooled": correspondences averaged up to the points of the upcast level
    # first, patch coordinates truncated, each of those points counted once per
    # image (released); "input": input points averaged per patch
    patch_pool: str = "pooled"
    # batch without images: the cross-modal term is the weighted self-distillation
    # loss normalised by its weights (released); False: the term is left out
    no_image_self_distill: bool = True
    # image augmentation (released): per-channel shift U(0, shift_std) on [0, 1]
    # images with p shift_p, then a Gaussian blur (kernel blur_kernel, sigma U(*blur_sigma))
    # with p blur_p; 0 disables either
    image_shift_p: float = 0.95
    image_shift_std: float = 0.05
    image_blur_p: float = 0.5
    image_blur_kernel: int = 9
    image_blur_sigma: tuple = (0.1, 2.0)
    # "grid_multiple": the largest centred crop that is a multiple of the patch grid,
    # bilinear resize (released); "largest": largest centred crop, bicubic
    image_crop: str = "grid_multiple"


@dataclass
class OptimConfig:
    lr: float = 0.004
    layer_decay: float = 0.9
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.2
    warmup_ratio: float = 0.05
    div_factor: float = 10.0
    final_div_factor: float = 1000.0
    betas: tuple = (0.95, 0.999)
    # (peak, base): beta1 cycled inversely to the learning rate by the one-cycle
    # policy (torch OneCycleLR cycle_momentum, as released); () keeps betas[0]
    beta1_cycle: tuple = (0.95, 0.85)
    clip_grad: float = 3.0
    accumulate: int = 1
    # samples per optimiser step over all ranks (released: 96). Set, it fixes
    # ``accumulate`` = global_batch / (batch_size * ranks); None uses ``accumulate``.
    global_batch: Optional[int] = 96
    # when the effective global batch differs from reference_batch, scale lr
    # linearly (the released code never needs to: it always runs 96)
    reference_batch: int = 96
    scale_lr: bool = True
    amp: bool = True
    amp_dtype: str = "bfloat16"


@dataclass
class DataConfig:
    # manifest version: None = the latest complete one at the start of a run and,
    # on resume, the version the run started with; "latest" = the latest complete
    # one, also on resume (the run moves on to it at the next epoch)
    version: Optional[Union[int, str]] = None
    # a sample whose shard data fails its checksum stops the run (False), or is
    # left out, logged and counted (True)
    skip_corrupt: bool = False
    batch_size: int = 2  # per rank, per micro-step
    num_workers: int = 2
    seed: int = 0


@dataclass
class RunConfig:
    # optimiser steps; all schedules span these. None: ``epochs`` passes over the
    # store's samples at the global batch (concerto.batching.steps_for_epochs), as
    # the released configs count, resolved when the run starts
    steps: Optional[int] = None
    epochs: int = 100  # released: 100 (Sonata 200)
    save_every: int = 1000
    log_every: int = 10
    seed: int = 0
    find_unused_parameters: bool = False
    # torch intra-op threads per process; 0 keeps torch's default. CPU runs sharing
    # cores (several ranks, or a busy machine) are much faster with 1.
    num_threads: int = 0


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    cross_modal: CrossModalConfig = field(default_factory=CrossModalConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @staticmethod
    def base() -> "PretrainConfig":
        return PretrainConfig()

    @staticmethod
    def large() -> "PretrainConfig":
        """Released ``pretrain-concerto-v1m1-1-large-base``: large encoder, clip 2.0."""
        cfg = PretrainConfig()
        cfg.model.preset = "large"
        cfg.optim.clip_grad = 2.0
        return cfg

    @staticmethod
    def paper() -> "PretrainConfig":
        """The paper's text where it differs from the released config: a DINOv2-L
        teacher (1024 channels; the predictor's width follows the encoder)."""
        cfg = PretrainConfig()
        cfg.cross_modal.model_id = "facebook/dinov2-large"
        return cfg

    @staticmethod
    def sonata() -> "PretrainConfig":
        """Released Sonata v1m1 (no images): weights 2/8, 2/8, 4/8, own teacher heads,
        200 epochs."""
        cfg = PretrainConfig()
        cfg.cross_modal.weight = 0.0
        cfg.distill.mask_weight, cfg.distill.roll_mask_weight, cfg.distill.unmask_weight = 2 / 8, 2 / 8, 4 / 8
        cfg.distill.shared_teacher_head = False
        cfg.run.epochs = 200
        return cfg

    @staticmethod
    def tiny() -> "PretrainConfig":
        """Seconds-per-step on a CPU: tiny encoder, small heads, small clouds, a
        randomly initialised one-layer DINOv2 at 56 px (4 x 4 patches), fp32."""
        cfg = PretrainConfig()
        cfg.model.preset = "tiny"
        cfg.views.max_points = 1024
        cfg.views.principal_max_points = 1024
        cfg.distill.head_hidden = 64
        cfg.distill.head_embed = 32
        cfg.distill.num_prototypes = 64
        cfg.cross_modal.encoder_config = dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, patch_size=14, image_size=56)
        cfg.optim.amp = False
        cfg.optim.global_batch = None
        cfg.data.batch_size = 2
        cfg.data.num_workers = 0
        cfg.run.steps = 100
        cfg.run.save_every = 50
        cfg.run.log_every = 1
        cfg.run.num_threads = 1
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {"base": PretrainConfig.base, "large": PretrainConfig.large,
           "paper": PretrainConfig.paper, "sonata": PretrainConfig.sonata,
           "tiny": PretrainConfig.tiny}


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Convert ``value`` (parsed YAML/JSON or a --set string) to the type of ``current``."""
    if isinstance(value, str) and not isinstance(current, str):
        import yaml

        value = yaml.safe_load(value)
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return type(current)(value) if isinstance(current, float) or float(value).is_integer() else value
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return tuple(value)
    return value


def _set(cfg: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = cfg
    for i, name in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if not dataclasses.is_dataclass(node) or name not in {f.name for f in dataclasses.fields(node)}:
            raise ConfigError(f"unknown config key '{here}'")
        if i == len(parts) - 1:
            current = getattr(node, name)
            if dataclasses.is_dataclass(current):
                if not isinstance(value, dict):
                    raise ConfigError(f"config key '{here}': expected a mapping")
                for sub, v in value.items():
                    _set(cfg, f"{here}.{sub}", v)
            else:
                setattr(node, name, _coerce(value, current, here))
        else:
            node = getattr(node, name)


def apply_overrides(cfg: PretrainConfig, mapping: dict, prefix: str = "") -> PretrainConfig:
    """Apply a nested mapping of overrides in place; returns cfg."""
    for key, value in mapping.items():
        _set(cfg, f"{prefix}{key}", value)
    return cfg


def load_config(spec: str = "base", sets: Optional[list[str]] = None) -> PretrainConfig:
    """``spec``: a preset name or a .yaml/.yml/.json file (optionally with a top-level
    ``preset:`` key naming the preset it starts from). ``sets``: ``key.sub=value``."""
    if spec in PRESETS:
        cfg = PRESETS[spec]()
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"config '{spec}': not a preset ({', '.join(PRESETS)}) nor a file")
        try:
            text = path.read_text()
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise ConfigError(f"config file '{spec}': cannot parse: {exc}") from exc
        data = dict(data or {})
        preset = data.pop("preset", "base")
        if preset not in PRESETS:
            raise ConfigError(f"config file '{spec}': unknown preset '{preset}'")
        cfg = apply_overrides(PRESETS[preset](), data)
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected key=value")
        key, value = item.split("=", 1)
        _set(cfg, key.strip(), value)
    return cfg
