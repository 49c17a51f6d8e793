"""Model and optimizer state as a `torch.distributed.checkpoint` (DCP) folder: every rank writes its own shards,
and any world size reads them back (DCP reshards), with or without a process group (world size 1, plain module).

The folder holds `{"model": ..., "optimizer": ..., <other module name>: ...}` with the keys of
`get_state_dict(model, optimizer)` (HF parameter names: `model.model.layers.0.self_attn.q_proj.weight`, optimizer
moments under `optimizer.state.<parameter name>.exp_avg`), so a checkpoint written by 2 FSDP2 ranks loads into one
plain module and the other way round. Before loading, the folder's metadata is checked against the live state dict:
a checkpoint of another model (a key or a shape that differs) or of a layout that cannot be resharded (FSDP1 flat
parameters, wrapper prefixes) is one line naming the file and the first key that does not fit.

A trained model with frozen parameters (a LoRA run: the base under the adapter) is saved by its trainable
parameters alone (the adapter, `modules_to_save`) and their optimizer state: the frozen base is rebuilt from
`model.path` on resume, so it is neither written nor read (`trainable_state`).
"""

from __future__ import annotations

import contextlib
import warnings

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._nested_dict import flatten_state_dict  # the flattening DCP itself applies
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict, set_state_dict)
from torch.distributed.tensor import DTensor

from scirl.errors import ScirlError

MODEL_KEY = "model"
OPTIM_KEY = "optimizer"
METADATA = ".metadata"



