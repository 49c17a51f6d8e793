"""`scirl eval`: sample n responses per benchmark prompt, grade them with each dataset's reward, write the eval JSON
(DESIGN.md shape, per-source breakdown) and `samples.jsonl`; or recompute every metric from a samples file.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from scirl.errors import ScirlError

USAGE = """scirl eval --model PATH --data NAME[,NAME...] [--n 16] [--temperature 0.6] [--top-p 0.95]
           [--max-new-tokens N] [--limit M] [-o OUT.json] [--samples PATH] [--data-dir DIR] [--field K=F ...] [--template T]
           [--system-prompt TEXT] [--no-thinking] [--max-prompt-length L] [--truncation drop|left|right|error]
           [--reward NAME] [--workers W] [--timeout S] [--seed S] [--batch-prompts B] [--device auto|cpu|cuda]
scirl eval --from-samples samples.jsonl [-o OUT.json]

Generates --n samples per prompt of each dataset (a registered name such as aime24, amc23, gsm8k, phybench,
sciknoweval_physics/sdpo_test, or a local .json/.jsonl/.parquet file read with --field prompt=COL
--field answer=COL), grades each with its dataset's reward
(--reward overrides), and writes OUT.json (mean@n, unbiased pass@k for k = 1, 2, 4, ..., n, verl bootstrap best@n
and maj@n, overall = unweighted mean over prompts, and by_source) plus one row per sample in samples.jsonl next
to it (--samples to choose the path). --limit keeps the first M prompts of each dataset. --from-samples
recomputes the metrics of a samples file without generating (prompts with different sample counts are cut to
the smallest count, and the JSON says so)."""


def _parser() -> argparse.ArgumentParser:
    from scirl.cli import _Parser  # argparse that raises a one-line ScirlError

    p = _Parser(prog="scirl eval", add_help=False)
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--from-samples", default=None)
    p.add_argument("-o", "--output", default=None)
    p.add_argument("--samples", default=None)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--field", action="append", default=[])
    p.add_argument("--template", default="auto")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--no-thinking", action="store_true")
    p.add_argument("--max-prompt-length", type=int, default=None)
    p.add_argument("--truncation", default="drop")
    p.add_argument("--reward", default="dataset")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-prompts", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    return p


def main(args: list[str]) -> int:
    ns = _parser().parse_args(args)
    if ns.from_samples:
        if ns.data or ns.model:
            raise ScirlError("scirl eval: --from-samples recomputes metrics only; drop --model / --data")
        return _from_samples(ns)
    if not ns.model or not ns.data:
        raise ScirlError("scirl eval: --model and --data are required (or --from-samples FILE)")
    for key, value, low in (("--n", ns.n, 1), ("--max-new-tokens", ns.max_new_tokens, 1),
                            ("--batch-prompts", ns.batch_prompts, 1)):
        if value < low:
            raise ScirlError(f"scirl eval: {key}={value} must be >= {low}")
    if ns.limit is not None and ns.limit < 1:
        raise ScirlError(f"scirl eval: --limit={ns.limit} must be >= 1")
    if not 0 < ns.top_p <= 1 or ns.temperature < 0:
        raise ScirlError("scirl eval: need 0 < --top-p <= 1 and --temperature >= 0")
    return _generate_and_report(ns)


def _fields(items: list[str]) -> dict:
    """--field prompt=question --field answer=final -> {"prompt": "question", "answer": "final"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScirlError(f"scirl eval: --field {item!r} is not of the form KEY=FIELD (e.g. --field prompt=question)")
        out[key.strip()] = None if value.strip() in ("", "null") else value.strip()
    return out


def _output_paths(ns) -> tuple[Path, Path]:
    out = Path(ns.output or "eval.json")
    samples = Path(ns.samples) if ns.samples else out.with_name("samples.jsonl")
    if samples.resolve() == out.resolve():
        raise ScirlError(f"scirl eval: the samples file and the eval JSON are the same path {out}")
    return out, samples


def _generate_and_report(ns) -> int:
    import os

    from scirl.config import DataConfig
    from scirl.data.pipeline import describe, load_prompt_set, require_rewards, tokenize_prompt_set
    from scirl.rewards import RewardPool, get_reward

    get_reward(ns.reward)
    out_path, samples_path = _output_paths(ns)
    d = DataConfig(train=ns.data, val=ns.data, data_dir=ns.data_dir, fields=_fields(ns.field), template=ns.template,
                   system_prompt=ns.system_prompt, enable_thinking=not ns.no_thinking,
                   max_prompt_length=ns.max_prompt_length or 10**9, truncation=ns.truncation, dedup=True)
    ps = load_prompt_set(d, "eval", spec=ns.data, size=ns.limit, key="--data")
    require_rewards(ps.samples, ns.reward, "--data", "--reward")
    workers = ns.workers if ns.workers is not None else min(8, os.cpu_count() or 1)
    pool = RewardPool(ns.reward, workers=workers, timeout=ns.timeout)  # forked before torch threads start
    from scirl.train.model_loading import load_model_and_tokenizer, pick_device

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()  # length notes come from us, once, below
    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(ns.model, ns.dtype, pick_device(ns.device))
    ps = tokenize_prompt_set(ps, tokenizer, d, "--data")
    from scirl.eval.report import eval_table, print_note
    from scirl.log.console import console

    console.print(f"eval {ns.data}: {describe(ps)}", highlight=False)
    context = getattr(model.config, "max_position_embeddings", None)
    over = sum(len(ids) + ns.max_new_tokens > context for ids in ps.ids) if context else 0
    if over:
        console.print(f"note: {over} prompt(s) + --max-new-tokens {ns.max_new_tokens} exceed the model's "
                      f"max_position_embeddings {context}", highlight=False)
    with pool:
        records, stats = _run_batches(ns, model, tokenizer, pool, ps)
    report = _finish_report(records, ns.data, ps, stats, ns, time.perf_counter() - t0)
    report["samples_file"] = str(samples_path)
    _write(out_path, samples_path, report, records)
    console.print(eval_table(report))
    print_note(report)
    console.print(f"wrote {out_path} and {samples_path}", highlight=False)
    return 0


def _run_batches(ns, model, tokenizer, pool, ps) -> tuple[list[dict], dict]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from scirl.eval.runner import generate_and_grade
    from scirl.log.console import console
    from scirl.rollout.base import SamplingParams
    from scirl.rollout.hf_engine import HFRolloutEngine

    engine = HFRolloutEngine(model, tokenizer)
    sampling = SamplingParams(ns.n, ns.temperature, ns.top_p, ns.max_new_tokens)
    total = len(ps.samples)
    records: list[dict] = []
    stats = {"timeouts": 0, "errors": 0, "truncated": 0, "response_tokens": 0}
    live = console.is_terminal
    progress = Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("prompts"),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=console, disable=not live)
    with progress:
        task = progress.add_task("eval", total=total, info="")
        for start in range(0, total, ns.batch_prompts):
            stop = min(total, start + ns.batch_prompts)
            recs, st = generate_and_grade(engine, pool, ps.samples[start:stop], ps.ids[start:stop], sampling,
                                          seed=ns.seed * 1_000_003 + start)
            records += recs
            for k in stats:
                stats[k] += int(st.get(k, 0))
            acc = sum(r["correct"] for r in records) / max(1, len(records))
            info = f"acc {acc:.3f}  timeouts {stats['timeouts']}"
            progress.update(task, completed=stop, info=info)
            if not live:
                console.print(f"eval {stop}/{total} prompts  {info}", highlight=False)
    return records, stats


