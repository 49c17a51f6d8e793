"""Multi-turn rollouts with Hermes tool calls on any RolloutEngine: `multi_turn_generate` returns a regular
Trajectories (rows in `generate`'s order: prompt-major, n samples each) whose response is the whole conversation
after the prompt, plus one AgentStats per row; `multi_turn_stream` yields the same rows as whole prompt groups
after the turn in which a group's last row ended (for reward overlap); `agent_metrics` aggregates the stats.

Turn 1 samples n responses per prompt in one `engine.generate` call. After each turn, every unfinished row's new
tokens are decoded (for parsing only), its `<tool_call>` blocks are executed (a row's calls run in parallel, rows
run concurrently), and the tool turn's ids from `hermes.tool_response_ids` are appended. Then all unfinished rows
continue in ONE `generate` call per turn, each row its own prompt (prompt + response so far, n=1). The wrapper
draws no random numbers itself, so a seeded torch RNG makes the rollout as deterministic as the engine is.

Token in, token out: model tokens are kept exactly as the engine returned them (response_mask 1, their rollout
log-probs); tool and template tokens are tokenized once (response_mask 0, log-prob 0); nothing decoded is ever
re-tokenized. A row stops on:
- a turn that ends with end-of-turn and has no `<tool_call>` block: the normal end;
- a turn that did not end (no end-of-turn token): `truncated` (by length), as the engine reports it;
- the response reaching `max_response_len` tokens, counting model and tool tokens: `truncated`, cut exactly at the
  budget (a tool turn may be cut too). Each turn may generate min(sampling.max_new_tokens, budget left) tokens;
- a tool call on turn `max_turns`: `truncated_by_turns`; or one in a turn that used up the budget: `truncated`
  (in both cases those calls are not executed, nor counted).
Malformed calls (bad JSON, unknown tool, wrong arguments) are answered with an error `<tool_response>` and counted
in `num_tool_calls` and `tool_errors`; the rollout continues. `Trajectories.truncated` holds the by-length flag only
(what the overlong filter means); by-turns is in the stats and in `extra["truncated_by_turns"]`. `extra` also
holds per-row tensors `response_len` (model + tool tokens), `num_turns`, `num_tool_calls`, `tool_errors`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

import torch

from scirl.agent.hermes import Execution, ToolCall, ToolResult, error_results, execute_calls, parse_tool_calls, tool_response_ids
from scirl.agent.tools import Tool
from scirl.errors import ScirlError
from scirl.rollout.assemble import Sample, to_trajectories
from scirl.rollout.base import RolloutEngine, SamplingParams, Trajectories


@dataclass
class AgentStats:
    """What one row of a multi-turn rollout did."""

    num_turns: int = 0
    num_tool_calls: int = 0  # executed calls + malformed ones (each parse error is one attempted call)
    tool_errors: int = 0
    truncated_by_turns: bool = False
    truncated: bool = False  # by length
    latency: dict[str, list[float]] = field(default_factory=dict)  # seconds per call, by tool name


@dataclass
class _Row:
    prompt: list[int]
    uid: str
    index: int
    tokens: list[int] = field(default_factory=list)
    mask: list[float] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    stats: AgentStats = field(default_factory=AgentStats)
    done: bool = False

    def add(self, ids: Sequence[int], lps: Sequence[float] | None) -> None:
        self.tokens += list(ids)
        self.mask += [1.0 if lps is not None else 0.0] * len(ids)
        self.logprobs += list(lps) if lps is not None else [0.0] * len(ids)


def _check(max_turns: int, max_response_len: int, max_tool_response_len: int, tool_timeout: float) -> None:
    for key, value in (("max_turns", max_turns), ("max_response_len", max_response_len),
                       ("max_tool_response_len", max_tool_response_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ScirlError(f"rollout.agent.{key} must be a positive integer, got {value!r}")
    if not tool_timeout > 0:
        raise ScirlError(f"rollout.agent.tool_timeout must be > 0 seconds, got {tool_timeout!r}")


def _run_tools(calls: list[ToolCall], errors: list[str], tools: dict[str, Tool], timeout: float, max_len: int
               ) -> tuple[list[ToolResult], Execution]:
    ex = execute_calls(calls, tools, timeout, max_len) if calls else Execution()
    return ex.results + error_results(errors, max_len), ex


def multi_turn_generate(engine: RolloutEngine, tokenizer: Any, prompt_ids: list[list[int]], uids: list[str],
                        sampling: SamplingParams, tools: Sequence[Tool], max_turns: int, max_response_len: int,
                        max_tool_response_len: int, tool_timeout: float, **template_kwargs: Any
                        ) -> tuple[Trajectories, list[AgentStats]]:
    """Multi-turn rollout of `prompt_ids` (see the module docstring). `template_kwargs` (e.g. enable_thinking)
    reach the chat template that renders the tool turns. Returns (Trajectories, one AgentStats per row)."""
    chunks = list(_stream(engine, tokenizer, prompt_ids, uids, sampling, tools, max_turns, max_response_len,
                          max_tool_response_len, tool_timeout, **template_kwargs))
    if not chunks:  # no prompts
        return _assemble([], None, tokenizer)
    groups = [g for _, _, gs in chunks for g in gs]
    if groups == sorted(groups):
        order = None
    else:  # generate's order: prompt by prompt
        at = {g: k for k, g in enumerate(groups)}
        order = [at[g] * sampling.n + j for g in sorted(groups) for j in range(sampling.n)]
    traj = Trajectories.concat([t for t, _, _ in chunks])
    stats = [st for _, sts, _ in chunks for st in sts]
    if order is not None:
        traj, stats = traj.select(order), [stats[i] for i in order]
    return traj, stats


def multi_turn_stream(engine: RolloutEngine, tokenizer: Any, prompt_ids: list[list[int]], uids: list[str],
                      sampling: SamplingParams, tools: Sequence[Tool], max_turns: int, max_response_len: int,
                      max_tool_response_len: int, tool_timeout: float, **template_kwargs: Any
                      ) -> Iterator[tuple[Trajectories, list[AgentStats]]]:
    """`multi_turn_generate`'s rows as they finish: after each turn, the prompt groups whose n rows all ended
    (whole groups, prompt order within a chunk; a RolloutEngine.stream for reward overlap). Concatenated and put
    in prompt order, the chunks are multi_turn_generate's batch."""
    for traj, stats, _ in _stream(engine, tokenizer, prompt_ids, uids, sampling, tools, max_turns, max_response_len,
                                  max_tool_response_len, tool_timeout, **template_kwargs):
        yield traj, stats


