"""The one training / test loop of every segmentation mode (single process or torchrun ranks).

Training: step-indexed, so a run resumes exactly: the scenes of step s on rank
r are a pure function of (seed, s, r) (a seeded permutation per epoch, each
rank taking its own slice), each sample's augmentation draws from a generator
of (seed, step, rank, slot), and torch's generator (drop-path, curve
shuffling) is reseeded from (seed, step, rank) every step. Gradients of the
trainable parameters are averaged over ranks with ``all_reduce`` (gloo on
CPU). Loss: cross-entropy + Lovasz-softmax (weights 1, 1; label -1 ignored);
AdamW with the one-cycle schedule (cosine, 5 % warm-up, div 10, final div
1000), parameters of ``block`` modules at a tenth of the lr, gradient norm
clipped at 3 (the reference fine-tuning configs).

Checkpoints: ``<output>/checkpoints/step_*/`` (``concerto.checkpointing``:
atomic, with every rank's RNG state); tensorboard scalars in ``<output>/tb``.

Test: Pointcept's fragment voting (``seg_transforms.voting_fragments``), the
held-out scenes shared over ranks and the confusion matrices summed.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from concerto.eval.metrics import confusion_matrix, metrics_from_confusion
from concerto.eval.seg_transforms import Sample, voting_fragments, train_sample
from concerto.train.metrics import RunLog


@dataclass
class LoopConfig:
    """Optimisation and protocol settings of one run (recorded in the result)."""

    epochs: int = 100
    batch_size: int = 2  # scenes per rank per step
    lr: float = 0.002
    block_lr_scale: float = 0.1
    weight_decay: float = 0.02
    clip_grad: float = 3.0
    pct_start: float = 0.05
    lovasz_weight: float = 1.0
    max_points: int = 102_400  # sphere crop of a training sample
    test_augs: str = "full"  # full | none
    max_fragments: Optional[int] = None
    seed: int = 0
    save_every: int = 0  # steps; 0: only at the end
    log_every: int = 10


# ----------------------------------------------------------------------------- loss


def lovasz_softmax(prob: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax loss (Berman et al. 2018) over the classes present; prob [M, K] softmax, label [M] >= 0."""
    losses = []
    for c in torch.unique(label):
        fg = (label == c).float()
        err = (fg - prob[:, c]).abs()
        err_sorted, perm = torch.sort(err, descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        inter = gts - fg_sorted.cumsum(0)
        union = gts + (1 - fg_sorted).cumsum(0)
        jaccard = 1.0 - inter / union
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(err_sorted, jaccard))
    return torch.stack(losses).mean()


def segmentation_loss(logits: torch.Tensor, label: torch.Tensor, lovasz_weight: float) -> torch.Tensor:
    keep = label != -1
    if not keep.any():  # a crop without labelled points: no signal, but keep the graph for all_reduce
        return logits.sum() * 0.0
    loss = F.cross_entropy(logits[keep], label[keep])
    if lovasz_weight > 0:
        loss = loss + lovasz_weight * lovasz_softmax(logits[keep].softmax(-1), label[keep])
    return loss


# ----------------------------------------------------------------------------- batches


def pack(samples: Sequence[Sample], device) -> dict:
    """Concatenate samples into one batch (offset = cumulative row counts)."""
    counts = torch.tensor([len(s.coord) for s in samples], dtype=torch.long)
    return dict(coord=torch.from_numpy(np.concatenate([s.coord for s in samples])).to(device),
                feat=torch.from_numpy(np.concatenate([s.feat for s in samples])).to(device),
                grid_coord=torch.from_numpy(np.concatenate([s.grid_coord for s in samples])).to(device),
                offset=torch.cumsum(counts, 0).to(device),
                label=torch.from_numpy(np.concatenate([s.label for s in samples])).to(device))


def steps_per_epoch(num_scenes: int, batch_size: int, world: int) -> int:
    return max(1, math.ceil(num_scenes / (batch_size * world)))


def scenes_of_step(num_scenes: int, step: int, rank: int, world: int, batch_size: int, seed: int) -> list[int]:
    """Scene positions rank ``rank`` trains on at ``step`` (epoch permutations, cyclically padded)."""
    spe = steps_per_epoch(num_scenes, batch_size, world)
    epoch, pos = divmod(step, spe)
    perm = np.random.default_rng([seed, epoch]).permutation(num_scenes)
    perm = np.resize(perm, spe * batch_size * world)
    start = (pos * world + rank) * batch_size
    return perm[start:start + batch_size].tolist()


def param_groups(model: torch.nn.Module, lr: float, block_scale: float) -> list[dict]:
    block, other = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (block if ".block" in name else other).append(p)
    groups = [{"params": other, "max_lr": lr, "lr": lr}]
    if block:
        groups.append({"params": block, "max_lr": lr * block_scale, "lr": lr * block_scale})
    return groups


# ----------------------------------------------------------------------------- state set-up


