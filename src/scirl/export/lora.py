"""Folding PEFT LoRA adapters into their base weights: W = W_base + (lora_alpha / r) * B @ A for every adapted
layer, and the PEFT wrapper names (`base_model.model.` prefix, `.base_layer`) back to the plain model's names."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from scirl.errors import ScirlError

PEFT_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")
_UNSUPPORTED = (".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector")


@dataclass(frozen=True)
class LoraSettings:
    """What `lora_train_meta.json` records: the rank and alpha the adapters were trained with."""

    r: int | None
    alpha: float


def has_lora(keys) -> bool:
    return any(_LORA.match(k) or any(u in k for u in _UNSUPPORTED) for k in keys)


def strip_peft_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`base_model.model.model.layers...` -> `model.layers...` (PEFT's wrapper names), other keys unchanged."""
    return {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in state.items()}


def merge_lora(state: dict[str, torch.Tensor], settings: LoraSettings, source: str) -> dict[str, torch.Tensor]:
    """A plain state dict with every LoRA pair folded into its base weight (computed in fp32, stored in the base
    weight's dtype). `source` names the file in errors (the metadata file for r / alpha problems)."""
    for key in state:
        if any(u in key for u in _UNSUPPORTED):
            raise ScirlError(f"{source}: {key}: only LoRA on linear layers can be merged (not embeddings or DoRA)")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    adapters = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _LORA.match(key)
        if m:
            pairs.setdefault(m["module"], {})[m["ab"]] = value
            adapters.add(m["adapter"])
        else:
            out[key.replace(".base_layer.", ".")] = value
    if len(adapters) > 1:
        raise ScirlError(f"{source}: more than one LoRA adapter ({', '.join(sorted(adapters))}); cannot tell which "
                         "to merge")
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise ScirlError(f"{source}: {module} has lora_{''.join(ab)} without its partner")
        a, b = ab["A"], ab["B"]
        rank = a.shape[0]
        if settings.r is not None and settings.r != rank:
            raise ScirlError(f"{source}: r={settings.r}, but {module}'s lora_A has rank {rank}")
        weight_key = f"{module}.weight"
        if weight_key not in out:
            raise ScirlError(f"{source}: {module} has LoRA weights but no base weight ({module}.base_layer.weight)")
        base = out[weight_key]
        delta = (b.float() @ a.float()) * (settings.alpha / rank)
        if delta.shape != base.shape:
            raise ScirlError(f"{source}: {module}: B @ A has shape {tuple(delta.shape)}, the base weight "
                             f"{tuple(base.shape)}")
        out[weight_key] = (base.float() + delta).to(base.dtype)
    return out
