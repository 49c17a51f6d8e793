"""Loading a checkpoint back into a live run: model, optimizer and other modules (an EMA teacher) from `dcp/` into
the modules as they are now (any world size, sharded or not), or from an older checkpoint (weights in `model/`,
already loaded when the model was built; optimizer and EMA teacher inside trainer_state.pt)."""

from __future__ import annotations

from pathlib import Path

import torch

from scirl.ckpt.checkpoint import dcp_dir, has_hf_weights, model_dir
from scirl.ckpt.sharded import load_full_module_state, load_plain_optimizer_state, load_sharded
from scirl.errors import ScirlError


def init_weights_path(ckpt: Path | None, model_path: str) -> str:
    """Where the policy is built from: the checkpoint's HF folder when it has one, else `model.path` (a DCP
    checkpoint then overwrites every weight; model.* cannot change on resume, so the architecture is the same)."""
    if ckpt is not None and has_hf_weights(ckpt):
        return str(model_dir(ckpt))
    return model_path


def restore_modules(ckpt: Path, state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    modules: dict[str, torch.nn.Module] | None = None, key: str = "trainer.resume") -> None:
    """Load the checkpoint's model weights, optimizer state and `modules` (name -> module, as saved) in place.
    Every rank calls it."""
    modules = modules or {}
    folder = dcp_dir(ckpt)
    if folder is not None:
        load_sharded(folder, {"model": model, **modules}, optimizer, key)
        return
    if "optimizer" not in state:
        raise ScirlError(f"{key}: {Path(ckpt)} has neither dcp/ nor an optimizer state in trainer_state.pt")
    load_plain_optimizer_state(model, optimizer, state["optimizer"])
    for name, module in modules.items():
        if state.get(name) is None:
            raise ScirlError(f"{key}: {Path(ckpt) / 'trainer_state.pt'} has no '{name}' state")
        load_full_module_state(module, state[name])
