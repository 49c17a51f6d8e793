"""`scirl eval`: sample n responses per benchmark prompt, grade them with each dataset's reward, stream the rows to
`<OUT>.samples.jsonl` as they are graded (resumable with --resume) and write the eval JSON (DESIGN.md shape,
per-source breakdown); or recompute every metric from a samples file, regrading it first with --reward.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scirl.errors import ScirlError

USAGE = """scirl eval --model PATH --data NAME[,NAME...] [--n 16] [--temperature 0.6] [--top-p 0.95]
           [--max-new-tokens N] [--limit M] [-o OUT.json] [--samples PATH] [--resume] [--data-dir DIR]
           [--field K=F ...] [--template T] [--system-prompt TEXT] [--no-thinking] [--max-prompt-length L]
           [--truncation drop|left|right|error] [--reward NAME] [--workers W] [--timeout S] [--seed S]
           [--batch-prompts B] [--device auto|cpu|cuda] [--agent-from RECIPE.yaml] [rollout.agent.KEY=V ...]
scirl eval --from-samples FILE.samples.jsonl [--reward NAME|dataset] [-o OUT.json] [--samples PATH]

Generates --n samples per prompt of each dataset (a registered name such as aime24, amc23, gsm8k, phybench,
sciknoweval_physics/sdpo_test, or a local .json/.jsonl/.parquet file read with --field prompt=COL
--field answer=COL), grades each with its dataset's reward (--reward overrides), and writes OUT.json (mean@n,
unbiased pass@k for k = 1, 2, 4, ..., n, verl bootstrap best@n and maj@n, overall = unweighted mean over prompts,
and by_source). One row per sample (with its reference answer and grader) goes to OUT.samples.jsonl (-o
ev/aime.json -> ev/aime.samples.jsonl; --samples to choose the path) as soon as its batch is graded, and the
settings to OUT.samples.meta.json: after a crash or Ctrl-C, the same command with --resume continues from the
last complete batch and ends with the same files as an uninterrupted run. An existing samples file is never
overwritten: without --resume it is an error. --limit keeps the first M prompts of each dataset.
--from-samples recomputes the metrics of a samples file without generating (prompts with different sample counts
are cut to the smallest count, and the JSON says so); with --reward NAME it first regrades every row with NAME
(--reward dataset: with each row's own dataset reward) and writes the regraded rows beside OUT.json.
Tools: rollout.agent.* and sandbox.* overrides (as scirl train takes them, e.g. rollout.agent.enable=true
rollout.agent.tools=[calculator]) or --agent-from FILE.yaml (a recipe or a run's config.yaml: its rollout.agent
and sandbox sections; overrides win) sample multi-turn tool rollouts as validation in scirl train does; rewards
grade the last model turn, rows carry their turns and tool calls, and OUT.json gains an "agent" block."""


def _parser() -> argparse.ArgumentParser:
    from scirl.cli import _Parser  # argparse that raises a one-line ScirlError

    p = _Parser(prog="scirl eval", add_help=False)
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--from-samples", default=None)
    p.add_argument("-o", "--output", default=None)
    p.add_argument("--samples", default=None)
    p.add_argument("--resume", action="store_true")
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
    p.add_argument("--reward", default=None)  # generating: None = "dataset"; --from-samples: None = keep scores
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-prompts", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--agent-from", default=None)
    p.add_argument("overrides", nargs="*")  # rollout.agent.* / sandbox.* keys
    return p


def main(args: list[str]) -> int:
    ns = _parser().parse_intermixed_args(args)  # settings may sit between the flags
    if ns.workers is not None and ns.workers < 0:
        raise ScirlError(f"scirl eval: --workers={ns.workers} must be >= 0")
    if not ns.timeout > 0:
        raise ScirlError(f"scirl eval: --timeout={ns.timeout} must be > 0 seconds")
    if ns.from_samples:
        if ns.overrides or ns.agent_from:
            raise ScirlError("scirl eval: --from-samples recomputes metrics only; drop the rollout.agent / "
                             "--agent-from settings")
        if ns.data or ns.model:
            raise ScirlError("scirl eval: --from-samples recomputes metrics only; drop --model / --data")
        if ns.resume:
            raise ScirlError("scirl eval: --resume continues a generation; drop it with --from-samples")
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
    ns.agent = _agent_config(ns)
    return _generate_and_report(ns)


AGENT_KEYS = ("rollout.agent.", "sandbox.")


def _agent_config(ns):
    """The Config whose rollout.agent / sandbox sections the eval samples with (None: the agent is off): the
    bundled recipe's, with --agent-from's two sections and then the command line's overrides on top, validated as
    scirl train validates them (unknown tool, a chat template that ignores tools=)."""
    import yaml

    from scirl.config import load_config, read_yaml

    for item in ns.overrides:
        if not item.startswith(AGENT_KEYS) or "=" not in item:
            raise ScirlError(f"scirl eval: {item!r}: only rollout.agent.KEY=VALUE and sandbox.KEY=VALUE settings "
                             f"are taken here (e.g. rollout.agent.enable=true)")
    base: list[str] = []
    if ns.agent_from:
        path = Path(ns.agent_from)
        if not path.is_file():
            raise ScirlError(f"scirl eval: --agent-from {path}: no such file")
        data = read_yaml(path) or {}
        sections = {"rollout.agent": (data.get("rollout") or {}).get("agent"), "sandbox": data.get("sandbox")}
        for prefix, section in sections.items():
            if section is not None and not isinstance(section, dict):
                raise ScirlError(f"scirl eval: --agent-from {path}: {prefix} is not a mapping")
            base += [f"{prefix}.{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                     for k, v in (section or {}).items()]
    if not base and not ns.overrides:
        return None
    cfg = load_config(None, base + list(ns.overrides))
    if not cfg.rollout.agent.enable:
        return None
    cfg.model.path, cfg.rollout.max_new_tokens = ns.model, ns.max_new_tokens
    cfg.data.enable_thinking = not ns.no_thinking
    return cfg


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
    from scirl.eval.samples import default_samples_path

    out = Path(ns.output or "eval.json")
    samples = Path(ns.samples) if ns.samples else default_samples_path(out)
    if samples.resolve() == out.resolve():
        raise ScirlError(f"scirl eval: the samples file and the eval JSON are the same path {out}")
    return out, samples


def _settings(ns, reward: str) -> dict:
    """What the samples depend on, keyed by flag: a --resume with any of these changed is refused."""
    return {"--model": ns.model, "--data": ns.data, "--n": ns.n, "--temperature": ns.temperature,
            "--top-p": ns.top_p, "--max-new-tokens": ns.max_new_tokens, "--limit": ns.limit, "--seed": ns.seed,
            "--batch-prompts": ns.batch_prompts, "--template": ns.template, "--system-prompt": ns.system_prompt,
            "--no-thinking": ns.no_thinking, "--max-prompt-length": ns.max_prompt_length,
            "--truncation": ns.truncation, "--field": _fields(ns.field), "--reward": reward,
            "--device": ns.device, "--dtype": ns.dtype, "rollout.agent": _agent_settings(ns)}


def _agent_settings(ns) -> dict | None:
    """The agent's keys the samples depend on (None: single-turn), in the settings record and the eval JSON."""
    from dataclasses import asdict

    if getattr(ns, "agent", None) is None:
        return None
    out = asdict(ns.agent.rollout.agent)
    out.pop("enable")
    if "code_interpreter" in out["tools"]:
        out["sandbox"] = {k: v for k, v in asdict(ns.agent.sandbox).items() if k not in ("workers", "user_prefix")}
    return out


def _generate_and_report(ns) -> int:
    import os

    from scirl.config import DataConfig
    from scirl.data.pipeline import describe, load_prompt_set, require_rewards, tokenize_prompt_set
    from scirl.eval.samples import SamplesStream, check_start, prompts_fingerprint
    from scirl.fsutil import atomic_write_json
    from scirl.rewards import RewardPool, get_reward

    reward = ns.reward or "dataset"
    get_reward(reward)
    out_path, samples_path = _output_paths(ns)
    settings = _settings(ns, reward)
    prior = check_start(samples_path, settings, ns.resume)  # before any work: refuse a clobber or a changed setting
    d = DataConfig(train=ns.data, val=ns.data, data_dir=ns.data_dir, fields=settings["--field"],
                   template=ns.template, system_prompt=ns.system_prompt, enable_thinking=not ns.no_thinking,
                   max_prompt_length=ns.max_prompt_length or 10**9, truncation=ns.truncation, dedup=True)
    ps = load_prompt_set(d, "eval", spec=ns.data, size=ns.limit, key="--data")
    require_rewards(ps.samples, reward, "--data", "--reward")
    workers = ns.workers if ns.workers is not None else min(8, os.cpu_count() or 1)
    pool = RewardPool(reward, workers=workers, timeout=ns.timeout)  # forked before torch threads start
    from scirl.train.model_loading import load_model_and_tokenizer, pick_device

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()  # length notes come from us, once, below
    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(ns.model, ns.dtype, pick_device(ns.device))
    tools, sandbox = [], None
    if ns.agent is not None:  # the chat template override, the tools (and the sandbox behind code_interpreter)
        from scirl.agent.engine import setup_agent

        tools, sandbox = setup_agent(ns.agent, tokenizer)
    ps = tokenize_prompt_set(ps, tokenizer, d, "--data", [t.schema for t in tools] or None)
    from scirl.eval.report import eval_table, print_note
    from scirl.log.console import console

    console.print(f"eval {ns.data}: {describe(ps)}", highlight=False)
    context = getattr(model.config, "max_position_embeddings", None)
    over = sum(len(ids) + ns.max_new_tokens > context for ids in ps.ids) if context else 0
    if over:
        console.print(f"note: {over} prompt(s) + --max-new-tokens {ns.max_new_tokens} exceed the model's "
                      f"max_position_embeddings {context}", highlight=False)
    stream = None
    try:
        with pool, SamplesStream(samples_path, settings, prompts_fingerprint(ps.samples, ps.ids), prior,
                                 ps.samples) as stream:
            if prior is not None:
                console.print(f"resuming {samples_path}: {stream.done} of {len(ps.samples)} prompts already done",
                              highlight=False, soft_wrap=True)
            _run_batches(ns, model, tokenizer, pool, ps, stream, tools)
    except KeyboardInterrupt:
        if stream is not None:
            print(f"scirl eval: interrupted; {stream.done} of {len(ps.samples)} prompts are saved in {samples_path}: "
                  f"rerun the same command with --resume to continue", file=sys.stderr)
        raise
    finally:
        if sandbox is not None:  # code_interpreter no longer runs programs in this eval's pool
            from scirl.agent.tools import set_code_runner

            set_code_runner(None)
    report = _finish_report(stream.records, ns.data, ps, stream.stats, ns, reward, time.perf_counter() - t0)
    report["samples_file"] = str(samples_path)
    atomic_write_json(out_path, report)
    console.print(eval_table(report))
    print_note(report)
    console.print(f"wrote {out_path} and {samples_path}", highlight=False, soft_wrap=True)
    return 0


def _run_batches(ns, model, tokenizer, pool, ps, stream, tools) -> None:
    from scirl.eval.runner import generate_and_grade
    from scirl.eval.samples import add_grading_fields
    from scirl.log.console import console
    from scirl.progress import progress
    from scirl.rollout.base import SamplingParams
    from scirl.rollout.hf_engine import HFRolloutEngine

    engine = HFRolloutEngine(model, tokenizer)
    if ns.agent is not None:  # multi-turn tool rollouts, as validation in scirl train samples them
        from scirl.agent.engine import wrap_engine

        engine = wrap_engine(ns.agent, engine, tokenizer, tools)
    sampling = SamplingParams(ns.n, ns.temperature, ns.top_p, ns.max_new_tokens)
    total = len(ps.samples)
    several = len(ps.labels) > 1
    with progress(total, f"eval {ns.data}", "prompts", initial=stream.done) as bar:
        lines = not (bar.live and console.is_terminal)  # a live bar on the same screen replaces the batch lines
        for start in range(stream.done, total, ns.batch_prompts):  # resumed: starts on a batch boundary
            stop = min(total, start + ns.batch_prompts)
            batch = ps.samples[start:stop]
            recs, st = generate_and_grade(engine, pool, batch, ps.ids[start:stop], sampling,
                                          seed=ns.seed * 1_000_003 + start)
            stream.append(start, stop, add_grading_fields(recs, batch), st)  # on disk before the next batch
            acc = sum(r["correct"] for r in stream.records) / max(1, len(stream.records))
            info = f"acc {acc:.3f}  timeouts {stream.stats['timeouts']}"
            bar.update(stop, info=info + (f"  {batch[-1].data_source}" if several else ""))
            if lines:
                console.print(f"eval {stop}/{total} prompts  {info}", highlight=False)


def _finish_report(records, dataset: str, ps, stats: dict, ns, reward: str, seconds: float) -> dict:
    from scirl.eval.metrics import compute_eval_metrics

    report = compute_eval_metrics(records, dataset)
    _add_agent_block(report, records)
    n_samples = max(1, len(records))
    report.update({
        "model": ns.model,
        "sampling": {"n": ns.n, "temperature": ns.temperature, "top_p": ns.top_p,
                     "max_new_tokens": ns.max_new_tokens, "seed": ns.seed, "enable_thinking": not ns.no_thinking},
        "data": {"limit": ns.limit, "template": ns.template, "sources": ps.labels,
                 "prompts_per_source": dict(zip(ps.labels, ps.sizes())), **ps.stats},
        "reward": {lab: (reward if reward != "dataset" else _source_reward(ps, lab)) for lab in ps.labels},
        "reward_timeouts": stats["timeouts"], "reward_errors": stats["errors"],
        "truncated_frac": stats["truncated"] / n_samples,
        "response_length_mean": stats["response_tokens"] / n_samples,
        "wall_seconds": round(seconds, 2),
    })
    if ns.agent is not None:
        report["sampling"]["agent"] = _agent_settings(ns)
    return report


def _add_agent_block(report: dict, records: list[dict]) -> None:
    """The "agent" block (eval.runner.agent_report) when every row carries its turns (a multi-turn eval)."""
    from scirl.eval.runner import agent_report

    if records and all("num_turns" in r for r in records):
        report["agent"] = agent_report(records)


def _source_reward(ps, label: str) -> str | None:
    return next((s.reward for s in ps.samples if s.data_source == label), None)


def _from_samples(ns) -> int:
    from scirl.eval.metrics import compute_eval_metrics
    from scirl.eval.report import eval_table, print_note
    from scirl.eval.samples import default_samples_path, read_rows, rows_text
    from scirl.fsutil import atomic_write_json, atomic_write_text
    from scirl.log.console import console

    path = Path(ns.from_samples)
    base = path.stem[: -len(".samples")] if path.stem.endswith(".samples") else path.stem
    suffix = ".regraded.json" if ns.reward else ".recomputed.json"
    out = Path(ns.output) if ns.output else path.with_name(base + suffix)
    regraded = None
    if ns.reward:
        regraded = Path(ns.samples) if ns.samples else default_samples_path(out)
        if regraded.resolve() in (path.resolve(), out.resolve()):
            raise ScirlError(f"scirl eval: the regraded samples would overwrite {regraded}; choose another "
                             f"-o / --samples")
        if regraded.exists():
            raise ScirlError(f"scirl eval: {regraded} already exists; choose another -o / --samples")
    if out.resolve() == path.resolve():
        raise ScirlError(f"scirl eval: -o {out} would overwrite the samples file it reads")
    numbered = read_rows(path)
    records = [row for _, row in numbered]
    extra = _regrade(numbered, path, ns) if ns.reward else {}
    sources = list(dict.fromkeys(str(r["data_source"]) for r in records))
    report = compute_eval_metrics(records, ",".join(sources))
    _add_agent_block(report, records)
    report["recomputed_from"] = str(path)
    report.update(extra)
    if regraded is not None:
        atomic_write_text(regraded, rows_text(records))
        report["samples_file"] = str(regraded)
    atomic_write_json(out, report)
    console.print(eval_table(report))
    print_note(report)
    console.print(f"wrote {out}" + (f" and {regraded}" if regraded is not None else ""), highlight=False,
                  soft_wrap=True)
    return 0


def _regrade(numbered: list[tuple[int, dict]], path: Path, ns) -> dict:
    """Score every row again with --reward (`dataset`: each row's own reward); updates score, pred, correct."""
    import os

    from scirl.eval.samples import is_correct, row_sample
    from scirl.rewards import RewardPool, get_reward

    get_reward(ns.reward)
    questions = {str(r["prompt_id"]): r["question"] for _, r in numbered if isinstance(r.get("question"), str)}
    items = []
    for n, r in numbered:
        if r.get("answer") is None:
            why = "is null" if "answer" in r else "is missing (a samples file of an older scirl eval)"
            raise ScirlError(f"{path} line {n}: the reference 'answer' {why}, so --reward cannot regrade it; "
                             f"drop --reward to recompute the stored scores")
        if not isinstance(r.get("response"), str):
            raise ScirlError(f"{path} line {n}: no 'response' string to regrade")
        if ns.reward == "dataset" and not r.get("reward"):
            raise ScirlError(f"{path} line {n}: the row names no reward of its own (a local file's); pass "
                             f"--reward NAME (e.g. math, mcq, boxed_numeric)")
        items.append((row_sample(r, questions.get(str(r["prompt_id"]))), r["response"], {}))
    workers = ns.workers if ns.workers is not None else min(8, os.cpu_count() or 1)
    from scirl.progress import progress

    with RewardPool(ns.reward, workers=workers, timeout=ns.timeout) as pool:
        with progress(len(items), f"regrade {path.name}", "rows") as bar:
            results, stats = pool.score(items, on_progress=bar.update)
            bar.update(len(results))
        if stats["errors"] or stats["timeouts"]:
            from scirl.log.console import console

            first = (pool.last_error or "").strip().splitlines()[-1:]
            console.print(f"reward {ns.reward!r}: {stats['errors']} of {len(items)} calls failed and "
                          f"{stats['timeouts']} timed out (scored 0)" + (f"; last error: {first[0]}" if first else ""),
                          markup=False, highlight=False)
    for (_, r), res in zip(numbered, results):
        r["score"], r["pred"] = float(res.score), res.pred
        r["correct"] = is_correct(r["score"], r)
    return {"regraded_with": ns.reward, "reward_timeouts": stats["timeouts"], "reward_errors": stats["errors"]}
