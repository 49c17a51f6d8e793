"""The trainer's side of multi-turn tool use (`rollout.agent.enable`): `AgentEngine` wraps any RolloutEngine so that
its `generate` is `multi_turn_generate` over the configured tools, and `setup_agent` prepares a run for it (the
chat template override, the tools, the sandbox behind code_interpreter). The rollout-batch layer and the evaluator
call `generate` as before; everything else (weights, log-probs of the sync guard, close) goes to the inner engine.

What a wrapped batch carries in `Trajectories.extra` (select / concat keep it):
- `agent_stats`: one AgentStats per row (agent_metrics aggregates them);
- `answer_texts`: the last model turn of each row, decoded: what rewards grade. The whole conversation stays in
  `texts` for logs; grading only the model's own last turn means a tool's printout (e.g. a program printing
  `\\boxed{42}`) is never graded as the model's answer;
- `num_turns` ... `truncated_by_turns` tensors from multi_turn_generate, and `tool_rounds` (tool turns appended).
`reward_info(traj, i)` turns a row into the reward's `info` keys: `num_turns` in the tcr reward's convention
(user + assistant turns + 1 = 2 + 2 * tool rounds), `num_tool_calls`, `tool_errors`.
`stream` yields whole prompt groups after the turn in which their last row ended, so with reward.overlap the
groups that finished early are scored while the others take more turns (rewards/overlap.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from scirl.agent.hermes import tools_missing_from
from scirl.agent.rollout import multi_turn_generate, multi_turn_stream
from scirl.agent.tools import Tool, resolve_tools
from scirl.errors import ScirlError
from scirl.rollout.base import SamplingParams, Trajectories


def read_chat_template(path: str) -> str:
    """The text of a jinja chat template file; one line naming rollout.agent.chat_template when unreadable."""
    p = Path(path).expanduser()
    try:
        return p.read_text()
    except OSError as e:
        raise ScirlError(f"rollout.agent.chat_template: cannot read {path!r} ({e.strerror or type(e).__name__})"
                         ) from None


def check_template_renders_tools(template: str, tools: Sequence[Tool], label: str) -> None:
    """Render `template` with the tools' schemas; one line when a tool's name is not in the prompt (the template
    ignores tools=, as the bundled tiny model's does)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template([[{"role": "user", "content": "x"}]], tools=[t.schema for t in tools],
                                            chat_template=template, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - a broken template: one line
        raise ScirlError(f"{label}: the template does not render ({type(e).__name__}: {str(e)[:200]})") from None
    missing = tools_missing_from(rendered[0], tools)
    if missing:
        raise ScirlError(f"{label}: the chat template ignores tools= (the schema of {missing[0]!r} is not in the "
                         "rendered prompt); set rollout.agent.chat_template to one that renders tools (e.g. Qwen3's)")


class AgentEngine:
    """A RolloutEngine whose `generate` runs multi-turn tool-use rollouts on `inner` (module docstring)."""

    def __init__(self, inner, tokenizer: Any, tools: Sequence[Tool], max_turns: int, max_response_len: int,
                 max_tool_response_len: int, tool_timeout: float, **template_kwargs: Any):
        self.inner, self.tokenizer, self.tools = inner, tokenizer, list(tools)
        self.max_turns, self.max_response_len = max_turns, max_response_len
        self.max_tool_response_len, self.tool_timeout = max_tool_response_len, tool_timeout
        self.template_kwargs = template_kwargs

    @property
    def shares_module(self) -> bool:
        return self.inner.shares_module

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    def _args(self) -> tuple:
        return (self.tools, self.max_turns, self.max_response_len, self.max_tool_response_len, self.tool_timeout)

    def generate(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Trajectories:
        traj, stats = multi_turn_generate(self.inner, self.tokenizer, prompts, uids, sampling, *self._args(),
                                          **self.template_kwargs)
        return self._with_answers(traj, stats)

    def stream(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Iterator[Trajectories]:
        """Whole prompt groups as they end, after each turn (reward.overlap scores them while later turns run);
        put back in prompt order they are `generate`'s batch."""
        for traj, stats in multi_turn_stream(self.inner, self.tokenizer, prompts, uids, sampling, *self._args(),
                                             **self.template_kwargs):
            yield self._with_answers(traj, stats)

    def _with_answers(self, traj: Trajectories, stats: list) -> Trajectories:
        spans = [model_spans(traj.response_mask[i], int(traj.extra["response_len"][i])) for i in range(len(traj))]
        last = [traj.response_ids[i, s[-1][0]:s[-1][1]].tolist() if s else [] for i, s in enumerate(spans)]
        traj.extra.update(
            agent_stats=stats,
            answer_texts=self.tokenizer.batch_decode(last, skip_special_tokens=True),
            tool_rounds=torch.tensor([tool_rounds(s, int(traj.extra["response_len"][i])) for i, s in enumerate(spans)]))
        return traj

    def close(self) -> None:
        self.inner.close()


def model_spans(mask: torch.Tensor, length: int) -> list[tuple[int, int]]:
    """[start, end) of each run of model tokens (mask 1) in the first `length` response positions."""
    spans: list[tuple[int, int]] = []
    start = None
    for k, m in enumerate(mask[:length].tolist() + [0.0]):
        if m > 0 and start is None:
            start = k
        elif m == 0 and start is not None:
            spans.append((start, k))
            start = None
    return spans


def tool_rounds(spans: list[tuple[int, int]], length: int) -> int:
    """Tool turns in a response: the gaps between model runs, plus a trailing tool turn (a row cut inside it)."""
    if not spans:
        return 0
    return len(spans) - 1 + (spans[-1][1] < length)


def reward_info(traj: Trajectories, i: int) -> dict:
    """The agent's keys of row i's reward `info` (empty for a single-turn batch)."""
    extra = getattr(traj, "extra", {})  # test doubles of a batch may have none
    if "tool_rounds" not in extra:
        return {}
    return {"num_turns": 2 + 2 * int(traj.extra["tool_rounds"][i]),
            "num_tool_calls": int(traj.extra["num_tool_calls"][i]), "tool_errors": int(traj.extra["tool_errors"][i])}


def answer_texts(traj: Trajectories) -> list[str]:
    """What rewards grade: each row's last model turn under an agent, else the response."""
    return getattr(traj, "extra", {}).get("answer_texts") or traj.texts


def setup_agent(cfg, tokenizer) -> tuple[list[Tool], Any]:
    """For `rollout.agent.enable`: install the chat template override on `tokenizer`, check that its template
    renders the tools, and build the sandbox when code_interpreter is among them. Returns (tools, sandbox pool or
    None: close it at the end of the run)."""
    ag = cfg.rollout.agent
    if ag.chat_template:
        tokenizer.chat_template = read_chat_template(ag.chat_template)
    tools = resolve_tools(list(ag.tools))
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if template is None:
        raise ScirlError(f"rollout.agent.enable: the tokenizer of {cfg.model.path!r} has no single chat template; "
                         "set rollout.agent.chat_template")
    check_template_renders_tools(template, tools, f"rollout.agent (the chat template of {cfg.model.path!r})")
    pool = None
    if any(t.name == "code_interpreter" for t in tools):
        from scirl.agent.code_runner import use_sandbox

        pool = use_sandbox(cfg.sandbox)
    return tools, pool


def response_budget(cfg) -> int:
    """Tokens a multi-turn response may hold, model and tool tokens together (rollout.agent.max_response_len; 0
    means rollout.max_new_tokens)."""
    return cfg.rollout.agent.max_response_len or cfg.rollout.max_new_tokens


def wrap_engine(cfg, engine, tokenizer, tools: Sequence[Tool]) -> AgentEngine:
    ag = cfg.rollout.agent
    return AgentEngine(engine, tokenizer, tools, ag.max_turns, response_budget(cfg),
                       ag.max_tool_response_len, ag.tool_timeout, enable_thinking=cfg.data.enable_thinking)
