"""Atomic, verifiable checkpoints: `checkpoints/step_<N>/` holds `model/` (a loadable HF folder: weights, config,
tokenizer, nothing else, so it can be uploaded as is), `trainer_state.pt` beside it (optimizer, scheduler, RNG, data
order, the resolved config) and `manifest.json` (every file's size).

A checkpoint is written into `.tmp_step_<N>_<pid>/` and renamed into place, so nothing half-written ever carries a
step's name; a failed write (full disk, file-size limit) removes the temp folder and raises one line that names
the step and the checkpoint still intact. `find_resume_checkpoint` skips (with a warning naming the file) a
checkpoint whose files were truncated or damaged after the fact and falls back to the previous one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError

from scirl.errors import ScirlError
from scirl.faults import fault_point

STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
MANIFEST = "manifest.json"


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


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_of(path: Path) -> int | None:
    """N for a folder named step_N, else None."""
    name = Path(path).name
    head, _, tail = name.partition("_")
    return int(tail) if head == "step" and tail.isdigit() else None


def model_dir(ckpt: Path) -> Path:
    """The loadable HF folder of a checkpoint (`step_N/model`; older checkpoints kept it at `step_N` itself)."""
    ckpt = Path(ckpt)
    return ckpt / MODEL_DIR if (ckpt / MODEL_DIR / "config.json").is_file() else ckpt


def _write_failed(step: int, err: BaseException, previous: Path | None) -> ScirlError:
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1][:200]
    if isinstance(err, RuntimeError):  # torch's zip writer: "unexpected pos ..." when a write came up short
        reason = f"a write came up short ({reason}): disk full or file-size limit?"
    intact = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    return ScirlError(f"checkpoint step_{step} was not written: {reason}; {intact}")


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict) -> Path:
    """Write checkpoints/step_<step>/ atomically; on failure nothing under that name changes (one-line error)."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}_{os.getpid()}"
    previous = latest_checkpoint(run_dir, warn=None)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp / MODEL_DIR, safe_serialization=True)
        tokenizer.save_pretrained(tmp / MODEL_DIR)
        fault_point("ckpt:mid_save")
        torch.save({**trainer_state, "step": step, "rng": rng_state()}, tmp / STATE_FILE)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        with open(tmp / MANIFEST, "w") as f:
            json.dump({"step": step, "files": files}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError, SafetensorError) as e:  # full disk, file-size limit, ...
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(step, e, previous) from None
    if final.exists():  # only when the caller decided this step is rewritten (the run folder rules move it first)
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Every step_N folder of the run, oldest first (damaged ones included)."""
    root = checkpoint_root(run_dir)
    found = [(step_of(p), p) for p in root.glob("step_*") if p.is_dir()] if root.is_dir() else []
    return [p for s, p in sorted((s, p) for s, p in found if s is not None)]


def _safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unusable (header unreadable, data shorter than the header says), else None."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return "header runs past the end of the file"
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        return f"header unreadable ({type(e).__name__})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return None if 8 + n + end <= size else f"truncated ({size} bytes, {8 + n + end} expected)"


def checkpoint_problem(ckpt: Path) -> str | None:
    """A one-line description of what is wrong with a checkpoint folder (naming the file), or None when it looks
    complete: every manifest file present with its size, safetensors complete, trainer state a readable archive."""
    ckpt = Path(ckpt)
    state = ckpt / STATE_FILE
    if not state.is_file():
        return f"{state} is missing"
    manifest = ckpt / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            return f"{manifest} is unreadable"
        for name, size in files.items():
            p = ckpt / name
            if not p.is_file():
                return f"{p} is missing"
            if p.stat().st_size != size:
                return f"{p} has {p.stat().st_size} bytes, {size} were written"
    for st in sorted(model_dir(ckpt).glob("*.safetensors")):
        problem = _safetensors_problem(st)
        if problem:
            return f"{st} is {problem}" if problem.startswith("truncated") else f"{st}: {problem}"
    try:
        with zipfile.ZipFile(state) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"{state} is damaged ({e})"
    return None


def latest_checkpoint(run_dir: Path, warn: Callable[[str], None] | None = print) -> Path | None:
    """The newest usable checkpoint; damaged newer ones are skipped, each with a warning naming the file."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if warn is not None:
            warn(f"warning: skipping checkpoint {ckpt.name}: {problem}")
    return None


def require_checkpoint(path: Path, key: str = "trainer.resume") -> Path:
    """A checkpoint folder named by the user: usable, or a one-line error saying what is wrong with it."""
    path = Path(path)
    if not path.is_dir():
        raise ScirlError(f"{key}: checkpoint folder {path} not found")
    if not (path / STATE_FILE).is_file():
        raise ScirlError(f"{key}: {path} is not a scirl checkpoint folder (no {STATE_FILE})")
    problem = checkpoint_problem(path)
    if problem:
        raise ScirlError(f"{key}: checkpoint {path} is damaged: {problem}")
    return path


def load_trainer_state(ckpt: Path) -> dict:
    path = Path(ckpt) / STATE_FILE
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a damaged archive
        raise ScirlError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def prune_checkpoints(run_dir: Path, keep_last: int, keep: set[Path] = frozenset()) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (never the newest one, nor any in `keep`); 0 keeps all."""
    if keep_last < 1:
        return []
    ckpts = list_checkpoints(run_dir)
    doomed = [p for p in ckpts[:-keep_last] if p not in keep and p != ckpts[-1]]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def clean_temp_folders(run_dir: Path) -> list[Path]:
    """Remove `.tmp_step_*` folders left by saves that were killed (call with the run folder's lock held)."""
    root = checkpoint_root(run_dir)
    leftovers = sorted(root.glob(".tmp_step_*")) if root.is_dir() else []
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    return leftovers
