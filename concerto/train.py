"""Concerto pretraining entry point.

    python -m concerto.train --data <store> [--config base|large|tiny|<file>]
        [--set key=value ...] [--output DIR] [--steps N] [--resume]

Single process, or under ``torchrun`` (process group from the environment: gloo
on CPU, NCCL on GPU). Writes checkpoints to ``<output>/checkpoints`` (see
concerto.checkpointing), the backbone in the official key layout to
``<output>/backbone.pth``, tensorboard scalars to ``<output>/tb`` and the
resolved config to ``<output>/config.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from concerto.checkpointing import latest_checkpoint, load_checkpoint_dir, save_checkpoint, set_rng_state
from concerto.config import ConfigError, PretrainConfig, load_config
from concerto.schedules import cosine_warmup, one_cycle_beta1, one_cycle_factor


class TrainError(RuntimeError):
    """A run that cannot start (bad data, bad resume state); one line, names the cause."""


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


def apply_schedules(optimizer: torch.optim.Optimizer, cfg: PretrainConfig, step: int) -> dict:
    o, total = cfg.optim, cfg.run.steps
    factor = one_cycle_factor(step, total, o.warmup_ratio, o.div_factor, o.final_div_factor)
    wd = cosine_warmup(step, total, o.weight_decay_start, o.weight_decay_start, o.weight_decay_end, 0.0)
    beta1 = one_cycle_beta1(step, total, o.warmup_ratio, o.beta1_cycle[1], o.beta1_cycle[0]) \
        if o.beta1_cycle else None
    for g in optimizer.param_groups:
        g["lr"] = g["max_lr"] * factor
        g["weight_decay"] = wd
        if beta1 is not None:
            g["betas"] = (beta1, g["betas"][1])
    d = cfg.distill
    return dict(lr=optimizer.param_groups[0]["lr"], weight_decay=wd,
                teacher_temp=cosine_warmup(step, total, d.teacher_temp_start, d.teacher_temp_base,
                                           d.teacher_temp_base, d.teacher_temp_warmup_ratio),
                momentum=cosine_warmup(step, total, d.momentum_base, d.momentum_base, d.momentum_final, 0.0),
                mask_size=cosine_warmup(step, total, cfg.mask.size_start, cfg.mask.size_base, cfg.mask.size_base,
                                        cfg.mask.warmup_ratio),
                mask_ratio=cosine_warmup(step, total, cfg.mask.ratio_start, cfg.mask.ratio_base, cfg.mask.ratio_base,
                                         cfg.mask.warmup_ratio))


def average_over_ranks(sums: dict[str, float], world: int) -> dict[str, float]:
    """Loss terms averaged over ranks for logging; a term some ranks lack (the
    cross-modal term of image-less batches) is averaged over the ranks that have it."""
    if world == 1:
        return sums
    keys = ["mask", "roll_mask", "unmask", "cross_modal", "loss"]
    vals = torch.tensor([[sums.get(k, 0.0), float(k in sums)] for k in keys], dtype=torch.float64)
    dist.all_reduce(vals)
    return {k: float(v / c) for k, (v, c) in zip(keys, vals.tolist()) if c > 0}


# ----------------------------------------------------------------------------- building


def build_image_encoder(cfg: PretrainConfig):
    from concerto.image_encoder import ImageEncoder

    cm = cfg.cross_modal
    if cm.encoder_config is not None:
        return ImageEncoder.from_config(dict(cm.encoder_config), image_size=cm.image_size, seed=cfg.run.seed)
    return ImageEncoder.from_pretrained(cm.model_id, image_size=cm.image_size)


def build_backbone(cfg: PretrainConfig):
    from concerto.model import PointTransformerV3, PTv3Config

    presets = {"base": PTv3Config.base, "large": PTv3Config.large, "tiny": PTv3Config.tiny}
    if cfg.model.preset not in presets:
        raise ConfigError(f"config key 'model.preset': unknown preset '{cfg.model.preset}'")
    over: dict[str, Any] = {"grid_size": cfg.model.grid_size}
    if cfg.model.drop_path is not None:
        over["drop_path"] = cfg.model.drop_path
    return PointTransformerV3(presets[cfg.model.preset](**over))


def build_sample_spec(cfg: PretrainConfig, grid, mean, std, with_images: bool):
    from concerto.data import SampleSpec
    from concerto.ssl.views import ViewParams

    v = cfg.views
    params = ViewParams(**{k: getattr(v, k) for k in ViewParams.__dataclass_fields__ if hasattr(v, k)},
                        mask_jitter=cfg.mask.jitter, mask_jitter_clip=cfg.mask.jitter_clip)
    m = cfg.mask
    from concerto.ssl.image_augment import ImageAugment

    cm = cfg.cross_modal
    augment = ImageAugment(cm.image_shift_p, cm.image_shift_std, cm.image_blur_p, cm.image_blur_kernel,
                           tuple(cm.image_blur_sigma))
    resample = "bilinear" if cm.image_crop == "grid_multiple" else "bicubic"
    return SampleSpec(views=params, grid=grid, image_mean=tuple(mean), image_std=tuple(std),
                      image_augment=augment, image_crop=cm.image_crop, image_resample=resample,
                      total_steps=cfg.run.steps, mask_size_start=m.size_start, mask_size_base=m.size_base,
                      mask_ratio_start=m.ratio_start, mask_ratio_base=m.ratio_base,
                      mask_warmup_ratio=m.warmup_ratio, with_images=with_images)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------- training


def train(cfg: PretrainConfig, data: Any, output: str | Path, resume: bool = False,
          stop_after: Optional[int] = None, progress: bool = True) -> dict:
    """Run pretraining; returns a summary (final step, last losses, paths).

    ``data``: a store URL/path or a store object. ``stop_after``: leave after that
    many optimiser steps of this call (a checkpoint is written first), as if killed.
    """
    from concerto.data import DataError, ShardLoader
    from concerto.ssl.ema import ema_update
    from concerto.ssl.pretrainer import StudentNet, TeacherNet, mask_batch, pretraining_loss, upcast_channels

    if cfg.distill.roll_mask_weight > 0 and cfg.views.global_num != 2:
        raise ConfigError(f"config key 'views.global_num': the roll-mask term needs 2 global views, got {cfg.views.global_num}")
    rank, world, device = init_distributed()
    from concerto.batching import resolve_accumulation

    accumulate, lr_scale = resolve_accumulation(cfg, world)
    if cfg.run.num_threads > 0:
        torch.set_num_threads(cfg.run.num_threads)
    output = Path(output)
    ckpt_root = output / "checkpoints"
    start_state, start_rng = None, None
    if resume:
        path = latest_checkpoint(ckpt_root)
        if path is not None:
            start_state, start_rng = load_checkpoint_dir(path, rank)
            saved_world = start_state.get("world_size", 1)
            if saved_world != world:
                raise TrainError(f"resume from '{path}': saved with {saved_world} ranks, running with {world}")

    # fail fast on unusable data, before the models are built
    from concerto.data import check_store, open_store

    probe_version = (start_state or {}).get("data_version", cfg.data.version)
    if isinstance(data, (str, Path)):
        check_store(open_store(str(data), probe_version), str(data))
    else:
        check_store(data, type(data).__name__)

    torch.manual_seed(cfg.run.seed)  # identical initialisation on every rank
    image_encoder = build_image_encoder(cfg).to(device) if cfg.cross_modal.weight > 0 else None
    backbone = build_backbone(cfg)
    enc = backbone.config.enc_channels
    d = cfg.distill
    student = StudentNet(backbone, upcast_channels(enc, d.upcast_level), upcast_channels(enc, cfg.cross_modal.upcast_level),
                         image_encoder.channels if image_encoder else 1, d.head_hidden, d.head_embed,
                         d.num_prototypes, d.upcast_level, cfg.cross_modal.upcast_level, cfg.model.grid_size,
                         patch_pool=cfg.cross_modal.patch_pool).to(device)
    teacher = TeacherNet(student).to(device)
    for m in teacher.modules():  # the teacher never drops paths
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0

    from pipelines.patches import PatchGrid

    grid = image_encoder.grid if image_encoder else PatchGrid(518, 14)
    mean = image_encoder.mean if image_encoder else (0.485, 0.456, 0.406)
    std = image_encoder.std if image_encoder else (0.229, 0.224, 0.225)
    spec = build_sample_spec(cfg, grid, mean, std, with_images=image_encoder is not None)
    version = cfg.data.version
    if start_state is not None and start_state.get("data_version") is not None:
        version = start_state["data_version"]  # resume on the manifest the run started with
    loader = ShardLoader(data, spec, cfg.data.batch_size, rank=rank, world_size=world,
                         num_workers=cfg.data.num_workers, seed=cfg.data.seed,
                         accumulate=accumulate, version=version)

    optimizer = torch.optim.AdamW(layer_decay_groups(student, cfg.optim.lr * lr_scale, cfg.optim.layer_decay,
                                                     backbone.config.enc_depths),
                                  lr=cfg.optim.lr * lr_scale, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay_start)
    step = 0
    if start_state is not None:
        student.load_state_dict(start_state["student"])
        teacher.load_state_dict(start_state["teacher"])
        optimizer.load_state_dict(start_state["optimizer"])
        try:
            loader.load_state_dict(start_state["loader"])
        except ValueError as exc:
            raise TrainError(f"resume from '{path}': {exc}") from exc
        step = int(start_state["step"])
    torch.manual_seed(cfg.run.seed + 1000 * rank + step)
    if start_rng is not None:
        set_rng_state(start_rng)

    model = student
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.run.find_unused_parameters)

    writer = None
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.json").write_text(json.dumps(dict(cfg.to_dict(), data=str(data) if isinstance(data, (str, Path)) else None,
                                                            data_version=loader.version), indent=2, default=str))
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output / "tb"))

    amp = torch.autocast(device.type, dtype=getattr(torch, cfg.optim.amp_dtype)) if cfg.optim.amp else nullcontext()
    grid_hw = grid.grid_hw
    total = cfg.run.steps
    end = total if stop_after is None else min(total, step + stop_after)
    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc="pretrain", dynamic_ncols=True)

    def checkpoint(at: int) -> None:
        state = None
        if rank == 0:
            state = dict(step=at, student=student.state_dict(), teacher=teacher.state_dict(),
                         optimizer=optimizer.state_dict(), loader=loader.state_dict(), world_size=world,
                         config=cfg.to_dict(), data_version=loader.version)

        def export(folder: Path) -> None:
            from concerto.model import save_checkpoint as save_backbone

            save_backbone(student.backbone, folder / "backbone.pth")

        path = save_checkpoint(ckpt_root, at, state, rank, barrier, extra_files=export)
        if rank == 0:
            from concerto.model import save_checkpoint as save_backbone

            save_backbone(student.backbone, output / "backbone.pth")
        return path

    batches = iter(loader)
    last: dict = {}
    student.train()
    t0 = time.perf_counter()
    while step < end:
        sched = apply_schedules(optimizer, cfg, step)
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        for micro in range(accumulate):
            try:
                batch = to_device(next(batches), device)
            except (DataError, KeyError, ValueError) as exc:
                raise TrainError(f"data: {exc}") from exc
            if cfg.mask.per_batch:
                batch = mask_batch(batch, sched["mask_size"], sched["mask_ratio"], cfg.mask.jitter, cfg.mask.jitter_clip)
            sync = model.no_sync() if (world > 1 and micro < accumulate - 1) else nullcontext()
            with sync:
                with amp:
                    image_feat = None
                    if image_encoder is not None and batch["images"].shape[0] > 0:
                        image_feat = image_encoder(batch["images"]).float()
                    teacher_out = teacher(batch, d.upcast_level, cfg.model.grid_size)
                    out = model(batch, grid_hw)
                    terms = pretraining_loss(out, teacher_out, image_feat, batch, cfg, sched["teacher_temp"])
                (terms["loss"] / accumulate).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / accumulate
        grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.clip_grad) \
            if cfg.optim.clip_grad > 0 else torch.tensor(0.0)
        optimizer.step()
        ema_update(*teacher.ema_pairs(student), sched["momentum"])
        step += 1
        sums = average_over_ranks(sums, world)
        if not all(map(lambda x: x == x and abs(x) != float("inf"), sums.values())):
            raise TrainError(f"step {step}: non-finite loss {sums}")
        last = dict(sums, grad_norm=float(grad_norm), **sched)
        if writer is not None and (step % cfg.run.log_every == 0 or step == end):
            for k, v in last.items():
                writer.add_scalar(f"loss/{k}" if k in terms else f"params/{k}", v, step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss']:.4f}")
        if step % cfg.run.save_every == 0 or step == end:
            checkpoint(step)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return dict(step=step, last=last, output=str(output), seconds=time.perf_counter() - t0,
                rank=rank, world_size=world, param_checksum=parameter_digest(student))


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes, in name order (equal digests = equal weights)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- CLI


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m concerto.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="shard store path or fsspec URL")
    parser.add_argument("--config", default="base", help="base | large | tiny | a .yaml/.json file")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", default="runs/pretrain")
    parser.add_argument("--steps", type=int, default=None, help="total optimiser steps (run.steps)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from concerto.data import DataError
    from concerto.image_encoder import ImageEncoderError

    try:
        cfg = load_config(args.config, args.sets)
        if args.steps is not None:
            cfg.run.steps = args.steps
        summary = train(cfg, args.data, args.output, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, DataError, TrainError, ImageEncoderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary["rank"] == 0:
        print(json.dumps({"step": summary["step"], **{k: round(v, 6) for k, v in summary["last"].items()}}))
        out = Path(args.output)
        print(f"checkpoints: {out / 'checkpoints'} (step {summary['step']}; resume with --resume)")
        print(f"backbone in the official layout: {out / 'backbone.pth'}")
        print(f"tensorboard logs: {out / 'tb'} (tensorboard --logdir {out / 'tb'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
