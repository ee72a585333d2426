"""The training loop: set up, step, log, checkpoint, until the last step."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from concerto.config import PretrainConfig
from concerto.train.checkpoint import save_run_checkpoint
from concerto.train.metrics import RunLog, parameter_digest, write_resolved_config
from concerto.train.state import barrier, build_state, check_config
from concerto.train.step import train_step


def train(cfg: PretrainConfig, data: Any, output: str | Path, resume: bool = False,
          stop_after: Optional[int] = None, progress: bool = True) -> dict:
    """Run pretraining; returns a summary (final step, last losses, paths).

    ``data``: a store URL/path or a store object. ``stop_after``: leave after that
    many optimiser steps of this call (a checkpoint is written first), as if killed.
    """
    check_config(cfg)
    s = build_state(cfg, data, Path(output), resume)
    if s.rank == 0:
        write_resolved_config(s.output, cfg, data, s.loader.version)
    run = cfg.run
    log = RunLog(s.output, s.rank, run.log_every, s.step, run.steps, progress)
    end = run.steps if stop_after is None else min(run.steps, s.step + stop_after)
    batches, last = iter(s.loader), {}
    s.student.train()
    t0 = time.perf_counter()
    while s.step < end:
        last = train_step(s, batches)
        log.log(s.step, last, end)
        if s.step % run.save_every == 0 or s.step == end:
            save_run_checkpoint(s, barrier)
    log.close()
    if s.loader.skipped:
        print(f"rank {s.rank}: left out {s.loader.skipped} samples with damaged shard data (see the warnings above)",
              flush=True)
    return dict(step=s.step, last=last, output=str(s.output), seconds=time.perf_counter() - t0,
                rank=s.rank, world_size=s.world, param_checksum=parameter_digest(s.student),
                skipped_samples=s.loader.skipped, data_version=s.loader.version)