@contextlib.contextmanager
def _single_process_is_meant():
    """DCP warns "torch.distributed is disabled ... assuming ... a single process" at every save and load of a
    one-process run, even with no_dist=True; that is exactly what is meant, so keep it off the console."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled, unavailable or uninitialized.*")
        yield

def _grouped() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def frozen_names(module: torch.nn.Module) -> set[str]:
    """The names of the module's parameters that do not require grad, tied aliases included (`lm_head.weight`
    tied to a frozen embedding)."""
    return {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def trainable_state(module: torch.nn.Module, state: dict) -> dict:
    """`state` (a model state dict) without the module's frozen parameters, nor the entries that belong to one (a
    4-bit weight's quantisation state: `<weight>.absmax`, `<weight>.quant_map`, ...). torch's own
    `ignore_frozen_params` keeps a tied alias of a frozen parameter, hence the explicit filter."""
    frozen = frozen_names(module)

    def of_frozen(key: str) -> bool:
        while True:
            if key in frozen:
                return True
            if "." not in key:
                return False
            key = key.rsplit(".", 1)[0]
    return {k: v for k, v in state.items() if not of_frozen(k)}


def _live_state(modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None) -> dict:
    """The state dict DCP writes or fills in place: `get_state_dict` for the trained model and its optimizer (it
    initialises an empty optimizer's state with one zero-learning-rate step, so loading has tensors to fill),
    the trained model's trainable parameters only (`trainable_state`); `get_model_state_dict` for every other
    module (an EMA teacher)."""
    state = {}
    for name, module in modules.items():
        if name == MODEL_KEY and optimizer is not None:
            model_state, optim_state = get_state_dict(module, optimizer)
            state[MODEL_KEY], state[OPTIM_KEY] = trainable_state(module, model_state), optim_state
        else:
            state[name] = get_model_state_dict(module)
    return state


def save_sharded(folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None,
                 collective: bool = True) -> None:
    """Write `modules` (name -> module; "model" is the trained one) and `optimizer` into the DCP folder `folder`.
    Every rank calls it; without a process group (or with collective=False: this process alone, unsharded
    modules) it writes one shard file."""
    with _single_process_is_meant():
        dcp.save(_live_state(modules, optimizer), checkpoint_id=str(folder), no_dist=not (collective and _grouped()))


def saved_keys(folder: Path) -> dict:
    """Flattened key -> global shape (a torch.Size) or None (a non-tensor value) of a DCP folder."""
    path = Path(folder) / METADATA
    if not path.is_file():
        raise ScirlError(f"{path} is missing (not a torch.distributed.checkpoint folder)")
    try:
        meta = dcp.FileSystemReader(str(folder)).read_metadata()
    except Exception as e:  # noqa: BLE001 - a damaged pickle raises several types
        raise ScirlError(f"{path} is unreadable ({type(e).__name__})") from None
    return {k: v.size if isinstance(v, TensorStorageMetadata) else None
            for k, v in meta.state_dict_metadata.items() if isinstance(v, (TensorStorageMetadata, BytesStorageMetadata))}


def _shape(value) -> torch.Size | None:
    return value.shape if isinstance(value, torch.Tensor) else None  # a DTensor's shape is its global shape


def layout_problem(folder: Path, state: dict, frozen: set[str] = frozenset()) -> str | None:
    """Why the DCP folder cannot be loaded into `state` (the first key missing from the checkpoint, one the model
    does not have, or a shape that differs), else None. `frozen`: flattened keys the model has but does not load
    (its frozen parameters: a checkpoint that holds them too still fits)."""
    saved = saved_keys(folder)
    wanted, _ = flatten_state_dict(state)
    meta = Path(folder) / METADATA
    for key, value in wanted.items():
        if key not in saved:
            prefix = key.split(".", 1)[0] + "."
            theirs = sorted(k for k in saved.keys() - wanted.keys() if k.startswith(prefix))
            theirs = [k for k in theirs if k.endswith(key[len(prefix):])] or theirs  # the same name, wrapped
            extra = f" (it holds {theirs[0]} instead)" if theirs else ""
            return f"{meta} has no {key}{extra}"
        want, have = _shape(value), saved[key]
        if want is not None and have is not None and tuple(want) != tuple(have):
            return f"{meta}: {key} has shape {list(have)}, this model's is {list(want)}"
    tensors = {k for k, v in wanted.items() if isinstance(v, torch.Tensor)}
    for key in sorted(k for k in saved.keys() - wanted.keys() if saved[k] is not None):
        if key.split(".", 1)[0] in state and key not in tensors and key not in frozen:
            return f"{meta} holds {key}, which this model does not have"
    return None


def load_sharded(folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer | None,
                 key: str = "trainer.resume") -> None:
    """Load a DCP folder written by `save_sharded` at any world size into `modules` and `optimizer` as they are now
    (sharded or not). Every rank calls it. A checkpoint that does not fit is a ScirlError naming the file and key
    (raised on every rank alike: they all read the same metadata)."""
    state = _live_state(modules, optimizer)
    frozen = {f"{MODEL_KEY}.{n}" for n in frozen_names(modules[MODEL_KEY])} if optimizer is not None else set()
    problem = layout_problem(folder, state, frozen)
    if problem:
        raise ScirlError(f"{key}: checkpoint does not fit this model: {problem}")
    with _single_process_is_meant():
        dcp.load(state, checkpoint_id=str(folder), no_dist=not _grouped())
    for name, module in modules.items():
        if name == MODEL_KEY and optimizer is not None:  # strict unless frozen parameters were left out
            set_state_dict(module, optimizer, model_state_dict=state[MODEL_KEY], optim_state_dict=state[OPTIM_KEY],
                           options=StateDictOptions(strict=not frozen))
        else:
            set_model_state_dict(module, state[name])


def full_model_state(model: torch.nn.Module, trainable_only: bool = False) -> dict:
    """The whole model's state dict (or its trainable parameters only: a LoRA adapter, no base), gathered on CPU
    on rank 0 (other ranks get {}); every rank calls it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    state = get_model_state_dict(model, options=options)
    return trainable_state(model, state) if trainable_only else state


def load_plain_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """Load an `optimizer.state_dict()` of the old checkpoint layout (parameters numbered in the order of
    `[p for p in model.parameters() if p.requires_grad]`) into `optimizer`, sharded or not: the numbers are
    mapped to parameter names and the full state is scattered by `set_optimizer_state_dict`."""
    if not _is_sharded(optimizer):
        optimizer.load_state_dict(saved)  # the exact old path: one process, the same module
        return
    rename = dict(enumerate(n for n, p in model.named_parameters() if p.requires_grad))
    full = {"state": {rename[int(i)]: s for i, s in saved["state"].items()},
            "param_groups": [{**g, "params": [rename[int(i)] for i in g["params"]]} for g in saved["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


def _is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    return any(isinstance(p, DTensor) for g in optimizer.param_groups for p in g["params"])


def load_full_module_state(module: torch.nn.Module, saved: dict) -> None:
    """Load a full (unsharded) state dict — an EMA teacher of the old checkpoint layout — into `module`, sharded
    or not."""
    if any(isinstance(p, DTensor) for p in module.parameters()):
        set_model_state_dict(module, saved, options=StateDictOptions(full_state_dict=True))
    else:
        module.load_state_dict(saved)


def read_saved(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """One saved entry ("model", "ema_teacher") of a DCP folder as a plain dict of full tensors, read without a
    model or a process group (for tests and tools)."""
    meta = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    prefix = f"{name}."
    out = {k[len(prefix):]: torch.empty(tuple(v.size), dtype=v.properties.dtype)
           for k, v in meta.items() if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)}
    if not out:
        raise ScirlError(f"{Path(folder) / METADATA} holds no '{name}' entry")
    with _single_process_is_meant():
        dcp.load({name: out}, checkpoint_id=str(folder), no_dist=True)
    return out
