"""Validation: sample n responses per held-out prompt, grade them, and write `eval/step_<N>.json` (+ samples),
atomically. In a run of several ranks each rank evaluates a contiguous slice of the prompts and the records are
gathered (in prompt order) so that every rank holds the same report; rank 0 writes it."""

from __future__ import annotations

from pathlib import Path

import torch

from scirl import dist
from scirl.agent.engine import answer_texts
from scirl.agent.engine import reward_info as agent_info
from scirl.agent.rollout import AgentStats, agent_metrics
from scirl.data.sample import Sample
from scirl.eval.metrics import compute_eval_metrics
from scirl.eval.samples import add_grading_fields, rows_text
from scirl.fsutil import atomic_write_json, atomic_write_text
from scirl.rewards.overlap import sample_and_score
from scirl.rollout.base import SamplingParams


def generate_and_grade(engine, pool, samples: list[Sample], prompt_ids: list[list[int]], sampling: SamplingParams,
                       seed: int, reward_info: dict | None = None, overlap: bool = True) -> tuple[list[dict], dict]:
    """Sample `sampling.n` responses per prompt and grade them: (one record per sample, pool stats).

    Sampling uses its own seeded RNG stream, so running validation never changes the training run's random
    stream (a resumed run stays bitwise identical). With `overlap` finished prompt groups are graded while the
    engine generates the next ones (rewards/overlap.py); the records are the same either way."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []

    def items_of(traj) -> list:  # under an agent: the last model turn, and the turn counts as info
        return [(samples[int(u)], text, {**(reward_info or {}), **agent_info(traj, i)})
                for i, (u, text) in enumerate(zip(traj.uid, answer_texts(traj)))]

    with torch.random.fork_rng(devices=devices):  # the whole stream: the engine samples until it ends
        torch.manual_seed(seed)
        out = sample_and_score(engine, pool, prompt_ids, [str(i) for i in range(len(samples))], sampling, items_of,
                               overlap)
    traj, results, stats = out.traj, out.results, out.stats
    rows = [samples[int(u)] for u in traj.uid]
    from scirl.log.console import console
    from scirl.rewards.pool import error_report

    for line in error_report(pool, stats, len(results), "in this evaluation batch"):  # a failing reward is not silent
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    records = [
        {"prompt_id": s.prompt_id, "data_source": s.data_source, "sample": j, "response": text,
         "pred": r.pred, "score": float(r.score), "components": dict(r.components),
         "correct": bool(r.score >= s.metadata.get("correct_threshold", 0.5))}
        for s, j, text, r in zip(rows, traj.sample_index, traj.texts, results)
    ]
    for record, st in zip(records, getattr(traj, "extra", {}).get("agent_stats", [])):  # what the agent did, per sample
        record.update(num_turns=st.num_turns, num_tool_calls=st.num_tool_calls, tool_errors=st.tool_errors,
                      truncated_by_turns=st.truncated_by_turns, tool_latency=st.latency)
    stats = {**stats, "truncated": int(traj.truncated.sum()),
             "response_tokens": int(traj.response_mask.sum())}
    return records, stats


def evaluate(engine, pool, samples: list[Sample], prompt_ids: list[list[int]], sampling: SamplingParams,
             dataset: str, seed: int, reward_info: dict | None = None,
             overlap: bool = True) -> tuple[dict, list[dict]]:
    """Returns (eval JSON, per-sample rows)."""
    lo, hi = shard_bounds(len(samples), dist.rank(), dist.world_size())
    if hi > lo:
        records, stats = generate_and_grade(engine, pool, samples[lo:hi], prompt_ids[lo:hi], sampling, seed,
                                            reward_info, overlap)
    else:  # more ranks than prompts
        records, stats = [], {}
    if dist.world_size() > 1:
        parts = dist.all_gather_object((records, stats))
        records = [r for part, _ in parts for r in part]
        stats = {k: sum(s.get(k, 0) for _, s in parts) for k in {k for _, s in parts for k in s}}
    add_grading_fields(records, samples)  # the rows can be regraded: scirl eval --from-samples ... --reward NAME
    report = compute_eval_metrics(records, dataset)
    report["reward_timeouts"] = stats.get("timeouts", 0)
    if records and all("num_turns" in r for r in records):
        report["agent"] = agent_report(records)
    return report, records


def agent_report(records: list[dict]) -> dict:
    """The eval JSON's "agent" block: agent_metrics (without the "agent/" prefix) + `tool_call_rate` (fraction of
    samples with at least one tool call), over all samples ("overall") and per data source ("by_source")."""
    def block(rs: list[dict]) -> dict:
        stats = [AgentStats(r["num_turns"], r["num_tool_calls"], r["tool_errors"], r["truncated_by_turns"],
                            latency=r.get("tool_latency") or {}) for r in rs]
        out = {k.removeprefix("agent/"): v for k, v in agent_metrics(stats).items()}
        out["tool_call_rate"] = sum(r["num_tool_calls"] > 0 for r in rs) / len(rs)
        return out

    by_source: dict[str, list[dict]] = {}
    for r in records:
        by_source.setdefault(str(r["data_source"]), []).append(r)
    return {"overall": block(records), "by_source": {src: block(rs) for src, rs in by_source.items()}}


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of rank's contiguous slice of n items (the first n % world ranks take one more)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def write_eval(run_dir: Path, step: int, report: dict, records: list[dict]) -> Path:
    """Write `eval/step_<N>_samples.jsonl`, then `eval/step_<N>.json`, each atomically (a crash leaves the old
    file or none, never a torn one that a resumed run would fail to read)."""
    folder = Path(run_dir) / "eval"
    atomic_write_text(folder / f"step_{step}_samples.jsonl", rows_text(records))
    return atomic_write_json(folder / f"step_{step}.json", report)
