"""What a run reports: loss terms averaged over ranks, tensorboard scalars, the
progress bar, the resolved config, and a digest of the weights."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist


def average_over_ranks(sums: dict[str, float], world: int) -> dict[str, float]:
    """Loss terms averaged over ranks for logging, whatever terms the loss returns: a
    term some ranks lack (the cross-modal term of image-less batches) is averaged over
    the ranks that have it. Collective (every rank calls it): the ranks first gather
    their term names, then all-reduce a (sum, count) pair per name of the sorted union."""
    if world == 1:
        return sums
    names: list = [None] * world
    dist.all_gather_object(names, sorted(sums))
    union = sorted(set().union(*names))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    vals = torch.tensor([[sums.get(k, 0.0), float(k in sums)] for k in union], dtype=torch.float64, device=device)
    dist.all_reduce(vals)
    return {k: v / c for k, (v, c) in zip(union, vals.tolist()) if c > 0}


def check_finite(sums: dict[str, float], step: int) -> None:
    from concerto.train.state import TrainError

    if not all(math.isfinite(x) for x in sums.values()):
        raise TrainError(f"step {step}: non-finite loss {sums}")


def parameter_digest(module: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes, in name order (equal digests = equal weights)."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_resolved_config(output: Path, cfg, data: Any, data_version: Optional[int]) -> None:
    """``<output>/config.json``: the config as run; its ``data`` section keeps every
    data setting plus the store URL and the manifest version read."""
    output.mkdir(parents=True, exist_ok=True)
    where = str(data) if isinstance(data, (str, Path)) else None
    resolved = cfg.to_dict()
    resolved["data"] = dict(resolved["data"], store=where, manifest_version=data_version)
    (output / "config.json").write_text(json.dumps(resolved, indent=2, default=str))


class RunLog:
    """Rank 0's tensorboard writer (``<output>/tb``) and progress bar; other ranks log nothing."""

    def __init__(self, output: Path, rank: int, log_every: int, start: int, total: int, progress: bool):
        self.log_every, self.writer, self.bar = log_every, None, None
        if rank != 0:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(output / "tb"))
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="pretrain", dynamic_ncols=True)

    def log(self, step: int, losses: dict, values: dict, end: int) -> None:
        """Scalars every ``log_every`` steps and at ``end`` (every loss term under
        ``loss/``, the other values under ``params/``); the bar every step."""
        if self.writer is not None and (step % self.log_every == 0 or step == end):
            for prefix, scalars in (("loss", losses), ("params", values)):
                for k, v in scalars.items():
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{losses['loss']:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
