"""`scirl card RUN [-o README.md]`: a Hugging Face model card for a run folder, written at the end of every run too.

The YAML header is built with huggingface_hub's ModelCardData / EvalResult (base_model when model.path is a hub
id, base_model_relation, library_name, pipeline_tag, license inherited from the base model's card or config when
known, datasets, tags with the algorithm, model-index with the final and best validation metrics); the body has
the sections published RL cards share. Everything comes from the run folder (config.yaml, summary.json,
eval/step_N.json, checkpoints/best/best.json, plots/*.png): nothing is fetched, the network is never used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import yaml

from scirl.errors import ScirlError

RESULT_KINDS = ("mean", "pass", "maj", "best")  # the metric families of the results table (std@n is left out)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HPARAMS = ("algorithm.adv_estimator", "actor.policy_loss", "actor.loss_agg_mode", "actor.lr", "actor.warmup_steps",
           "actor.weight_decay", "actor.grad_clip", "actor.clip_ratio_low", "actor.clip_ratio_high",
           "actor.entropy_coeff", "actor.use_kl_loss", "actor.kl_loss_coef", "actor.kl_loss_type",
           "algorithm.use_kl_in_reward", "algorithm.kl_penalty", "data.train_batch_size",
           "actor.ppo_mini_batch_size", "actor.ppo_epochs", "rollout.n", "rollout.temperature",
           "rollout.max_new_tokens", "rollout.val_n", "rollout.val_temperature", "reward.name", "distill.teacher",
           "model.dtype", "trainer.total_steps", "trainer.seed", "trainer.best_metric")
SFT_HPARAMS = ("sft.train", "sft.epochs", "sft.batch_size", "sft.max_length", "sft.packing", "sft.micro_batch_tokens",
               "actor.lr", "actor.lr_scheduler", "actor.warmup_steps", "actor.min_lr_ratio", "actor.weight_decay",
               "actor.betas", "actor.grad_clip", "model.dtype", "trainer.total_steps", "trainer.seed")
LORA_HPARAMS = ("model.lora.rank", "model.lora.alpha", "model.lora.dropout", "model.lora.target_modules",
                "model.lora.modules_to_save")  # listed when model.lora.rank > 0
QUANT_HPARAMS = ("model.quantization.load_in_4bit", "model.quantization.bnb_4bit_quant_type",
                 "model.quantization.bnb_4bit_compute_dtype", "model.quantization.double_quant")  # when 4-bit


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _get(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _evals(run: Path) -> dict[int, dict]:
    out = {}
    for p in (run / "eval").glob("step_*.json"):
        tail = p.stem[len("step_"):]
        if tail.isdigit() and (report := _read_json(p)) is not None:
            out[int(tail)] = report
    return dict(sorted(out.items()))


def result_metrics(report: dict) -> dict[str, float]:
    """The results-table metrics of an eval report, in the report's order."""
    return {k: v for k, v in report.get("metrics", {}).items() if k.split("@")[0] in RESULT_KINDS}


def _local_base(path: str) -> Path | None:
    if path.startswith("builtin:"):  # the bundled models (scirl/assets/<name>)
        return Path(__file__).resolve().parent.parent / "assets" / path[len("builtin:"):]
    return Path(path) if Path(path).is_dir() else None


def base_license(path: str) -> str | None:
    """The base model's licence from its card (README.md header) or config.json, local or in the HF cache only."""
    folder, readme = _local_base(path), None
    if folder is not None:
        readme = folder / "README.md"
        config = _read_json(folder / "config.json") or {}
        if config.get("license"):
            return str(config["license"])
    elif HUB_ID.match(path):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "README.md")  # the local cache only: no network
        readme = Path(cached) if isinstance(cached, str) else None
    if readme is not None and readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            head = yaml.safe_load(text.split("---", 2)[1]) or {}
            if isinstance(head, dict) and head.get("license"):
                return str(head["license"])
    return None


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows])


