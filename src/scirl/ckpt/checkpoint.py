"""Atomic, verifiable checkpoints, at any world size. `checkpoints/step_<N>/` holds
  dcp/               model, optimizer (and an EMA teacher) as a torch.distributed.checkpoint folder: every rank
                     writes its shards, any world size reads them back (ckpt/sharded.py); a LoRA run's holds
                     the adapter (+ modules_to_save) and its optimizer state only, not the frozen base
  hf_meta/           config.json, generation_config.json, tokenizer files: no weights
  model/             a loadable HF folder gathered on rank 0 (weights, config, tokenizer), when trainer.save_hf;
                     a LoRA run's peft adapter folder (always: it is small)
  trainer_state.pt   scheduler, sampler, KL controller, skipped updates, config, step, the RNG of every rank
  manifest.json      every file's size, the DCP shards included
Older checkpoints (no dcp/: weights in model/, optimizer and EMA teacher inside trainer_state.pt) still load.

A checkpoint is written by all ranks into `.tmp_step_<N>_<pid of rank 0>/`; rank 0 writes the manifest and renames
it into place after every rank has finished, so nothing half-written ever carries a step's name. A failed write
on any rank (full disk, file-size limit) removes the temp folder and raises, on every rank, one line that names the
step and the checkpoint still intact. `latest_checkpoint` skips (with a warning naming the file) a checkpoint whose
files were truncated or damaged after the fact and falls back to the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from torch.distributed.checkpoint.api import CheckpointException

from scirl.ckpt.rng import rng_state, set_rng_state  # noqa: F401 - set_rng_state: the old import path
from scirl.ckpt.sharded import METADATA, full_model_state, save_sharded
from scirl.errors import ScirlError
from scirl.faults import fault_point

STATE_FILE = "trainer_state.pt"
MODEL_DIR = "model"
HF_META_DIR = "hf_meta"
DCP_DIR = "dcp"
MANIFEST = "manifest.json"
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError, CheckpointException)


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


def has_hf_weights(ckpt: Path) -> bool:
    return (model_dir(ckpt) / "config.json").is_file()


def hf_meta_dir(ckpt: Path) -> Path:
    """Config, generation config and tokenizer of a checkpoint: `hf_meta/`, or the HF folder of an older one."""
    ckpt = Path(ckpt)
    return ckpt / HF_META_DIR if (ckpt / HF_META_DIR / "config.json").is_file() else model_dir(ckpt)


def dcp_dir(ckpt: Path) -> Path | None:
    """The checkpoint's DCP folder (model, optimizer, EMA teacher), or None for an older checkpoint."""
    path = Path(ckpt) / DCP_DIR
    return path if path.is_dir() else None


# -- the process group, when there is one (world size 1 needs none). Why not scirl.dist: a save without an optimizer
# -- is this process's alone even inside a group, and the tests' fixtures set up torch.distributed themselves.
class _Group:
    def __init__(self, on: bool):
        self.on = on and dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.size = dist.get_world_size() if self.on else 1

    def gather(self, obj) -> list:
        if not self.on:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        if not self.on:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _reason(err: BaseException) -> str:
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1][:200]
    if isinstance(err, RuntimeError) and not isinstance(err, CheckpointException):
        # torch's zip writer: "unexpected pos ..." when a write came up short
        reason = f"a write came up short ({reason}): disk full or file-size limit?"
    return reason


def _sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


class _Stage:
    """Run one part of a save on this rank, catch a failed write, and let every rank learn whether any rank
    failed (an all-gather: it is also the barrier between parts); the first failure is raised on all ranks."""

    def __init__(self, group: _Group, step: int, tmp: Path, previous: Path | None):
        self.group, self.step, self.tmp, self.previous = group, step, tmp, previous

    def run(self, fn: Callable[[], object] | None):
        error = None
        try:
            result = fn() if fn is not None else None
        except WRITE_ERRORS as e:
            error, result = _reason(e), None
        failed = [r for r in self.group.gather(error) if r]
        if failed:
            raise self.failure(failed[0])
        return result

    def failure(self, reason: str) -> ScirlError:
        if self.group.rank == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
        intact = f"the previous checkpoint {self.previous} is intact" if self.previous else "no earlier checkpoint exists"
        return ScirlError(f"checkpoint step_{self.step} was not written: {reason}; {intact}")


