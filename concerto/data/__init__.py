"""Shard dataset and loader for pretraining (rank/worker split, deterministic resume)."""
from concerto.data.collate import collate_samples
from concerto.data.dataset import DataError, SampleDataset, check_store, open_store
from concerto.data.loader import ShardLoader
from concerto.data.sample import SampleError, SampleSpec, build_sample
from concerto.data.sampler import SampleTicket, ShardBatchSampler

__all__ = ["collate_samples", "DataError", "SampleDataset", "check_store", "open_store",
           "ShardLoader", "SampleError", "SampleSpec", "build_sample", "SampleTicket",
           "ShardBatchSampler"]
