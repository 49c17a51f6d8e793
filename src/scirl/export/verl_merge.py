"""Reading a verl FSDP actor checkpoint (`global_step_N/actor/`) into one full state dict: `fsdp_config.json`
({"FSDP_version", "world_size"}), one `model_world_size_{W}_rank_{r}.pt` per rank (the rank's `model.state_dict()`:
FSDP2 DTensors, FSDP1 ShardedTensors, or plain tensors at W = 1), `huggingface/` (config and tokenizer) and, for
LoRA runs, `lora_train_meta.json` ({"r", "lora_alpha", "task_type"}). Values stay in the dtype they were saved in."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from scirl.errors import ScirlError
from scirl.export.lora import LoraSettings, has_lora, merge_lora, strip_peft_prefix
from scirl.export.rank_files import global_shape_of, is_sharded, load_rank_file, pieces_of
from scirl.export.shards import assemble
from scirl.progress import progress

FSDP_CONFIG = "fsdp_config.json"
HF_DIR = "huggingface"
LORA_META = "lora_train_meta.json"
_RANK_FILE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")


def rank_file(folder: Path, world_size: int, rank: int) -> Path:
    return Path(folder) / f"model_world_size_{world_size}_rank_{rank}.pt"


@dataclass(frozen=True)
class VerlCheckpoint:
    folder: Path
    world_size: int
    rank_files: tuple[Path, ...]
    hf_dir: Path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ScirlError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ScirlError(f"{path}: must hold a JSON object")
    return data


def inspect_folder(folder: Path) -> VerlCheckpoint:
    """Check the layout: fsdp_config.json with a world size, every rank's file of that world size and no other
    world size, the huggingface/ folder. One line naming the file otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ScirlError(f"{folder}: folder not found")
    config_path = folder / FSDP_CONFIG
    if not config_path.is_file():
        hint = f" (did you mean {folder / 'actor'}?)" if (folder / "actor" / FSDP_CONFIG).is_file() else ""
        raise ScirlError(f"{config_path} is missing: {folder} is not a verl FSDP checkpoint{hint}")
    world_size = _read_json(config_path).get("world_size")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ScirlError(f"{config_path}: 'world_size' must be a positive integer (got {world_size!r})")
    found = {}
    for p in folder.iterdir():
        m = _RANK_FILE.match(p.name)
        if m:
            found[p.name] = (int(m[1]), int(m[2]))
    other = sorted(name for name, (w, _) in found.items() if w != world_size)
    if other:
        raise ScirlError(f"{folder / other[0]}: world size {found[other[0]][0]}, but {FSDP_CONFIG} says "
                         f"{world_size} (mixed world sizes in one folder)")
    for r in range(world_size):
        if not rank_file(folder, world_size, r).is_file():
            raise ScirlError(f"{rank_file(folder, world_size, r)} is missing (world size {world_size} needs ranks "
                             f"0..{world_size - 1})")
    extra = sorted(name for name, (_, r) in found.items() if r >= world_size)
    if extra:
        raise ScirlError(f"{folder / extra[0]}: rank beyond the world size {world_size} in {FSDP_CONFIG}")
    hf_dir = folder / HF_DIR
    if not (hf_dir / "config.json").is_file():
        raise ScirlError(f"{hf_dir / 'config.json'} is missing (verl saves the model config there)")
    return VerlCheckpoint(folder, world_size, tuple(rank_file(folder, world_size, r) for r in range(world_size)),
                          hf_dir)


def merge_rank_files(files: tuple[Path, ...]) -> dict[str, torch.Tensor]:
    """One full state dict from every rank's state dict (file i is rank i). Sharded values are reassembled from
    their placements; plain tensors (W = 1, or buffers FSDP keeps whole on every rank) must be equal on every
    rank and are taken once."""
    states = []
    with progress(len(files), "merge: read", "rank files") as bar:
        for f in files:
            states.append(load_rank_file(f))
            bar.advance()
    keys = list(states[0])
    for f, s in zip(files[1:], states[1:]):
        diff = sorted(set(keys) ^ set(s))
        if diff:
            raise ScirlError(f"{f}: key {diff[0]} is {'missing' if diff[0] in states[0] else 'extra'} compared "
                             f"with {files[0].name}")
    full: dict[str, torch.Tensor] = {}
    with progress(len(keys), "merge: assemble", "tensors") as bar:
        for key in keys:
            values = [s[key] for s in states]
            if all(is_sharded(v) for v in values):
                shape = global_shape_of(values[0])
                pieces = [p for r, v in enumerate(values) for p in pieces_of(v, r, key, files[r])]
                full[key] = assemble(key, shape, pieces, str(files[0].parent))
            elif any(is_sharded(v) for v in values):
                r = next(i for i, v in enumerate(values) if not is_sharded(v))
                raise ScirlError(f"{files[r]}: {key} is a plain tensor here but sharded in another rank's file")
            elif all(isinstance(v, torch.Tensor) for v in values):
                for f, v in zip(files[1:], values[1:]):  # replicated: never concatenate, check they agree
                    if v.shape != values[0].shape or v.dtype != values[0].dtype or not torch.equal(v, values[0]):
                        raise ScirlError(f"{f}: {key} is a plain tensor that differs from {files[0].name}'s; it is "
                                         "neither sharded nor replicated")
                full[key] = values[0]
            else:
                bad = next(v for v in values if not isinstance(v, torch.Tensor))
                raise ScirlError(f"{files[0]}: {key} holds a {type(bad).__name__}, not a tensor")
            bar.advance()
    return full


def lora_settings(folder: Path) -> LoraSettings:
    path = Path(folder) / LORA_META
    if not path.is_file():
        raise ScirlError(f"{path} is missing: the rank files hold LoRA weights, and merging them needs its "
                         "lora_alpha")
    meta = _read_json(path)
    alpha, r = meta.get("lora_alpha"), meta.get("r")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise ScirlError(f"{path}: 'lora_alpha' is missing or not a number (got {alpha!r}); it is needed to merge "
                         "the LoRA weights")
    if r is not None and (not isinstance(r, int) or isinstance(r, bool) or r < 1):
        raise ScirlError(f"{path}: 'r' must be a positive integer (got {r!r})")
    return LoraSettings(r=r, alpha=float(alpha))


def load_verl_state_dict(folder: Path) -> tuple[dict[str, torch.Tensor], VerlCheckpoint]:
    """The full, plain state dict of a verl actor checkpoint (LoRA folded in), and its inspected layout."""
    ckpt = inspect_folder(folder)
    state = strip_peft_prefix(merge_rank_files(ckpt.rank_files))
    if has_lora(state):
        state = merge_lora(state, lora_settings(ckpt.folder), str(ckpt.folder / LORA_META))
    return state, ckpt
