"""The `scirl export` and `scirl merge --from verl` commands: parse the arguments, load, write the HF folder, print
one summary line."""

from __future__ import annotations

import argparse
from pathlib import Path

from scirl.errors import ScirlError
from scirl.progress import progress

DTYPE_NAMES = ("fp32", "bf16", "fp16")  # keys of hf_folder.DTYPES; that module imports torch, `--help` must not

USAGE_EXPORT = """scirl export CKPT_OR_RUN -o DIR [--dtype fp32|bf16|fp16] [--adapter-only] [--force]

Turn a scirl checkpoint folder (runs/NAME/checkpoints/step_N; a run folder runs/NAME means its latest
checkpoint) into a Hugging Face folder that
AutoModelForCausalLM.from_pretrained loads: safetensors (tied embeddings stored once), config.json,
generation_config.json, tokenizer files and chat template. The checkpoint may hold a loadable HF folder
(step_N/model/, or the HF files at step_N/ in older checkpoints) or only its DCP shards (step_N/dcp/ with
step_N/hf_meta/), saved at any world size; no process group is needed. --dtype defaults to fp32 (an fp32
checkpoint's logits are reproduced exactly). A LoRA run's checkpoint (model.lora.rank > 0: an adapter in
step_N/model/) is loaded as base (the run's model.path) + adapter in fp32 and merged into the base weights
(a 4-bit QLoRA base is quantised as in training, then dequantised to fp32 first: no quantization_config is written);
--adapter-only writes the peft adapter folder (adapter_config.json, adapter_model.safetensors, tokenizer)
instead. DIR is written atomically; an existing non-empty DIR is refused unless --force."""

USAGE_MERGE = """scirl merge --from verl DIR -o OUT [--dtype fp32|bf16|fp16] [--force]

Merge verl's FSDP actor checkpoint (global_step_N/actor: fsdp_config.json, model_world_size_W_rank_R.pt for every
rank, huggingface/) into one Hugging Face folder. Reads FSDP2 DTensor shards (Shard(0), Shard(1), uneven, a
(ddp, fsdp) mesh), FSDP1 ShardedTensors and W = 1 plain tensors without a process group; replicated buffers are
taken once; LoRA adapters are folded into the base weights with lora_alpha / r from lora_train_meta.json.
Weights stay fp32 unless --dtype asks otherwise (verl's own merger always casts to bf16). OUT is written
atomically; an existing non-empty OUT is refused unless --force."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ScirlError(f"{self.prog}: {message}")


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    parser.add_argument("--force", action="store_true")


def _quiet_transformers() -> None:
    """One summary line is the command's output; transformers' loading / writing progress bars are noise here."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _count(model) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.2f}M parameters" if n >= 1e5 else f"{n} parameters"


def export_main(args: list[str]) -> int:
    parser = _Parser(prog="scirl export", add_help=False)
    parser.add_argument("checkpoint")
    parser.add_argument("--adapter-only", action="store_true")
    _add_output_args(parser)
    ns = parser.parse_args(args)
    from scirl.export.adapter import adapter_dir
    from scirl.export.hf_folder import DTYPES, check_output, write_hf_folder
    from scirl.export.scirl_ckpt import load_checkpoint_model

    ckpt = _checkpoint_of(Path(ns.checkpoint))
    check_output(Path(ns.output), ns.force, sources=(ckpt,))
    _quiet_transformers()
    if adapter_dir(ckpt) is not None:
        return _export_lora(ckpt, ns)
    if ns.adapter_only:
        raise ScirlError(f"--adapter-only: {ckpt} holds no LoRA adapter (no model/adapter_config.json)")
    with progress(2, "export", "stages", info="load checkpoint") as bar:
        model, source = load_checkpoint_model(ckpt)
        bar.advance(info="write HF folder")
        out = write_hf_folder(model, source.meta, Path(ns.output), DTYPES[ns.dtype], ns.force)
        bar.advance(info="done")
    print(f"exported {ns.checkpoint} ({source.kind}) -> {out}: {_count(model)}, {ns.dtype}")
    _write_card_into(ckpt, out)
    return 0


def _checkpoint_of(path: Path) -> Path:
    """A checkpoint folder as given, or a run folder's latest usable checkpoint (one line when it has none)."""
    if (path / "checkpoints").is_dir() and not (path / "trainer_state.pt").is_file():
        from scirl.ckpt.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise ScirlError(f"{path}: the run has no usable checkpoint under {path / 'checkpoints'}")
        return ckpt
    return path


def _export_lora(ckpt: Path, ns) -> int:
    from scirl.export.adapter import load_base_and_adapter, merged_model
    from scirl.export.hf_folder import DTYPES, write_hf_folder
    from scirl.export.scirl_ckpt import find_source

    meta = ckpt / "hf_meta" if (ckpt / "hf_meta" / "config.json").is_file() else find_source(ckpt).meta
    with progress(2 if ns.adapter_only else 3, "export", "stages", info="load base and adapter") as bar:
        peft_model, base = load_base_and_adapter(ckpt)
        model = peft_model
        if not ns.adapter_only:
            bar.advance(info="merge adapter")
            model = merged_model(peft_model)
        bar.advance(info="write adapter folder" if ns.adapter_only else "write HF folder")
        out = write_hf_folder(model, meta, Path(ns.output), DTYPES[ns.dtype], ns.force)
        bar.advance(info="done")
    if ns.adapter_only:
        n = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_" in name)
        print(f"exported the adapter of {ckpt} (base {base}) -> {out}: {n} adapter parameters, {ns.dtype}")
    else:
        print(f"exported {ckpt} (base {base} + LoRA adapter, merged) -> {out}: {_count(model)}, {ns.dtype}")
    _write_card_into(ckpt, out)
    return 0


def _write_card_into(ckpt: Path, out: Path) -> None:
    """The run's model card as OUT/README.md (with its plots) when the checkpoint sits in a run folder
    (RUN/checkpoints/step_N or RUN/checkpoints/best): an exported folder is what gets published."""
    run = ckpt.resolve().parent.parent
    if ckpt.resolve().parent.name != "checkpoints" or not (run / "config.yaml").is_file():
        return
    from scirl.publish.card import write_card

    print(f"model card: {write_card(run, out / 'README.md')}")


def merge_main(args: list[str]) -> int:
    parser = _Parser(prog="scirl merge", add_help=False)
    parser.add_argument("--from", dest="source", required=True, choices=["verl"])
    parser.add_argument("folder")
    _add_output_args(parser)
    ns = parser.parse_args(args)
    from scirl.export.hf_folder import DTYPES, check_output, empty_model, fill_model, write_hf_folder
    from scirl.export.verl_merge import load_verl_state_dict

    check_output(Path(ns.output), ns.force, sources=(Path(ns.folder),))
    _quiet_transformers()
    state, ckpt = load_verl_state_dict(Path(ns.folder))  # its own progress: rank files read, tensors assembled
    with progress(2, "merge: write", "stages", info="fill model") as bar:
        dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
        model = empty_model(ckpt.hf_dir, dtype=dtypes.pop() if len(dtypes) == 1 else DTYPES["fp32"])
        fill_model(model, state, str(ckpt.folder))
        del state
        bar.advance(info="write HF folder")
        out = write_hf_folder(model, ckpt.hf_dir, Path(ns.output), DTYPES[ns.dtype], ns.force)
        bar.advance(info="done")
    print(f"merged {ckpt.world_size} rank file(s) of {ckpt.folder} -> {out}: {_count(model)}, {ns.dtype}")
    return 0
