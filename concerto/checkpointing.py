"""Atomic training checkpoints.

Layout under ``<output>/checkpoints``: one folder per saved step,
``step_00000100/`` holding ``state.pt`` (rank 0: models, optimiser, step, loader
state, config, data version) and ``rng_rank{r}.pt`` (every rank's RNG states). A
folder is written under a temporary name and renamed once complete, so a run
killed mid-save leaves only whole checkpoints; ``latest_checkpoint`` picks the
highest complete step.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from preprocess.atomic_file import atomic_write

STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to ``path`` via a temporary file and a rename."""
    atomic_write(path, lambda p: torch.save(obj, p))


def save_checkpoint(root: Path, step: int, state: Optional[dict], rank: int, barrier: Callable[[], None],
                    extra_files: Optional[Callable[[Path], None]] = None) -> Path:
    """Collective: every rank calls it. Rank 0 passes ``state``; others pass None.
    ``extra_files(tmp_dir)`` (rank 0) may write more files into the folder."""
    root = Path(root)
    final = step_dir(root, step)
    tmp = root / f".tmp_step_{step:08d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        torch.save(state, tmp / "state.pt")
        if extra_files is not None:
            extra_files(tmp)
    barrier()
    if rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    barrier()
    return final


def latest_checkpoint(root: Path) -> Optional[Path]:
    root = Path(root)
    if not root.is_dir():
        return None
    steps = sorted(int(m.group(1)) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "state.pt").is_file())
    return step_dir(root, steps[-1]) if steps else None


def load_checkpoint_dir(path: Path, rank: int) -> tuple[dict, Optional[dict]]:
    """(state, this rank's RNG state or None when the run had fewer ranks)."""
    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    rng_file = path / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=False) if rng_file.is_file() else None
    return state, rng
