"""Rollout tokens/s with tools (the agent loop, `scirl.agent.rollout.multi_turn_generate`) vs plain single-turn
generation, side by side in one run, on the bundled tiny model with the hf engine, and how the agent's wall time
splits into engine time and the rest (tool execution, tool-turn tokenization, parsing).

    python bench/agent_rollout.py [--prompts 4] [--n 4] [--turns 3] [--tools calculator,code_interpreter]

The tiny model never writes a `<tool_call>` by itself, so both modes are teacher-forced through a logits processor
placed after the engine's log-prob recorder: every token still costs one forward pass of the model with its KV
cache (the compute of sampling it), only the choice is scripted. Agent mode: turns 1..turns-1 each write one tool
call (a different expression or program per turn) and end their turn, the last turn writes the answer; the loop
executes the calls and appends the tool turns. Plain mode: one turn on the same prompts writing the same model
text (the calls and the answer, concatenated), so both modes generate the same model tokens per row and the
difference is what the agent loop adds (tool runs, the tool tokens and a new prefill per turn, per-turn batching).
The modes alternate, a warm-up round and then `--repeats` rounds; numbers are medians. code_interpreter runs in the sandbox
(skipped, with the reason, where no safe tier is available).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "tests" / "helpers" / "qwen3_chat_template.jinja"


def call_text(tool: str, turn: int) -> str:
    args = ({"expression": f"{1234 + turn}*{5678 + turn}"} if tool == "calculator"
            else {"code": f"print({1234 + turn} * {5678 + turn})"})
    return "<tool_call>\n" + json.dumps({"name": tool, "arguments": args}) + "\n</tool_call>"


ANSWER = "The answer is \\boxed{7006652}."


class Forcer(LogitsProcessor):
    """Forces each row's scripted text (then EOS): `script(prompt_text) -> text`, decided at the call's first step."""

    def __init__(self, tok, script):
        self.tok, self.script, self.width, self.rows = tok, script, None, None

    def __call__(self, input_ids, scores):
        if self.width is None:
            self.width = input_ids.shape[1]
            self.rows = [self.tok.encode(self.script(self.tok.decode(row)), add_special_tokens=False)
                         + [self.tok.eos_token_id] for row in input_ids.tolist()]
        t = input_ids.shape[1] - self.width
        forced = torch.full_like(scores, float("-inf"))
        for i, ids in enumerate(self.rows):
            forced[i, ids[min(t, len(ids) - 1)]] = 0.0
        return forced


def install_forcer(tok, script) -> None:
    """Every `generate` of the hf engine from here on appends a fresh Forcer after its recorder."""
    import scirl.rollout.hf_engine as hf
    from transformers import LogitsProcessorList

    hf.LogitsProcessorList = lambda procs: LogitsProcessorList([*procs, Forcer(tok, script)])


class TimedEngine:
    """The hf engine, with the seconds spent in its `generate` added up."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, *args):
        t0 = time.perf_counter()
        try:
            return self.inner.generate(*args)
        finally:
            self.seconds += time.perf_counter() - t0


def once(mode: str, tool: str, engine, tok, prompts, args) -> dict:
    """One timed rollout of `mode` (agent | plain)."""
    from scirl.agent.rollout import multi_turn_generate
    from scirl.agent.tools import resolve_tools
    from scirl.rollout.base import SamplingParams

    calls = [call_text(tool, k) for k in range(1, args.turns)]
    if mode == "agent":
        install_forcer(tok, lambda prompt: calls[prompt.count("<tool_response>")] if prompt.count(
            "<tool_response>") < len(calls) else ANSWER)
    else:
        install_forcer(tok, lambda prompt: "".join(calls) + ANSWER)
    uids = [str(i) for i in range(len(prompts))]
    sampling = SamplingParams(args.n, 1.0, 1.0, args.tokens)
    engine.seconds = 0.0
    t0 = time.perf_counter()
    if mode == "agent":
        traj, stats = multi_turn_generate(engine, tok, prompts, uids, sampling, resolve_tools([tool]), args.turns,
                                          4096, 2048, 30.0, enable_thinking=False)
    else:
        traj, stats = engine.generate(prompts, uids, sampling), []
    wall = time.perf_counter() - t0
    model_tokens = int(traj.response_mask.sum())
    all_tokens = int(traj.extra["response_len"].sum()) if stats else model_tokens
    return {"wall_s": wall, "model_tok_s": model_tokens / wall, "all_tok_s": all_tokens / wall,
            "engine_frac": engine.seconds / wall, "tool_call_s": sum(sum(v) for s in stats for v in s.latency.values()),
            "calls": sum(s.num_tool_calls for s in stats), "errors": sum(s.tool_errors for s in stats),
            "turns": sum(s.num_turns for s in stats) / max(1, len(stats)), "model_tokens": model_tokens,
            "tool_tokens": all_tokens - model_tokens}