def build_card(run_dir: Path | str, out_dir: Path | str | None = None):
    """The ModelCard of a run folder (links relative to `out_dir`, the folder the card is written to)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    run = Path(run_dir)
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) if (run / "config.yaml").is_file() else None
    if not isinstance(cfg, dict):
        raise ScirlError(f"card: {run} is not a scirl run folder (no readable config.yaml)")
    out_dir = Path(out_dir) if out_dir is not None else run
    summary = _read_json(run / "summary.json") or {}
    evals = _evals(run)
    best = _read_json(run / "checkpoints" / "best" / "best.json")
    name = _get(cfg, "trainer.run_name") or run.name
    base = str(_get(cfg, "model.path") or "")
    algo = str(_get(cfg, "algorithm.adv_estimator") or "rl")
    lora = (_get(cfg, "model.lora.rank") or 0) > 0
    quant = bool(_get(cfg, "model.quantization.load_in_4bit"))
    weights = f"4-bit {_get(cfg, 'model.quantization.bnb_4bit_quant_type')}" if quant else _get(cfg, "model.dtype")
    license_ = base_license(base)
    sft = summary.get("kind") == "sft" or bool(_get(cfg, "sft.train"))  # a `scirl sft` run
    train_ds, val_ds = str(_get(cfg, "sft.train" if sft else "data.train")), str(_get(cfg, "data.val"))
    final_step = max((s for s in evals if s > 0), default=None)
    rows = [("before", 0)] + ([("best", best["step"])] if best and best["step"] in evals else [])
    rows += [("final", final_step)] if final_step is not None else []
    rows = [(label, step) for label, step in rows if step in evals]
    results = []
    for label, step in rows:
        if label == "before":
            continue
        report = evals[step]
        for key, value in result_metrics(report).items():
            results.append(EvalResult(
                task_type="text-generation", dataset_type=val_ds, dataset_name=report.get("dataset", val_ds),
                dataset_split="validation", metric_type=key, metric_value=value,
                metric_name=f"{key} ({label}, step {step})"))
    hub_base = base if HUB_ID.match(base) and _local_base(base) is None else None
    data = ModelCardData(
        model_name=name, base_model=hub_base, library_name="transformers", pipeline_tag="text-generation",
        license=license_, datasets=[d for d in dict.fromkeys([train_ds, val_ds]) if d and d != "None"],
        tags=(["scirl", "sft"] if sft else ["scirl", "reinforcement-learning", algo,
                                             str(_get(cfg, "actor.policy_loss") or "")])
        + (["lora"] if lora else []) + (["qlora", "4-bit"] if quant else []),
        eval_results=results or None,
        base_model_relation=("adapter" if lora else "finetune") if hub_base else None)
    data.tags = [t for t in dict.fromkeys(data.tags) if t]

    parts = [f"# {name}", "", "## Summary", "", _sft_summary(name, cfg, summary, train_ds, val_ds) if sft else
             f"`{name}` is a causal language model post-trained with reinforcement learning ({algo.upper()}, "
             f"policy loss `{_get(cfg, 'actor.policy_loss')}`) by scirl on `{train_ds}`, "
             f"validated on `{val_ds}`. Status: {summary.get('status', 'unknown')}, "
             f"{summary.get('steps', final_step or 0)} steps."]
    parts += ["", "Base model: " + (f"[`{base}`](https://huggingface.co/{base})." if hub_base else
                                   f"`{base}` (a local or bundled model, not a hub id: no `base_model` in the "
                                   "header).")]
    if sft:
        parts += ["", "## Training pipeline", "", *_sft_pipeline(cfg, base, weights, lora, summary)]
    else:
        parts += ["", "## Training pipeline", "",
                  f"1. Load `{base}` ({weights}){' with a LoRA adapter' if lora else ''}.",
                  f"2. Each step: {_get(cfg, 'data.train_batch_size')} prompts × {_get(cfg, 'rollout.n')} samples "
                  f"(temperature {_get(cfg, 'rollout.temperature')}, up to {_get(cfg, 'rollout.max_new_tokens')} new "
                  f"tokens{' a turn' if _get(cfg, 'rollout.agent.enable') else ''}) from the "
                  f"`{_get(cfg, 'rollout.engine')}` engine"
                  + (f", multi-turn with the tools {_tools(cfg)} (up to "
                     f"{_get(cfg, 'rollout.agent.max_turns')} turns)" if _get(cfg, "rollout.agent.enable") else "")
                  + f", scored by the `{_get(cfg, 'reward.name')}` reward.",
                  f"3. `{algo}` advantages, `{_get(cfg, 'actor.policy_loss')}` policy loss, AdamW "
                  f"(lr {_get(cfg, 'actor.lr')}).",
                  f"4. Validation every {_get(cfg, 'trainer.test_freq') or 'end of'} step(s) with "
                  f"{_get(cfg, 'rollout.val_n')} samples per prompt; checkpoints in `checkpoints/`."]
    keys = (SFT_HPARAMS if sft else HPARAMS) + (LORA_HPARAMS if lora else ()) + (QUANT_HPARAMS if quant else ())
    hp = [(k, _get(cfg, k)) for k in keys if _get(cfg, k) not in (None, "", [])]
    parts += ["", "## Hyperparameters", "", _table(["key", "value"], [[f"`{k}`", f"`{v}`"] for k, v in hp]), "",
              "The full resolved configuration is `config.yaml` in the run folder."]
    parts += ["", "## Datasets", ""]
    stats = summary.get("data") or {}
    if stats and sft:
        parts.append(_table(["split", "file", "conversations", "kept", "too long (dropped)", "tokens",
                             "assistant tokens"], [[split, train_ds, s.get("rows"), s.get("kept"),
                                                    s.get("dropped_too_long"), s.get("tokens"),
                                                    s.get("assistant_tokens")] for split, s in stats.items()]))
    elif stats:
        parts.append(_table(["split", "dataset", "rows loaded", "duplicates", "too long (dropped)", "prompts used"],
                            [[split, train_ds if split == "train" else val_ds, s.get("loaded"), s.get("duplicates"),
                              s.get("too_long_dropped"), s.get("prompts")] for split, s in stats.items()]))
    else:
        parts.append(f"train `{train_ds}`, validation `{val_ds}` (row counts: no summary.json yet).")
    parts += ["", "## Results", ""]
    val_loss = summary.get("val_loss") or {}
    if sft and val_loss.get("before") is not None and val_loss.get("after") is not None:
        parts += [f"Loss on the assistant tokens of `{_get(cfg, 'sft.val')}`: {_fmt(float(val_loss['before']))} "
                  f"before, {_fmt(float(val_loss['after']))} after.", ""]
    if rows:
        keys = list(dict.fromkeys(k for _, s in rows for k in result_metrics(evals[s])))
        parts.append(_table(["", "step", *keys], [[label, step, *(result_metrics(evals[step]).get(k, "–")
                                                                  for k in keys)] for label, step in rows]))
        parts += ["", f"Validation on `{evals[rows[0][1]].get('dataset', val_ds)}` "
                      f"({evals[rows[0][1]].get('num_prompts')} prompts, n={evals[rows[0][1]].get('n')} samples each): "
                      "mean@n is the mean score, pass@k the unbiased pass@k, maj@n / best@n verl's bootstrap "
                      "majority / best-of-n. Values from `eval/step_N.json`."]
        if best:
            parts.append(f"The best checkpoint is step {best['step']} by `{best['metric']}` ({best['mode']}) = "
                         f"{_fmt(float(best['value']))}.")
        agent = [(label, step, evals[step]["agent"]["overall"]) for label, step in rows
                 if (evals[step].get("agent") or {}).get("overall")]
        if agent:  # multi-turn tool rollouts (rollout.agent): how the model used its tools
            keys = ("tool_call_rate", "tool_calls_mean", "tool_error_rate", "num_turns_mean", "truncated_by_turns_frac")
            parts += ["", f"Tool use in the validation rollouts (tools: {_tools(cfg)}):", "",
                      _table(["", "step", *keys], [[label, step, *(a.get(k, "–") for k in keys)]
                                                   for label, step, a in agent])]
        comps = list(dict.fromkeys(k for _, s in rows for k in evals[s].get("reward_components", {})))
        if comps:
            parts += ["", "Reward components (mean over the validation samples; `/weighted` is weight × part):", "",
                      _table(["", "step", *comps], [[label, step, *(evals[step].get("reward_components", {})
                                                                    .get(k, "–") for k in comps)]
                                                    for label, step in rows])]
    else:
        parts.append("No rollout evaluation (sft.rollout_eval)." if sft else "No validation results yet.")
    exported = (out_dir / "config.json").is_file() or (out_dir / "adapter_config.json").is_file()
    plots = sorted((run / "plots").glob("*.png"))
    if exported and plots:  # an exported model folder is published on its own: it carries its curves
        (out_dir / "plots").mkdir(exist_ok=True)
        plots = [Path(shutil.copy2(p, out_dir / "plots" / p.name)) for p in plots]
    parts += ["", "## Curves", ""]
    parts += [f"![{p.stem}]({Path(os.path.relpath(p, out_dir)).as_posix()})" for p in plots] or [
        "No plots in `plots/` (scirl writes them at each validation when plotting is available)."]
    sub = "checkpoints/best/model" if best else (f"checkpoints/step_{final_step}/model" if final_step else "model")
    repo, sub_arg = (out_dir, "") if exported else (run, f', subfolder="{sub}"')
    parts += ["", "## How to load", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "", f'repo = "{repo.as_posix()}"  # or the hub repo this folder is uploaded to',
              f'model = AutoModelForCausalLM.from_pretrained(repo{sub_arg})',
              f'tokenizer = AutoTokenizer.from_pretrained(repo{sub_arg})', "```"]
    if exported and (out_dir / "adapter_config.json").is_file():
        parts.insert(-1, "# a LoRA adapter folder: transformers loads the base model and the adapter (needs peft)")
    parts += ["", "## Intended use and limitations", "",
              f"A research checkpoint for reasoning on `{train_ds}`-style problems. It was trained and validated on "
              "the datasets above only; the numbers are on the validation split with sampling "
              f"(temperature {_get(cfg, 'rollout.val_temperature')}), not a broad benchmark. "
              + ("Supervised fine-tuning imitates its conversations, mistakes included: read sample responses "
                 if sft else "RL post-training can reward-hack its reward function: read sample responses ")
              + "(`eval/step_N_samples.jsonl`) before relying on the scores. Not for safety-critical use."]
    parts += ["", "## Licence", "",
              f"Inherits the base model's licence: `{license_}`." if license_ else
              "The base model's licence is not recorded in its card or config: set `license` in the header to the "
              "base model's terms (and those of the training data) before publishing."]
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(parts) + "\n"
    return ModelCard(text)


def _tools(cfg: dict) -> str:
    return ", ".join(f"`{t}`" for t in _get(cfg, "rollout.agent.tools") or [])


def _sft_summary(name: str, cfg: dict, summary: dict, train_ds: str, val_ds: str) -> str:
    return (f"`{name}` is a causal language model fine-tuned with supervised learning (loss on the assistant turns "
            f"only) by scirl (`scirl sft`) on the conversations in `{train_ds}`"
            + (f", evaluated with rollouts on `{val_ds}`" if _get(cfg, "sft.rollout_eval") else "")
            + f". Status: {summary.get('status', 'unknown')}, {summary.get('steps', 0)} steps.")


def _sft_pipeline(cfg: dict, base: str, weights, lora: bool, summary: dict) -> list[str]:
    tools = _tools(cfg) if _get(cfg, "rollout.agent.enable") else None
    return [f"1. Load `{base}` ({weights}){' with a LoRA adapter' if lora else ''}.",
            f"2. {_get(cfg, 'sft.epochs')} epoch(s) of {_get(cfg, 'sft.batch_size')} conversations a step "
            f"(at most {_get(cfg, 'sft.max_length')} tokens each, "
            f"{'packed without padding' if _get(cfg, 'sft.packing') else 'padded'}), rendered with the chat "
            "template (tools included) in the multi-turn rollout's token layout; the loss is the token mean "
            "over the assistant tokens of the step.",
            f"3. AdamW (lr {_get(cfg, 'actor.lr')}, {_get(cfg, 'actor.lr_scheduler')} schedule after "
            f"{_get(cfg, 'actor.warmup_steps')} warm-up steps), gradient clip {_get(cfg, 'actor.grad_clip')}.",
            "4. " + ("Rollout evaluation before and after" + (f" with the tools {tools}" if tools else "")
                     + f" ({_get(cfg, 'rollout.val_n')} samples per prompt, reward `{_get(cfg, 'reward.name')}`)"
                     if _get(cfg, "sft.rollout_eval") else "Validation loss" if _get(cfg, "sft.val")
                     else "No evaluation") + "; checkpoints in `checkpoints/`."]


def write_card_or_warn(run_dir, note) -> None:
    """The run's model card, RUN/README.md, at the end of a run: a failure is a warning (`note`), never a failed
    run (the run itself is done and saved)."""
    try:
        write_card(run_dir)
    except Exception as e:  # noqa: BLE001
        note(f"warning: model card not written ({type(e).__name__}: {e}); `scirl card {run_dir}` retries")


def write_card(run_dir: Path | str, out: Path | str | None = None) -> Path:
    """Write the card of a run folder to `out` (default RUN/README.md), UTF-8."""
    out = Path(out) if out is not None else Path(run_dir) / "README.md"
    card = build_card(run_dir, out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(str(card), encoding="utf-8")
    os.replace(tmp, out)
    return out


def card_main(args: list[str]) -> int:
    import argparse

    from scirl.cli import _Parser

    parser: argparse.ArgumentParser = _Parser(prog="scirl card", add_help=False)
    parser.add_argument("run")
    parser.add_argument("-o", "--output", default=None)
    ns = parser.parse_args(args)
    if not Path(ns.run).is_dir():
        raise ScirlError(f"card: run folder {ns.run} not found")
    from scirl.progress import progress

    with progress(1, "card", "files", info="model card") as bar:
        out = write_card(ns.run, ns.output)
        bar.advance(info=str(out))
    print(f"model card: {out}")
    return 0
