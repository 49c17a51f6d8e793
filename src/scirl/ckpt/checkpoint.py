"""Atomic checkpoints: a loadable HF folder plus trainer state (optimizer, scheduler, RNG, data order),
written to a temp folder and renamed into place, and found again by `trainer.resume=auto`."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from scirl.errors import ScirlError

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict) -> Path:
    """Write checkpoints/step_<step>/ atomically: nothing half-written is ever visible under that name."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    steps = [
        (int(p.name.split("_", 1)[1]), p)
        for p in root.glob("step_*")
        if p.name.split("_", 1)[1].isdigit() and (p / STATE_FILE).is_file()
    ] if root.is_dir() else []
    return max(steps)[1] if steps else None


def find_resume_checkpoint(resume: str, run_dir: Path) -> Path | None:
    """`disable` -> None; `auto` -> latest in this run folder (or None); anything else must be a checkpoint folder."""
    if resume == "disable":
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ScirlError(f"trainer.resume: {path} is not a scirl checkpoint folder (no {STATE_FILE})")
    return path


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / STATE_FILE, weights_only=False)
