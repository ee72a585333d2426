"""The training loader: sampler + dataset + DataLoader, with a resumable state.

``ShardLoader`` iterates forever, epoch after epoch. Its state is
``{"epoch", "consumed"}``: the batches it has *yielded* (so what the trainer has
received; DataLoader prefetching does not count). Loading the state and
iterating again continues with exactly the next batch an uninterrupted run would
have produced, since every batch's content is a pure function of
(seed, epoch, rank, position, step).
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Union

import torch
from torch.utils.data import DataLoader

from concerto.data.collate import collate_samples
from concerto.data.dataset import SampleDataset
from concerto.data.sample import SampleSpec
from concerto.data.sampler import ShardBatchSampler


class ShardLoader:
    def __init__(self, store: Union[str, Any], spec: SampleSpec, batch_size: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, seed: int = 0,
                 accumulate: int = 1, version: Optional[int] = None, skip_corrupt: bool = False):
        self.dataset = SampleDataset(store, spec, version=version, skip_corrupt=skip_corrupt)
        self.skipped = 0  # samples left out because their shard data is damaged
        self.sampler = ShardBatchSampler(self.dataset.shards(), batch_size, rank=rank,
                                         world_size=world_size, num_workers=num_workers,
                                         seed=seed, accumulate=accumulate)
        self.num_workers = num_workers

    @property
    def version(self):
        return self.dataset.version

    def __len__(self) -> int:
        """Batches per epoch (equal on every rank)."""
        return len(self.sampler)

    def state_dict(self) -> dict:
        return dict(self.sampler.state_dict(), layout=self.sampler.layout())

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)

    def _loader(self) -> DataLoader:
        # own generator: creating the iterator must not draw from the global torch RNG,
        # or a resumed run (one more iterator than an uninterrupted one) would diverge
        generator = torch.Generator().manual_seed(self.sampler.seed * 1000003 + self.sampler.epoch)
        return DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=self.num_workers,
                          collate_fn=collate_samples, persistent_workers=False, generator=generator,
                          multiprocessing_context=self._worker_context())

    def _worker_context(self):
        # fork starts workers fastest, but is unsafe once CUDA is initialised
        if not self.num_workers:
            return None
        return "spawn" if torch.cuda.is_available() and torch.cuda.is_initialized() else "fork"

    def epoch(self) -> Iterator[dict]:
        """The rest of the current epoch; advances to the next epoch at its end."""
        for batch in self._loader():
            self.sampler.consumed += len(batch["names"]) + len(batch["skipped"])
            self.skipped += len(batch["skipped"])
            if batch["names"]:
                yield batch
        self.sampler.set_epoch(self.sampler.epoch + 1)

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield from self.epoch()