def _write_hf(tmp: Path, model, tokenizer, save_hf: bool, full: dict | None) -> None:
    if save_hf:
        if full is None:
            model.save_pretrained(tmp / MODEL_DIR, safe_serialization=True)
        else:
            model.save_pretrained(tmp / MODEL_DIR, state_dict=full, safe_serialization=True)
        tokenizer.save_pretrained(tmp / MODEL_DIR)
    meta = tmp / HF_META_DIR
    model.config.save_pretrained(meta)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(meta)
    tokenizer.save_pretrained(meta)


def _finish(tmp: Path, final: Path, step: int) -> Path:
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    with open(tmp / MANIFEST, "w") as f:
        json.dump({"step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # only when the caller decided this step is rewritten (the run folder rules move it first)
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict,
                    optimizer: torch.optim.Optimizer | None = None, modules: dict | None = None,
                    save_hf: bool = True, hf_model: torch.nn.Module | None = None) -> Path:
    """Write checkpoints/step_<step>/ atomically (every rank calls it); on failure nothing under that name
    changes and every rank raises the same one-line error. `modules`: other modules saved in dcp/ by name (an
    EMA teacher); `trainer_state`: the small picklable state (rank 0's is written); `hf_model`: an unsharded
    module holding the same weights as a sharded `model` (a rollout copy), written as model/ without a gather.
    Without an optimizer the save is the calling process's alone, also inside a process group (weights only, or
    a caller that gathered the full state itself)."""
    root = checkpoint_root(run_dir)
    final = root / f"step_{step}"
    group = _Group(optimizer is not None)
    main = group.rank == 0
    previous, made = None, None
    if main:
        previous = latest_checkpoint(run_dir, warn=None)
        tmp = root / f".tmp_step_{step}_{os.getpid()}"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            made = str(tmp)
        except OSError as e:
            made = f"error:{_reason(e)}"
    made = group.broadcast(made)
    tmp = Path(made)
    stage = _Stage(group, step, tmp, group.broadcast(str(previous) if previous else None))
    if made.startswith("error:"):  # every rank got the same answer: no need to agree
        raise stage.failure(made[len("error:"):])
    adapter = hasattr(model, "peft_config")  # a peft PeftModel (model.lora): model/ is its adapter folder
    save_hf = save_hf or adapter
    full, whole = None, model if hf_model is None else hf_model  # whole: the module model/ is written from
    if hf_model is None and save_hf and _sharded(model):
        full = full_model_state(model, trainable_only=adapter)  # a collective: rank 0 gets the tensors
    stage.run((lambda: _write_hf(tmp, whole, tokenizer, save_hf, full)) if main else None)
    del full
    stage.run(lambda: save_sharded(tmp / DCP_DIR, {"model": model, **(modules or {})}, optimizer, group.on))
    fault_point("ckpt:mid_save")
    rngs = group.gather(rng_state())
    state = {**trainer_state, "step": step, "rng": rngs, "world_size": group.size}
    stage.run((lambda: torch.save(state, tmp / STATE_FILE)) if main else None)
    done = stage.run((lambda: _finish(tmp, final, step)) if main else None)
    return Path(group.broadcast(str(done) if main else None))


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
    folder = dcp_dir(ckpt)
    if folder is not None and not (folder / METADATA).is_file():
        return f"{folder / METADATA} is missing"
    if folder is None and not has_hf_weights(ckpt):
        return f"{ckpt} holds no weights (neither {DCP_DIR}/ nor {MODEL_DIR}/)"
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
