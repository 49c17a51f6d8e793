"""Loading the model of a scirl checkpoint folder (`checkpoints/step_N/`), whichever way it was saved: a loadable HF
folder (`step_N/model/`, or the HF files at `step_N/` itself in older checkpoints), or only a
`torch.distributed.checkpoint` folder `step_N/dcp/` (key "model": the model's state dict under its HF names) with
the config and tokenizer in `step_N/hf_meta/`. DCP loads without a process group."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from scirl.errors import ScirlError
from scirl.export.hf_folder import empty_model, tied_groups

DCP_DIR, HF_META_DIR, MODEL_DIR = "dcp", "hf_meta", "model"
DCP_MODEL_KEY = "model"


@dataclass(frozen=True)
class CheckpointSource:
    """Where a checkpoint's weights are (`kind` "hf" or "dcp") and the folder with its config and tokenizer."""

    kind: str
    weights: Path
    meta: Path


def _is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def find_source(ckpt: Path) -> CheckpointSource:
    """The HF folder when the checkpoint has one (fast, exact), else its DCP folder; one line when neither."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise ScirlError(f"{ckpt}: checkpoint folder not found")
    for folder in (ckpt / MODEL_DIR, ckpt):
        if _is_hf_folder(folder):
            return CheckpointSource("hf", folder, folder)
    dcp_dir = ckpt / DCP_DIR
    if (dcp_dir / ".metadata").is_file():
        meta = ckpt / HF_META_DIR
        if not (meta / "config.json").is_file():
            raise ScirlError(f"{meta / 'config.json'} is missing: the DCP checkpoint has no model config")
        return CheckpointSource("dcp", dcp_dir, meta)
    raise ScirlError(f"{ckpt}: not a scirl checkpoint (no {MODEL_DIR}/ HF folder with config.json and safetensors, "
                     f"no {DCP_DIR}/.metadata)")


def load_hf(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        raise ScirlError(f"{folder}: cannot load the model ({str(e).strip().splitlines()[0][:240]})") from None


def load_dcp(dcp_dir: Path, meta_dir: Path):
    """The model described by `meta_dir/config.json`, filled in place from the DCP folder's "model" entries. A
    tied weight may be stored under one of its names only."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(dcp_dir))
    try:
        stored = reader.read_metadata().state_dict_metadata
    except Exception as e:  # noqa: BLE001 - a damaged .metadata can raise anything unpickling does
        raise ScirlError(f"{dcp_dir / '.metadata'}: cannot be read ({type(e).__name__}: {e})"[:300]) from None
    prefix = f"{DCP_MODEL_KEY}."
    stored_model = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
    if not stored_model:
        raise ScirlError(f"{dcp_dir}: holds no '{DCP_MODEL_KEY}' state dict")
    dtypes = {m.properties.dtype for m in stored_model.values() if isinstance(m, TensorStorageMetadata)}
    model = empty_model(meta_dir, dtype=dtypes.pop() if len(dtypes) == 1 else torch.float32)
    wanted = model.state_dict()
    unknown = sorted(set(stored_model) - set(wanted))
    if unknown:
        raise ScirlError(f"{dcp_dir}: {DCP_MODEL_KEY}.{unknown[0]} is not a weight of the model in "
                         f"{meta_dir / 'config.json'}")
    tied = {n: g for g in tied_groups(model) for n in g}
    missing = sorted(k for k in wanted if k not in stored_model and not any(a in stored_model for a in tied.get(k, ())))
    if missing:
        raise ScirlError(f"{dcp_dir}: {DCP_MODEL_KEY}.{missing[0]} is missing ({len(missing)} weights missing)")
    for k in (k for k in wanted if k in stored_model):  # in the model's order: the first layer's first misfit
        meta = stored_model[k]
        if isinstance(meta, TensorStorageMetadata) and tuple(meta.size) != tuple(wanted[k].shape):
            raise ScirlError(f"{dcp_dir}: {DCP_MODEL_KEY}.{k} has shape {tuple(meta.size)}, the model in "
                             f"{meta_dir / 'config.json'} needs {tuple(wanted[k].shape)}")
    with warnings.catch_warnings():  # "no process group: assuming a single process" is what is meant here
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.load({DCP_MODEL_KEY: {k: wanted[k] for k in stored_model}}, storage_reader=reader)
    return model


def load_checkpoint_model(ckpt: Path) -> tuple[torch.nn.Module, CheckpointSource]:
    """The checkpoint's model in the precision it was saved in (HF: fp32 load, exact for fp32 weights)."""
    source = find_source(ckpt)
    if source.kind == "hf":
        return load_hf(source.weights, torch.float32), source
    return load_dcp(source.weights, source.meta), source