def _finish_report(records, dataset: str, ps, stats: dict, ns, seconds: float) -> dict:
    from scirl.eval.metrics import compute_eval_metrics

    report = compute_eval_metrics(records, dataset)
    n_samples = max(1, len(records))
    report.update({
        "model": ns.model,
        "sampling": {"n": ns.n, "temperature": ns.temperature, "top_p": ns.top_p,
                     "max_new_tokens": ns.max_new_tokens, "seed": ns.seed, "enable_thinking": not ns.no_thinking},
        "data": {"limit": ns.limit, "template": ns.template, "sources": ps.labels,
                 "prompts_per_source": dict(zip(ps.labels, ps.sizes())), **ps.stats},
        "reward": {lab: (ns.reward if ns.reward != "dataset" else _source_reward(ps, lab)) for lab in ps.labels},
        "reward_timeouts": stats["timeouts"], "reward_errors": stats["errors"],
        "truncated_frac": stats["truncated"] / n_samples,
        "response_length_mean": stats["response_tokens"] / n_samples,
        "wall_seconds": round(seconds, 2),
    })
    return report


def _source_reward(ps, label: str) -> str | None:
    return next((s.reward for s in ps.samples if s.data_source == label), None)


def _write(out_path: Path, samples_path: Path, report: dict, records: list[dict]) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    samples_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = samples_path.with_name(samples_path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(samples_path)
    out_path.write_text(json.dumps(report, indent=2, ensure_ascii=False))


REQUIRED = ("prompt_id", "data_source", "sample", "score")


def read_samples(path: Path) -> list[dict]:
    """Rows of a samples.jsonl; a malformed row is an error naming its line."""
    from scirl.data.local_files import read_jsonl

    records = []
    for line_no, row in read_jsonl(path, "--from-samples"):  # names the file and line of a malformed row
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ScirlError(f"{path} line {line_no}: missing field(s) {', '.join(missing)}")
        try:
            row["score"] = float(row["score"])
            row["sample"] = int(row["sample"])
        except (TypeError, ValueError):
            raise ScirlError(f"{path} line {line_no}: 'score' must be a number and 'sample' an int") from None
        if not math.isfinite(row["score"]):
            raise ScirlError(f"{path} line {line_no}: score {row['score']} is not finite")
        records.append(row)
    if not records:
        raise ScirlError(f"--from-samples: {path} has no rows")
    return records


def _from_samples(ns) -> int:
    from scirl.eval.metrics import compute_eval_metrics
    from scirl.eval.report import eval_table, print_note
    from scirl.log.console import console

    path = Path(ns.from_samples)
    records = read_samples(path)
    sources = list(dict.fromkeys(str(r["data_source"]) for r in records))
    report = compute_eval_metrics(records, ",".join(sources))
    report["recomputed_from"] = str(path)
    out = Path(ns.output) if ns.output else path.with_name(path.stem + ".recomputed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    console.print(eval_table(report))
    print_note(report)
    console.print(f"wrote {out}", highlight=False)
    return 0