def run(tool: str, engine, tok, prompts, args) -> dict:
    """Both modes, alternating (plain, agent, plain, ...) so that a load change on a shared machine hits both;
    the first round warms up. Medians per mode."""
    rounds: dict[str, list[dict]] = {"plain": [], "agent": []}
    for rep in range(args.repeats + 1):
        for mode in rounds:
            r = once(mode, tool, engine, tok, prompts, args)
            if rep:
                rounds[mode].append(r)
    return {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in rounds.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--turns", type=int, default=3, help="model turns per row in agent mode (turns-1 tool calls)")
    p.add_argument("--tokens", type=int, default=256, help="max new tokens per turn (the scripts are shorter)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tools", default="calculator,code_interpreter")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from scirl.config import SandboxConfig
    from scirl.data.prompts import tokenize_prompts
    from scirl.data.synthetic import make_problems
    from scirl.errors import ScirlError
    from scirl.rollout.hf_engine import HFRolloutEngine
    from scirl.train.model_loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("builtin:tiny-qwen3")
    tok.chat_template = TEMPLATE.read_text()
    engine = TimedEngine(HFRolloutEngine(model, tok))
    print(f"tiny model (0.85M), hf engine, {args.prompts} prompts x n={args.n}, {args.turns} turns "
          f"({args.turns - 1} tool calls + the answer per row), {torch.get_num_threads()} threads, "
          f"medians of {args.repeats}")
    print(f"{'tool':<17}{'mode':<7}{'model tok/s':>12}{'all tok/s':>11}{'wall s':>8}{'engine %':>9}"
          f"{'tool runs s':>12}{'calls':>7}{'errors':>7}{'turns':>7}{'tool tokens':>12}")
    results = {}
    for tool in args.tools.split(","):
        pool = None
        if tool == "code_interpreter":
            from scirl.agent.code_runner import use_sandbox

            try:
                pool = use_sandbox(SandboxConfig())
            except ScirlError as e:
                print(f"{tool:<17}skipped: {e}")
                continue
        from scirl.agent.tools import resolve_tools

        schemas = [t.schema for t in resolve_tools([tool])]
        prompts = tokenize_prompts(make_problems("train", args.prompts, seed=0), tok, 4096, False, "bench",
                                   tools=schemas)[1]
        both = run(tool, engine, tok, prompts, args)
        for mode, r in both.items():
            results[(tool, mode)] = r
            print(f"{tool:<17}{mode:<7}{r['model_tok_s']:>12.0f}{r['all_tok_s']:>11.0f}{r['wall_s']:>8.2f}"
                  f"{100 * r['engine_frac']:>8.0f}%{r['tool_call_s']:>12.3f}{r['calls']:>7.0f}{r['errors']:>7.0f}"
                  f"{r['turns']:>7.2f}{r['tool_tokens']:>12.0f}")
        a, b = results[(tool, "agent")], results[(tool, "plain")]
        print(f"{'':<17}agent / plain model tokens/s: {a['model_tok_s'] / b['model_tok_s']:.2f}; agent wall "
              f"{a['wall_s']:.2f} s = engine {a['engine_frac'] * a['wall_s']:.2f} s + the rest "
              f"{(1 - a['engine_frac']) * a['wall_s']:.2f} s ({100 * (1 - a['engine_frac']):.0f}%: tool turns, "
              f"mostly tool execution; the calls' latencies add up to {a['tool_call_s']:.3f} s, "
              f"{1000 * a['tool_call_s'] / max(1, a['calls']):.1f} ms a call with waiting for a worker, as they overlap)")
        if pool is not None:
            from scirl.agent.tools import set_code_runner

            set_code_runner(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
