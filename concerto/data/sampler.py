"""Deterministic, resumable, shard-aware batch order for one rank.

Epoch order (a pure function of seed, epoch and the store's shard layout):

1. shards are shuffled with ``(seed, epoch)``; each shard's samples are shuffled too;
   concatenating them gives one global list, so consecutive samples share a shard;
2. the list is padded by repeating its head until it divides by the world size
   (every rank then runs the same number of steps; at most world_size - 1 samples
   are seen twice per epoch) and cut into ``world_size`` contiguous pieces, so a
   shard is split between at most two ranks;
3. a rank's piece is cut into ``num_workers`` contiguous runs and batched; batches
   are interleaved worker by worker (w0b0, w1b0, w0b1, ...), which is the order in
   which ``torch.utils.data.DataLoader`` hands batches to its workers, so each
   worker keeps reading its own run of shards.

Every item is a ``SampleTicket`` carrying the sample index, the epoch, the
position in the epoch and the optimiser step it feeds, so augmentation is seeded
per sample and does not depend on which worker or process draws it.

Resume state = ``{"epoch", "consumed"}`` (samples this rank has taken this epoch);
it must be a whole number of batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np


@dataclass(frozen=True)
class SampleTicket:
    """One sample to load: sample index in the store, and what seeds its randomness."""

    index: int
    epoch: int
    position: int  # position in this rank's epoch order
    rank: int
    step: int  # optimiser step this sample feeds (for step-dependent schedules)
    seed: int
    # store indices of the next batches the same loader worker reads (a tuple of
    # tuples; a hint for prefetching from remote stores, no influence on the sample)
    lookahead: tuple = ()

    def rng_seed(self) -> list[int]:
        return [self.seed, self.epoch, self.rank, self.position]


# batches a ticket announces ahead (prefetch depth of remote reads)
LOOKAHEAD = 3


def epoch_order(shards: Sequence[Sequence[int]], seed: int, epoch: int) -> np.ndarray:
    """All sample indices in this epoch's order: shuffled shards, each shuffled inside."""
    rng = np.random.default_rng([seed, epoch, 0x5A4D])
    parts = [np.asarray(shards[i], dtype=np.int64) for i in rng.permutation(len(shards))]
    parts = [p[rng.permutation(len(p))] for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def rank_order(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous piece after padding ``order`` to a multiple of world_size."""
    n = len(order)
    per_rank = -(-n // world_size)
    total = per_rank * world_size
    if total > n:
        order = np.concatenate([order, np.resize(order, total - n)])
    return order[rank * per_rank:(rank + 1) * per_rank]


def worker_runs(length: int, batch_size: int, num_workers: int) -> list[list[np.ndarray]]:
    """Positions 0..length-1 cut into num_workers contiguous runs, each batched."""
    workers = max(num_workers, 1)
    bounds = np.linspace(0, length, workers + 1).round().astype(int)
    return [[np.arange(s, min(s + batch_size, b)) for s in range(a, b, batch_size)]
            for a, b in zip(bounds[:-1], bounds[1:])]


def interleave_worker_batches(length: int, batch_size: int, num_workers: int) -> list[np.ndarray]:
    """Positions 0..length-1 cut into num_workers runs, batched, interleaved by worker."""
    runs = worker_runs(length, batch_size, num_workers)
    out = []
    for k in range(max((len(r) for r in runs), default=0)):
        out.extend(r[k] for r in runs if k < len(r))
    return out


class ShardBatchSampler:
    """Batch sampler over one rank's share; iterate it for one epoch (resumable).

    ``global_step`` of the first batch of the epoch must be supplied by the caller
    (``set_epoch``) when it differs from ``epoch * batches_per_epoch // accumulate``.
    """

    def __init__(self, shards: Sequence[Sequence[int]], batch_size: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, seed: int = 0,
                 accumulate: int = 1):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.shards = [list(map(int, s)) for s in shards]
        self.num_samples = sum(len(s) for s in self.shards)
        if self.num_samples == 0:
            raise ValueError("no samples to draw from")
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.seed = seed
        self.accumulate = accumulate
        self.epoch = 0
        self.consumed = 0

    @property
    def samples_per_rank(self) -> int:
        return -(-self.num_samples // self.world_size)

    def __len__(self) -> int:
        """Batches per epoch for this rank (the same on every rank)."""
        return len(interleave_worker_batches(self.samples_per_rank, self.batch_size, self.num_workers))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.consumed = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def layout(self) -> dict:
        """What the batch order depends on besides (seed, epoch); a resumed run must match."""
        return {"batch_size": self.batch_size, "world_size": self.world_size,
                "num_workers": max(self.num_workers, 1), "num_samples": self.num_samples, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.get("layout", {}).items():
            if self.layout().get(key) != value:
                raise ValueError(f"loader state: saved with {key}={value}, now {self.layout().get(key)}; "
                                 "the batch order would differ")
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])

    def batches(self) -> list[list[SampleTicket]]:
        """This epoch's batches for this rank, all of them (ignores ``consumed``)."""
        order = rank_order(epoch_order(self.shards, self.seed, self.epoch), self.rank, self.world_size)
        base = self.epoch * len(self)
        # the batches after each batch in its worker's run (what that worker reads next)
        following = {int(run[k][0]): tuple(tuple(int(order[p]) for p in nxt) for nxt in run[k + 1:k + 1 + LOOKAHEAD])
                     for run in worker_runs(len(order), self.batch_size, self.num_workers) for k in range(len(run))}
        out = []
        for b, positions in enumerate(interleave_worker_batches(len(order), self.batch_size, self.num_workers)):
            step = (base + b) // self.accumulate
            ahead = following.get(int(positions[0]), ()) if len(positions) else ()
            out.append([SampleTicket(int(order[p]), self.epoch, int(p), self.rank, step, self.seed, ahead)
                        for p in positions])
        return out

    def __iter__(self) -> Iterator[list[SampleTicket]]:
        """The epoch's batches after the first ``consumed`` samples. Does not move
        ``consumed``: the loader counts what it has handed to the trainer."""
        done, skip = 0, self.consumed
        for batch in self.batches():
            if done >= skip:
                yield batch
            done += len(batch)
