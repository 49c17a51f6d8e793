"""Writing a Hugging Face model folder: safetensors weights (tied ones once), config.json, generation_config.json,
tokenizer files and chat template, written into a temp folder beside the target and renamed into place, so the
output is never seen half-written. Also builds the empty model a config describes and fills it from a full
state dict, with one-line errors for missing, unexpected or mis-shaped keys."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import torch

from scirl.errors import ScirlError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_NOT_COPIED = {"config.json", "manifest.json", "model.safetensors.index.json", "pytorch_model.bin.index.json"}


def check_output(out: Path, force: bool, sources: tuple[Path, ...] = ()) -> None:
    """Refuse (one line) an existing non-empty output folder unless `force`, and an output that would replace
    one of the sources."""
    out = Path(out)
    for src in sources:
        src = Path(src).resolve()
        if out.resolve() == src or out.resolve() in src.parents:
            raise ScirlError(f"-o {out}: the output folder would replace the input {src}; choose another folder")
    if out.exists() and not out.is_dir():
        raise ScirlError(f"-o {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ScirlError(f"-o {out}: exists and is not empty; pass --force to replace it")


def _no_init():
    try:  # transformers >= 5: skip the random init of weights that are overwritten right away
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        return contextlib.nullcontext()
    return no_init_weights()


def empty_model(config_dir: Path, dtype: torch.dtype = torch.float32):
    """The causal LM that `config_dir/config.json` describes, its weights not initialised (filled next)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config_file = Path(config_dir) / "config.json"
    if not config_file.is_file():
        raise ScirlError(f"{config_file} is missing (the model's Hugging Face config)")
    try:
        config = AutoConfig.from_pretrained(config_dir)
        with _no_init():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.tie_weights()  # skipping the init also skips tying (tie_word_embeddings): tie them now
    except (ValueError, KeyError, OSError, TypeError, json.JSONDecodeError) as e:
        first = str(e).strip().splitlines()[0][:240] if str(e).strip() else type(e).__name__
        raise ScirlError(f"{config_file}: transformers cannot build this model ({first})") from None
    return model


def tied_groups(model) -> list[list[str]]:
    """Names that share one parameter (e.g. [model.embed_tokens.weight, lm_head.weight] when tied)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def fill_model(model, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy a full state dict into `model` (every key it needs, nothing it does not know). A tied weight may be
    given under any of its names; given under several, the copies must be equal."""
    expected = set(model.state_dict())
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise ScirlError(f"{source}: {unexpected[0]} is not a weight of this model ({len(unexpected)} unknown keys)")
    aliases = {}
    for group in tied_groups(model):
        present = [n for n in group if n in state]
        for n in present[1:]:
            if not torch.equal(state[n], state[present[0]]):
                raise ScirlError(f"{source}: {n} differs from {present[0]}, but the config ties them")
        for n in group:
            aliases[n] = present
    missing = sorted(k for k in expected - set(state) if not aliases.get(k))
    if missing:
        raise ScirlError(f"{source}: {missing[0]} is missing ({len(missing)} weights missing)")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # size mismatches
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ScirlError(f"{source}: {detail[:300]}") from None


def _copy_side_files(meta_dir: Path, dest: Path) -> None:
    """Tokenizer files, chat template, generation config: everything beside the weights and config.json."""
    for p in sorted(Path(meta_dir).iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name not in _NOT_COPIED and \
                not p.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(p, dest / p.name)
        elif p.is_dir() and p.name == "additional_chat_templates":
            shutil.copytree(p, dest / p.name)


def write_hf_folder(model, meta_dir: Path, out: Path, dtype: torch.dtype, force: bool) -> Path:
    """Save `model` cast to `dtype`, with the side files of `meta_dir`, as the HF folder `out`, atomically:
    everything goes into `.tmp_<name>_<pid>/` beside it and is renamed in; a replaced folder is moved aside first
    and removed last."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp_{out.name}_{os.getpid()}"
    old = out.parent / f".old_{out.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        _copy_side_files(meta_dir, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if any(out.iterdir()) and not force:  # appeared while writing
            shutil.rmtree(tmp, ignore_errors=True)
            raise ScirlError(f"-o {out}: exists and is not empty; pass --force to replace it")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if old.exists():
            os.replace(old, out)  # put the replaced folder back: a failed export changes nothing
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out
