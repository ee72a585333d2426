"""One optimiser step: schedules, forward and losses over the micro-batches,
backward, gradient clipping, optimiser, EMA teacher update."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from concerto.schedules import training_schedules
from concerto.ssl.masking import MaskShape
from concerto.ssl.pretrainer import mask_batch
from concerto.train.metrics import average_over_ranks, check_finite
from concerto.train.state import TrainError, TrainState


def apply_schedules(optimizer: torch.optim.Optimizer, cfg, step: int) -> dict:
    """Set every group's lr, AdamW beta1 (when cycled) and weight decay for ``step``;
    returns the step's schedule values (lr of the first group, beta1, weight_decay,
    teacher_temp, momentum)."""
    values = training_schedules(cfg, step)
    for g in optimizer.param_groups:
        g["lr"] = g["max_lr"] * values["lr_factor"]
        g["weight_decay"] = values["weight_decay"]
        if values["beta1"] is not None:
            g["betas"] = (values["beta1"], g["betas"][1])
    return dict(lr=optimizer.param_groups[0]["lr"], beta1=optimizer.param_groups[0]["betas"][0],
                weight_decay=values["weight_decay"], teacher_temp=values["teacher_temp"],
                momentum=values["momentum"])


def autocast(cfg, device: torch.device):
    """Mixed precision context of ``cfg.optim`` (a no-op when amp is off)."""
    return torch.autocast(device.type, dtype=getattr(torch, cfg.optim.amp_dtype)) if cfg.optim.amp else nullcontext()


def next_batch(batches, device: torch.device) -> dict:
    from concerto.data import DataError

    try:
        batch = next(batches)
    except (DataError, KeyError, ValueError) as exc:
        raise TrainError(f"data: {exc}") from exc
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def forward_losses(s: TrainState, batch: dict, teacher_temp: float) -> dict:
    """Loss terms (scalar tensors, ``loss`` their weighted sum) of one micro-batch."""
    from concerto.ssl.pretrainer import pretraining_loss

    image_feat = None
    if s.image_encoder is not None and batch["images"].shape[0] > 0:
        image_feat = s.image_encoder(batch["images"]).float()
    teacher_out = s.teacher(batch, s.cfg.distill.upcast_level, s.cfg.model.grid_size)
    out = s.model(batch, s.grid_hw)
    return pretraining_loss(out, teacher_out, image_feat, batch, s.cfg, teacher_temp)


def accumulate_gradients(s: TrainState, batches, teacher_temp: float) -> dict[str, float]:
    """Backward of every micro-batch (gradients all-reduced on the last only);
    returns this rank's loss terms averaged over the micro-batches."""
    accumulate = s.accumulate
    amp = autocast(s.cfg, s.device)
    sums: dict[str, float] = {}
    mask = MaskShape.at(s.cfg.mask, s.step, s.cfg.run.steps)
    for micro in range(accumulate):
        batch = next_batch(batches, s.device)
        if s.cfg.mask.per_batch:  # released: cube masks drawn over the whole batch
            batch = mask_batch(batch, mask.size, mask.ratio, mask.jitter, mask.jitter_clip)
        sync = s.model.no_sync() if (s.world > 1 and micro < accumulate - 1) else nullcontext()
        with sync:
            with amp:
                terms = forward_losses(s, batch, teacher_temp)
            (terms["loss"] / accumulate).backward()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) / accumulate
    return sums


def optimizer_step(s: TrainState, momentum: float) -> torch.Tensor:
    """Clip, step, move the teacher towards the student; returns the gradient norm."""
    from concerto.ssl.ema import ema_update

    clip = s.cfg.optim.clip_grad
    grad_norm = torch.nn.utils.clip_grad_norm_(s.student.parameters(), clip) if clip > 0 else torch.tensor(0.0)
    s.optimizer.step()
    ema_update(*s.teacher.ema_pairs(s.student), momentum)
    return grad_norm


def train_step(s: TrainState, batches) -> tuple[dict[str, float], dict[str, float]]:
    """One optimiser step (advances ``s.step``); returns what is logged: (every loss
    term ``pretraining_loss`` gave, averaged over ranks; grad_norm and the schedule values)."""
    sched = apply_schedules(s.optimizer, s.cfg, s.step)
    s.optimizer.zero_grad(set_to_none=True)
    sums = accumulate_gradients(s, batches, sched["teacher_temp"])
    grad_norm = optimizer_step(s, sched["momentum"])
    s.step += 1
    losses = average_over_ranks(sums, s.world)
    check_finite(losses, s.step)
    return losses, dict(grad_norm=float(grad_norm), **sched)
