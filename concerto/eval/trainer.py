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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from concerto.eval.metrics import confusion_matrix, metrics_from_confusion
from concerto.eval.seg_transforms import Sample, voting_fragments, train_sample


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


# ----------------------------------------------------------------------------- loop


def fit(model, train_scenes: Sequence, labels: dict, cfg: LoopConfig, output: Path, rank: int = 0, world: int = 1,
        device=torch.device("cpu"), resume: bool = False, stop_after: Optional[int] = None,
        keep: Optional[dict] = None, progress: bool = True, extra_state: Optional[dict] = None) -> dict:
    """Train ``model`` (a Segmentor) on ``train_scenes`` (LabelledScene) with labels ``labels`` ({key: [N]}).

    ``keep``: {key: point rows} that augmentation must keep (limited annotations).
    ``stop_after``: leave after that many steps of this call (checkpoint written), as if killed.
    Returns {"step", "total_steps", "last_loss", "seconds"}.
    """
    from concerto.train.checkpoint import latest_training_state, load_training_state, save_training_state, set_rng_state
    from concerto.schedules import one_cycle_factor

    output = Path(output)
    ckpt_root = output / "checkpoints"
    grid_size = float(model.backbone.config.grid_size)
    total = cfg.epochs * steps_per_epoch(len(train_scenes), cfg.batch_size, world)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.block_lr_scale), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    step = 0
    if resume and (path := latest_training_state(ckpt_root)) is not None:
        state, rng = load_training_state(path, rank)
        if state.get("world_size", 1) != world:
            raise RuntimeError(f"resume from '{path}': saved with {state.get('world_size')} ranks, running with {world}")
        if state.get("mode") != model.mode:
            raise RuntimeError(f"resume from '{path}': saved by mode {state.get('mode')!r}, running {model.mode!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        if rng is not None:
            set_rng_state(rng)
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        output.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(output / "tb"))

    def barrier():
        if world > 1:
            dist.barrier()

    def checkpoint(at: int) -> None:
        state = None
        if rank == 0:
            state = dict(step=at, model=model.state_dict(), optimizer=optimizer.state_dict(), world_size=world,
                         mode=model.mode, loop=asdict(cfg), **(extra_state or {}))
        save_training_state(ckpt_root, at, state, rank, barrier)

    trainable = [p for p in model.parameters() if p.requires_grad]
    end = total if stop_after is None else min(total, step + stop_after)
    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc=f"{model.mode}", dynamic_ncols=True)
    t0 = time.perf_counter()
    last = float("nan")
    model.train()
    while step < end:
        factor = one_cycle_factor(step, total, cfg.pct_start)
        for g in optimizer.param_groups:
            g["lr"] = g["max_lr"] * factor
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank)
        samples = []
        for slot, i in enumerate(scenes_of_step(len(train_scenes), step, rank, world, cfg.batch_size, cfg.seed)):
            s = train_scenes[i]
            rng = np.random.default_rng([cfg.seed, step, rank, slot])
            samples.append(train_sample(s.coord, s.color, s.normal, labels[s.key], grid_size, rng, cfg.max_points,
                                        None if keep is None else keep.get(s.key)))
        batch = pack(samples, device)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + step * 31 + rank)
        logits = model(batch["coord"], batch["feat"], batch["grid_coord"], batch["offset"], generator=gen)
        loss = segmentation_loss(logits, batch["label"], cfg.lovasz_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss_value = torch.tensor([float(loss.detach())], dtype=torch.float64)
        if world > 1:
            for p in trainable:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= world
            dist.all_reduce(loss_value)
            loss_value /= world
        if cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
        optimizer.step()
        step += 1
        last = float(loss_value)
        if not math.isfinite(last):
            raise RuntimeError(f"step {step}: non-finite loss {last}")
        if writer is not None and (step % max(cfg.log_every, 1) == 0 or step == end):
            writer.add_scalar("train/loss", last, step)
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last:.4f}")
        if (cfg.save_every and step % cfg.save_every == 0) or step == end:
            checkpoint(step)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return {"step": step, "total_steps": total, "last_loss": last, "seconds": round(time.perf_counter() - t0, 2)}


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
