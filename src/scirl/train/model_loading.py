"""Loading a policy: resolve `builtin:<name>` / local folder / hub id, then the real `from_pretrained` calls."""

from __future__ import annotations

from pathlib import Path

import torch

from scirl.errors import ScirlError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(path: str) -> str:
    """`builtin:tiny-qwen3` -> the bundled folder; an existing folder -> itself; otherwise a hub id (or an error)."""
    if path.startswith("builtin:"):
        folder = ASSETS / path.split(":", 1)[1]
        if not (folder / "config.json").is_file():
            known = sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").is_file())
            raise ScirlError(f"model.path: no bundled model '{path}' (bundled: {', '.join(known) or 'none'})")
        return str(folder)
    local = Path(path).expanduser()
    if local.exists():
        if (local / "model" / "config.json").is_file() and not (local / "config.json").is_file():
            return str(local / "model")  # a scirl checkpoint folder: its loadable HF folder
        if not (local / "config.json").is_file():
            raise ScirlError(f"model.path: {local} has no config.json (not a transformers model folder)")
        return str(local)
    looks_like_hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ScirlError(f"model.path: model path not found: {path}")
    return path


def load_tokenizer(path: str, key: str = "model.path", hub: dict | None = None):
    """The tokenizer of a model folder, hub id or builtin:<name> (its eos token pads when it has no pad token); a
    one-line error naming `key` when it cannot be loaded. `hub`: the from_pretrained kwargs for a hub id when the
    caller has them already (hub_kwargs probes the hub)."""
    from transformers import AutoTokenizer

    from scirl.hub import hub_kwargs

    resolved = resolve_model_path(path)
    if hub is None:  # fail fast when the hub is unreachable
        hub = {} if Path(resolved).exists() else hub_kwargs(resolved, key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved, **hub)
    except OSError as e:  # missing files, a repo that does not exist...
        raise ScirlError(f"{key}: cannot load '{path}': {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(path: str, dtype: str = "float32", device: str = "cpu", attn: str = "sdpa",
                             key: str = "model.path", quantization=None):
    """(model on `device`, tokenizer). `quantization`: a model.quantization with load_in_4bit, the base loaded
    4-bit by bitsandbytes (quantised from the same weights the same way every time: a resume re-quantises it
    bit for bit) and prepared for QLoRA (scirl.train.quantize)."""
    from transformers import AutoModelForCausalLM

    from scirl.hub import hub_kwargs

    resolved = resolve_model_path(path)
    if dtype not in DTYPES:
        raise ScirlError(f"model.dtype='{dtype}' must be one of {', '.join(DTYPES)}")
    hub = {} if Path(resolved).exists() else hub_kwargs(resolved, key)  # fail fast when the hub is unreachable
    tokenizer = load_tokenizer(path, key, hub)
    try:
        four_bit = {}
        if quantization is not None and quantization.load_in_4bit:
            from scirl.train.quantize import bnb_config

            four_bit = {"quantization_config": bnb_config(quantization), "device_map": {"": device}}
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=DTYPES[dtype], attn_implementation=attn,
                                                     **four_bit, **hub)
    except OSError as e:  # missing files, a repo that does not exist...
        raise ScirlError(f"{key}: cannot load '{path}': {str(e).splitlines()[0]}") from None
    if four_bit:  # placed on `device` by device_map; the 4-bit layers cannot be moved after loading
        from scirl.train.quantize import prepare_4bit_base

        return prepare_4bit_base(model), tokenizer
    return model.to(device), tokenizer


def pick_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ScirlError("trainer.device=cuda but no CUDA device is available")
    return choice
