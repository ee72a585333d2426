"""The training loop: set up, step, log, checkpoint, until the last step."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from concerto.config import PretrainConfig
from concerto.train.checkpoint import save_run_checkpoint
from concerto.train.metrics import RunLog, parameter_digest, write_resolved_config
from concerto.train.state import barrier, build_state, check_config, resolve_config, start_run
from concerto.train.step import train_step


def train(cfg: PretrainConfig, data: Any, output: str | Path, resume: bool = False,
          stop_after: Optional[int] = None, progress: bool = True) -> dict:
    """Run pretraining; returns a summary (final step, last losses, paths).

    ``data``: a store URL/path or a store object. ``stop_after``: leave after that
    many optimiser steps of this call (a checkpoint is written first), as if killed.
    ``cfg`` is not changed: the run works on ``resolve_config``'s copy (written to
    ``<output>/config.json``).
    """
    check_config(cfg)
    start = start_run(cfg, data, Path(output), resume)
    info = start.store_info
    run_cfg = resolve_config(cfg, info)
    if start.rank == 0 and cfg.run.steps is None and info.started_steps is None:
        print(f"run.steps = {run_cfg.run.steps}: {cfg.run.epochs} epochs over {info.num_samples} samples", flush=True)
    s = build_state(run_cfg, data, start)
    if s.rank == 0:
        write_resolved_config(s.output, s.cfg, data, s.loader.version)
    run = s.cfg.run
    log = RunLog(s.output, s.rank, run.log_every, s.step, run.steps, progress)
    end = run.steps if stop_after is None else min(run.steps, s.step + stop_after)
    batches, last = iter(s.loader), {}
    s.student.train()
    t0 = time.perf_counter()
    while s.step < end:
        losses, values = train_step(s, batches)
        log.log(s.step, losses, values, end)
        last = {**losses, **values}
        if s.step % run.save_every == 0 or s.step == end:
            save_run_checkpoint(s, barrier)
    log.close()
    if s.loader.skipped:
        print(f"rank {s.rank}: left out {s.loader.skipped} samples with damaged shard data (see the warnings above)",
              flush=True)
    return dict(step=s.step, last=last, output=str(s.output), seconds=time.perf_counter() - t0,
                rank=s.rank, world_size=s.world, param_checksum=parameter_digest(s.student),
                skipped_samples=s.loader.skipped, data_version=s.loader.version)
