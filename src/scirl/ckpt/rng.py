"""Random-number state in checkpoints: each rank's generators (torch, numpy, python, cuda) captured as one entry of
a list indexed by rank, and restored on resume — entry r on rank r when the world size is unchanged (so a resumed
run draws exactly what the uninterrupted one would), a deterministic per-rank seed when it changed."""

from __future__ import annotations

import random

import numpy as np
import torch


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


def rank_seed(seed: int, step: int, rank: int) -> int:
    """The seed rank `rank` takes when a run resumes at `step` on another world size: distinct per rank and step,
    the same for every rerun of that resume."""
    return (seed * 1_000_003 + step * 10_007 + rank) % (2**32)


def restore_rng(saved: dict | list, rank: int, world_size: int, seed: int, step: int) -> str | None:
    """Restore this rank's generators from a checkpoint's `rng` (a list indexed by rank; older checkpoints hold
    one dict). Returns a one-line note when the world size changed and the ranks were seeded afresh, else None."""
    states = saved if isinstance(saved, list) else [saved]
    if len(states) == world_size:
        set_rng_state(states[rank])
        return None
    s = rank_seed(seed, step, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return (f"note: the checkpoint was written by {len(states)} process(es), this run has {world_size}: random "
            f"generators seeded per rank from trainer.seed and step {step} instead of restored")