@dataclass
class FitState:
    """What one ``fit`` call carries from step to step; ``step`` counts optimiser steps done."""

    model: torch.nn.Module  # a Segmentor
    optimizer: torch.optim.Optimizer
    cfg: LoopConfig
    rank: int
    world: int
    device: torch.device
    total: int  # steps of the whole run (every epoch)
    step: int = 0
    trainable: list = field(default_factory=list)  # parameters with requires_grad, in model order


@dataclass
class FitData:
    """The training scenes of a run and what augmentation must respect."""

    scenes: Sequence  # LabelledScene
    labels: dict  # {key: int [N]}, -1 = unlabelled
    keep: Optional[dict]  # {key: point rows augmentation must keep} (limited annotations) or None
    grid_size: float  # m, the encoder's voxel size


def build_fit_state(model, num_scenes: int, cfg: LoopConfig, ckpt_root: Path, rank: int, world: int, device,
                    resume: bool) -> FitState:
    """AdamW over the trainable parameters; restored from the latest checkpoint when ``resume`` finds one."""
    total = cfg.epochs * steps_per_epoch(num_scenes, cfg.batch_size, world)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.block_lr_scale), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    s = FitState(model, optimizer, cfg, rank, world, device, total)
    if resume:
        restore_latest(s, ckpt_root)
    s.trainable = [p for p in model.parameters() if p.requires_grad]
    return s


# ----------------------------------------------------------------------------- checkpoints


def sync_ranks(world: int) -> None:
    """Barrier over the ``world`` ranks of the run (none for one process)."""
    if world > 1:
        dist.barrier()


def restore_latest(s: FitState, ckpt_root: Path) -> None:
    """Model, optimiser, step and this rank's RNG state of the latest checkpoint under ``ckpt_root`` (if any);
    refuses one saved with another number of ranks or by another mode."""
    from concerto.train.checkpoint import latest_training_state, load_training_state, set_rng_state

    path = latest_training_state(ckpt_root)
    if path is None:
        return
    state, rng = load_training_state(path, s.rank)
    if state.get("world_size", 1) != s.world:
        raise RuntimeError(f"resume from '{path}': saved with {state.get('world_size')} ranks, running with {s.world}")
    if state.get("mode") != s.model.mode:
        raise RuntimeError(f"resume from '{path}': saved by mode {state.get('mode')!r}, running {s.model.mode!r}")
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.step = int(state["step"])
    if rng is not None:
        set_rng_state(rng)


def save_checkpoint(s: FitState, ckpt_root: Path, extra_state: Optional[dict]) -> None:
    """Collective: ``<ckpt_root>/step_*/`` at ``s.step`` (rank 0's state plus every rank's RNG state)."""
    from concerto.train.checkpoint import save_training_state

    state = None
    if s.rank == 0:
        state = dict(step=s.step, model=s.model.state_dict(), optimizer=s.optimizer.state_dict(), world_size=s.world,
                     mode=s.model.mode, loop=asdict(s.cfg), **(extra_state or {}))
    save_training_state(ckpt_root, s.step, state, s.rank, lambda: sync_ranks(s.world))


# ----------------------------------------------------------------------------- the step


def step_samples(data: FitData, cfg: LoopConfig, step: int, rank: int, world: int) -> list[Sample]:
    """This rank's augmented samples of ``step``; slot i draws from a generator of (seed, step, rank, i)."""
    samples = []
    for slot, i in enumerate(scenes_of_step(len(data.scenes), step, rank, world, cfg.batch_size, cfg.seed)):
        s = data.scenes[i]
        rng = np.random.default_rng([cfg.seed, step, rank, slot])
        samples.append(train_sample(s.coord, s.color, s.normal, data.labels[s.key], data.grid_size, rng,
                                    cfg.max_points, None if data.keep is None else data.keep.get(s.key)))
    return samples


def forward_loss(s: FitState, batch: dict) -> torch.Tensor:
    """Scalar loss of one packed batch; drop-path and curve shuffling draw from a generator of (seed, step, rank)."""
    gen = torch.Generator().manual_seed(s.cfg.seed * 7919 + s.step * 31 + s.rank)
    logits = s.model(batch["coord"], batch["feat"], batch["grid_coord"], batch["offset"], generator=gen)
    return segmentation_loss(logits, batch["label"], s.cfg.lovasz_weight)


def average_gradients(trainable: list, loss: torch.Tensor, world: int) -> float:
    """Average the gradients of ``trainable`` over ranks, in place; returns the loss averaged likewise."""
    loss_value = torch.tensor([float(loss.detach())], dtype=torch.float64)
    if world > 1:
        for p in trainable:
            if p.grad is None:  # a parameter this rank's batch did not reach still joins the all_reduce
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world
        dist.all_reduce(loss_value)
        loss_value /= world
    return float(loss_value)


