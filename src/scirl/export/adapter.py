"""Exporting a LoRA run's checkpoint (model.lora.rank > 0): its model/ folder holds a peft adapter
(adapter_config.json + adapter_model.safetensors), the base is the run's model.path (from trainer_state.pt's
config; the adapter's base_model_name_or_path otherwise). Loaded in fp32 as base + adapter, then either merged
(`merge_and_unload`: W + alpha / r * B @ A) into a plain model, or kept as the PeftModel whose `save_pretrained`
writes the adapter folder (--adapter-only). A QLoRA run's base (model.quantization.load_in_4bit) is quantised from
model.path exactly as in training, then dequantised to fp32 before the adapter goes on, so the merge adds the
adapter to the weights the run trained against and writes no quantization_config."""

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


def _run_model_config(ckpt: Path) -> dict:
    """The run's resolved `model` section from trainer_state.pt ({} when unreadable)."""
    state = Path(ckpt) / STATE_FILE
    if not state.is_file():
        return {}
    try:
        return torch.load(state, weights_only=False).get("config", {}).get("model", {}) or {}
    except Exception:  # noqa: BLE001 - a damaged state file: fall back to the adapter's own record
        return {}


def run_quantization(ckpt: Path):
    """The run's model.quantization (a QuantizationConfig) when it trained on a 4-bit base, else None."""
    from scirl.config import QuantizationConfig

    q = _run_model_config(ckpt).get("quantization") or {}
    return QuantizationConfig(**q) if q.get("load_in_4bit") else None


def base_model_path(ckpt: Path, adapter: Path) -> str:
    """The run's model.path (as configured: `builtin:...`, a folder or a hub id)."""
    state = Path(ckpt) / STATE_FILE
    path = _run_model_config(ckpt).get("path")
    if path:
        return path
    base = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ScirlError(f"{adapter / ADAPTER_CONFIG}: names no base model and {state} has no model.path")
    return base


def load_base_and_adapter(ckpt: Path, dequantize: bool = True):
    """(PeftModel of base + adapter in fp32, eval mode, the base's model.path). A 4-bit base is quantised as in
    training (model.dtype, model.quantization) and, with `dequantize`, turned into a plain fp32 model first;
    `dequantize=False` gives the 4-bit base + adapter the run trained (on CPU)."""
    from peft import PeftModel

    from scirl.train.model_loading import load_model_and_tokenizer
    from scirl.train.quantize import dequantized

    adapter = adapter_dir(ckpt)
    base_path = base_model_path(ckpt, adapter)
    key = f"{adapter / ADAPTER_CONFIG} base model"
    quant = run_quantization(ckpt)
    if quant is None:
        base, _ = load_model_and_tokenizer(base_path, "float32", key=key)
    else:
        dtype = _run_model_config(ckpt).get("dtype", "float32")
        base, _ = load_model_and_tokenizer(base_path, dtype, key=key, quantization=quant)
        if dequantize:
            base = dequantized(base)
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
