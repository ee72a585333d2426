"""What training writes to disk: the training state (to resume) and the backbone
export (to use).

Training state, under ``<output>/checkpoints``: one folder per saved step,
``step_00000100/`` holding ``state.pt`` (rank 0: models, optimiser, step, loader
state, config, data version) and ``rng_rank{r}.pt`` (every rank's RNG states). A
folder is written under a temporary name and renamed once complete, so a run
killed mid-save leaves only whole checkpoints; ``latest_training_state`` picks the
highest complete step.

Backbone export: the student's encoder in the official Sonata/Concerto layout
(``concerto.model.official_layout``), written atomically to ``backbone.pth`` in
each step folder and in ``<output>``; ``concerto.load`` / ``load_checkpoint`` read it.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
from preprocess.atomic_file import atomic_write

if TYPE_CHECKING:
    from concerto.train.state import TrainState

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


# ----------------------------------------------------------------------------- backbone export


def export_backbone(model: torch.nn.Module, path: str | os.PathLike, prefix: str = "") -> Path:
    """Write a PointTransformerV3 as ``{"config", "state_dict"}`` (official layout) to
    ``path``, atomically (temporary name, then rename)."""
    from concerto.model import official_layout

    layout = official_layout(model, prefix)
    return atomic_write(path, lambda p: torch.save(layout, p))


# ----------------------------------------------------------------------------- training state


def save_training_state(root: Path, step: int, state: Optional[dict], rank: int, barrier: Callable[[], None],
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


def latest_training_state(root: Path) -> Optional[Path]:
    """The step folder of the highest complete step under ``root``, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    steps = sorted(int(m.group(1)) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "state.pt").is_file())
    return step_dir(root, steps[-1]) if steps else None


def load_training_state(path: Path, rank: int) -> tuple[dict, Optional[dict]]:
    """(state, this rank's RNG state or None when the run had fewer ranks)."""
    path = Path(path)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    rng_file = path / f"rng_rank{rank}.pt"
    rng = torch.load(rng_file, map_location="cpu", weights_only=False) if rng_file.is_file() else None
    return state, rng


# ----------------------------------------------------------------------------- one run's checkpoints


def state_dict(s: "TrainState") -> dict:
    """Everything ``state.pt`` holds for run state ``s``."""
    return dict(step=s.step, student=s.student.state_dict(), teacher=s.teacher.state_dict(),
                optimizer=s.optimizer.state_dict(), loader=s.loader.state_dict(), world_size=s.world,
                config=s.cfg.to_dict(), data_version=s.loader.version)


def save_run_checkpoint(s: "TrainState", barrier: Callable[[], None]) -> Path:
    """Collective: the training state at ``s.step`` plus the backbone export (in the
    step folder and at ``<output>/backbone.pth``)."""
    state = state_dict(s) if s.rank == 0 else None
    path = save_training_state(s.output / "checkpoints", s.step, state, s.rank, barrier,
                               extra_files=lambda folder: export_backbone(s.student.backbone, folder / "backbone.pth"))
    if s.rank == 0:
        export_backbone(s.student.backbone, s.output / "backbone.pth")
    return path