def _stream(engine: RolloutEngine, tokenizer: Any, prompt_ids: list[list[int]], uids: list[str],
            sampling: SamplingParams, tools: Sequence[Tool], max_turns: int, max_response_len: int,
            max_tool_response_len: int, tool_timeout: float, **template_kwargs: Any
            ) -> Iterator[tuple[Trajectories, list[AgentStats], list[int]]]:
    """The rollout loop; yields (chunk, its stats, the prompt indices of its groups) after each turn."""
    _check(max_turns, max_response_len, max_tool_response_len, tool_timeout)
    if len(prompt_ids) != len(uids):
        raise ScirlError(f"multi_turn_generate: {len(prompt_ids)} prompts for {len(uids)} uids")
    table = {t.name: t for t in tools}
    rows = [_Row(list(p), u, j) for p, u in zip(prompt_ids, uids) for j in range(sampling.n)]
    groups = [rows[g * sampling.n:(g + 1) * sampling.n] for g in range(len(prompt_ids))]
    sent: set[int] = set()
    pad_id = None

    def finished() -> Iterator[tuple[Trajectories, list[AgentStats], list[int]]]:
        done = [g for g, members in enumerate(groups) if g not in sent and all(r.done for r in members)]
        if done:
            sent.update(done)
            traj, stats = _assemble([r for g in done for r in groups[g]], pad_id, tokenizer)
            yield traj, stats, done

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(rows)))) as pool:
        for turn in range(1, max_turns + 1):
            active = [r for r in rows if not r.done]
            if not active:
                break
            cap = max(min(sampling.max_new_tokens, max_response_len - len(r.tokens)) for r in active)
            if turn == 1:
                out = engine.generate(prompt_ids, uids, replace(sampling, max_new_tokens=cap))
            else:
                out = engine.generate([r.prompt + r.tokens for r in active], [r.uid for r in active],
                                      replace(sampling, n=1, max_new_tokens=cap))
            if list(out.uid) != [r.uid for r in active]:
                raise ScirlError(f"the rollout engine returned {len(out)} rows for {len(active)} or reordered them "
                                 f"(turn {turn}): multi_turn_generate needs generate's order")
            pad_id = out.pad_id
            runs: list[tuple[_Row, Any]] = []
            for k, row in enumerate(active):
                n = int(out.response_mask[k].sum())
                ids, lps = out.response_ids[k, :n].tolist(), out.rollout_logprobs[k, :n].tolist()
                room = max_response_len - len(row.tokens)
                row.add(ids[:room], lps[:room])
                row.stats.num_turns = turn
                if bool(out.truncated[k]) or n > room:  # the turn did not end within the budget
                    row.done = row.stats.truncated = True
                    continue
                calls, errors = parse_tool_calls(tokenizer.decode(ids, skip_special_tokens=False))
                if not calls and not errors:
                    row.done = True  # the model answered without calling a tool
                elif turn == max_turns:
                    row.done = row.stats.truncated_by_turns = True
                elif len(row.tokens) >= max_response_len:  # no room for the tool turn
                    row.done = row.stats.truncated = True
                else:
                    runs.append((row, pool.submit(_run_tools, calls, errors, table, tool_timeout,
                                                  max_tool_response_len)))
            for row, run in runs:
                results, ex = run.result()
                row.stats.num_tool_calls += len(results)
                row.stats.tool_errors += sum(r.is_error for r in results)
                for r in ex.results:  # calls that ran (refused ones, unknown tool or bad arguments, took 0 s)
                    if r.name in table and r.latency_s > 0:
                        row.stats.latency.setdefault(r.name, []).append(r.latency_s)
                suffix = tool_response_ids(tokenizer, results, **template_kwargs)
                room = max_response_len - len(row.tokens)
                row.add(suffix[:room], None)
                if len(suffix) >= room:  # no room left for the model: cut at the budget
                    row.done = row.stats.truncated = True
            yield from finished()
    for r in rows:  # every row ends by max_turns; an empty batch has none
        r.done = True
    yield from finished()