def train_step(s: FitState, data: FitData) -> float:
    """One optimiser step (advances ``s.step``): one-cycle lr, reseeded torch RNG, forward, backward,
    gradients averaged over ranks, clipping; returns the loss averaged over ranks."""
    from concerto.schedules import one_cycle_factor

    factor = one_cycle_factor(s.step, s.total, s.cfg.pct_start)
    for g in s.optimizer.param_groups:
        g["lr"] = g["max_lr"] * factor
    torch.manual_seed(s.cfg.seed * 1_000_003 + s.step * 1009 + s.rank)
    batch = pack(step_samples(data, s.cfg, s.step, s.rank, s.world), s.device)
    loss = forward_loss(s, batch)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    loss_value = average_gradients(s.trainable, loss, s.world)
    if s.cfg.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(s.trainable, s.cfg.clip_grad)
    s.optimizer.step()
    s.step += 1
    if not math.isfinite(loss_value):
        raise RuntimeError(f"step {s.step}: non-finite loss {loss_value}")
    return loss_value


# ----------------------------------------------------------------------------- logging


class FitLog(RunLog):
    """Pretraining's RunLog (rank 0 only) with this loop's tags (``<output>/tb``: train/loss, train/lr)
    and ``desc`` as the progress bar's label."""

    def __init__(self, output: Path, rank: int, desc: str, start: int, total: int, log_every: int, progress: bool):
        if rank == 0:
            output.mkdir(parents=True, exist_ok=True)
        super().__init__(output, rank, max(log_every, 1), start, total, progress=False)
        if rank == 0 and progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)

    def log(self, step: int, loss: float, lr: float, end: int) -> None:
        """Scalars every ``log_every`` steps and at ``end``; the bar every step."""
        if self.writer is not None and (step % self.log_every == 0 or step == end):
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")


# ----------------------------------------------------------------------------- loop


def fit(model, train_scenes: Sequence, labels: dict, cfg: LoopConfig, output: Path, rank: int = 0, world: int = 1,
        device=torch.device("cpu"), resume: bool = False, stop_after: Optional[int] = None,
        keep: Optional[dict] = None, progress: bool = True, extra_state: Optional[dict] = None) -> dict:
    """Train ``model`` (a Segmentor) on ``train_scenes`` (LabelledScene) with labels ``labels`` ({key: [N]}).

    ``keep``: {key: point rows} that augmentation must keep (limited annotations).
    ``stop_after``: leave after that many steps of this call (checkpoint written), as if killed.
    Returns {"step", "total_steps", "last_loss", "seconds"}.
    """
    output = Path(output)
    ckpt_root = output / "checkpoints"
    data = FitData(train_scenes, labels, keep, float(model.backbone.config.grid_size))
    s = build_fit_state(model, len(train_scenes), cfg, ckpt_root, rank, world, device, resume)
    log = FitLog(output, rank, str(model.mode), s.step, s.total, cfg.log_every, progress)
    end = s.total if stop_after is None else min(s.total, s.step + stop_after)
    t0 = time.perf_counter()
    last = float("nan")
    model.train()
    while s.step < end:
        last = train_step(s, data)
        log.log(s.step, last, s.optimizer.param_groups[0]["lr"], end)
        if (cfg.save_every and s.step % cfg.save_every == 0) or s.step == end:
            save_checkpoint(s, ckpt_root, extra_state)
    log.close()
    return {"step": s.step, "total_steps": s.total, "last_loss": last, "seconds": round(time.perf_counter() - t0, 2)}


@torch.no_grad()
def predict_scene(model, scene, augs: str = "full", max_fragments: Optional[int] = None,
                  device=torch.device("cpu")) -> np.ndarray:
    """Class id int64 [N] of every point of ``scene`` by fragment voting (summed softmax)."""
    model.eval()
    grid_size = float(model.backbone.config.grid_size)
    votes = torch.zeros(len(scene.coord), model.head.out_features, dtype=torch.float64)
    for frag in voting_fragments(scene.coord, scene.color, scene.normal, grid_size, augs, max_fragments):
        b = pack([frag], device)
        prob = model(b["coord"], b["feat"], b["grid_coord"], b["offset"]).softmax(-1).double().cpu()
        votes.index_add_(0, torch.from_numpy(frag.index), prob)
    return votes.argmax(1).numpy()


def evaluate(model, scenes: Sequence, num_classes: int, rank: int = 0, world: int = 1, augs: str = "full",
             max_fragments: Optional[int] = None, device=torch.device("cpu")):
    """SegMetrics over ``scenes`` (all ranks take part; scene i is predicted by rank i % world)."""
    conf = np.zeros((num_classes, num_classes), np.int64)
    for i, s in enumerate(scenes):
        if i % world == rank:
            conf += confusion_matrix(s.label, predict_scene(model, s, augs, max_fragments, device), num_classes)
    if world > 1:
        t = torch.from_numpy(conf)
        dist.all_reduce(t)
        conf = t.numpy()
    return metrics_from_confusion(conf)


def write_json(path: Path, obj) -> Path:
    from preprocess.atomic_file import atomic_write

    text = json.dumps(obj, indent=2)
    return atomic_write(path, lambda p: Path(p).write_text(text))
