"""Exporting a LoRA run's checkpoint (model.lora.rank > 0): its model/ folder holds a peft adapter
(adapter_config.json + adapter_model.safetensors), the base is the run's model.path (from trainer_state.pt's
config; the adapter's base_model_name_or_path otherwise). Loaded in fp32 as base + adapter, then either merged
(`merge_and_unload`: W + alpha / r * B @ A) into a plain model, or kept as the PeftModel whose `save_pretrained`
writes the adapter folder (--adapter-only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scirl.errors import ScirlError

ADAPTER_CONFIG = "adapter_config.json"
MODEL_DIR, STATE_FILE = "model", "trainer_state.pt"


def adapter_dir(ckpt: Path) -> Path | None:
    """The checkpoint's adapter folder (step_N/model/ with adapter_config.json), or None."""
    folder = Path(ckpt) / MODEL_DIR
    return folder if (folder / ADAPTER_CONFIG).is_file() else None


def base_model_path(ckpt: Path, adapter: Path) -> str:
    """The run's model.path (as configured: `builtin:...`, a folder or a hub id)."""
    state = Path(ckpt) / STATE_FILE
    if state.is_file():
        try:
            path = torch.load(state, weights_only=False).get("config", {}).get("model", {}).get("path")
        except Exception:  # noqa: BLE001 - a damaged state file: fall back to the adapter's own record
            path = None
        if path:
            return path
    base = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ScirlError(f"{adapter / ADAPTER_CONFIG}: names no base model and {state} has no model.path")
    return base


def load_base_and_adapter(ckpt: Path):
    """(PeftModel of base + adapter in fp32, eval mode, the base's model.path)."""
    from peft import PeftModel

    from scirl.train.model_loading import load_model_and_tokenizer

    adapter = adapter_dir(ckpt)
    base_path = base_model_path(ckpt, adapter)
    base, _ = load_model_and_tokenizer(base_path, "float32", key=f"{adapter / ADAPTER_CONFIG} base model")
    try:
        model = PeftModel.from_pretrained(base, str(adapter))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ScirlError(f"{adapter}: cannot load the adapter ({str(e).strip().splitlines()[0][:240]})") from None
    if not base_path.startswith("builtin:") and not Path(base_path).exists():  # a hub id: keep it for users
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = base_path
    return model.eval(), base_path


def merged_model(peft_model) -> torch.nn.Module:
    """The plain transformers model with every adapter folded into its base weights."""
    return peft_model.merge_and_unload()