def _assemble(rows: list[_Row], pad_id: int | None, tokenizer: Any) -> tuple[Trajectories, list[AgentStats]]:
    """Trajectories of finished rows (mask 0 on tool tokens) and their stats; `extra` as the module docstring says."""
    samples = [Sample(r.prompt, r.uid, r.index, r.tokens, r.logprobs, r.stats.truncated) for r in rows]
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    traj = to_trajectories(samples, pad_id, tokenizer)
    for i, r in enumerate(rows):
        traj.response_mask[i, : len(r.mask)] = torch.tensor(r.mask)
    stats = [r.stats for r in rows]
    traj.extra.update(response_len=torch.tensor([len(r.tokens) for r in rows]),  # model + tool tokens
                      num_turns=torch.tensor([s.num_turns for s in stats]),
                      num_tool_calls=torch.tensor([s.num_tool_calls for s in stats]),
                      tool_errors=torch.tensor([s.tool_errors for s in stats]),
                      truncated_by_turns=torch.tensor([s.truncated_by_turns for s in stats]))
    return traj, stats


def agent_metrics(stats: Sequence[AgentStats]) -> dict[str, float]:
    """`agent/num_turns_mean`, `agent/tool_calls_mean`, `agent/tool_error_rate` (errors per call, 0 with no
    calls), `agent/truncated_by_turns_frac`, and `agent/tool_latency/<name>` (mean seconds per call)."""
    n = max(1, len(stats))
    calls = sum(s.num_tool_calls for s in stats)
    out = {"agent/num_turns_mean": sum(s.num_turns for s in stats) / n,
           "agent/tool_calls_mean": calls / n,
           "agent/tool_error_rate": sum(s.tool_errors for s in stats) / calls if calls else 0.0,
           "agent/truncated_by_turns_frac": sum(s.truncated_by_turns for s in stats) / n}
    latency: dict[str, list[float]] = {}
    for s in stats:
        for name, secs in s.latency.items():
            latency.setdefault(name, []).extend(secs)
    for name, secs in sorted(latency.items()):
        out[f"agent/tool_latency/{name}"] = sum(secs) / len(secs)
    return out
