"""code_interpreter inside a full tiny training run (rollout.agent.tools=[code_interpreter]): the programs run in
the sandbox (scirl.sandbox; skipped, with the sandbox's own one-line reason, where no safe tier is available). A
scripted engine writes the calls (sample 0 of a group runs a program that prints, sample 2 one that raises, odd
samples answer at once; a prompt holding a tool response is answered), so the counts are exact: each call is one
sandbox run, its output comes back as tool tokens with mask 0, errors are counted, and the run logs agent/*."""

from __future__ import annotations

import json

import pytest

from conftest import small_overrides
from scirl.agent.engine import model_spans
from scirl.agent.hermes import ToolResult, tool_response_ids
from scirl.config import load_config
from test_agent_training import AGENT, ANSWER, TEMPLATE, ScriptedToolEngine

OK_CODE = "import os\nprint(1234 * 5678, os.getuid() != 0)"
BAD_CODE = "print(1 // 0)"


def _call(code: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "code_interpreter", "arguments": {"code": code}}) + "\n</tool_call>"


@pytest.fixture
def sandbox_tier():
    from scirl.config import SandboxConfig
    from scirl.errors import ScirlError
    from scirl.sandbox import Sandbox

    try:
        return Sandbox(SandboxConfig(), worker=0).tier.name
    except ScirlError as e:  # no bubblewrap / Landlock, or not root: the sandbox's own reason
        pytest.skip(str(e))


def test_code_interpreter_in_a_training_run(tmp_path, monkeypatch, sandbox_tier):
    import scirl.train.build as build
    import scirl.train.step as step
    from scirl.sandbox.pool import SandboxPool
    from scirl.train.loop import run_training

    runs = []
    real_run = SandboxPool.run

    def counted(self, code, stdin="", timeout=None):
        result = real_run(self, code, stdin, timeout)
        runs.append((code, result))
        return result

    monkeypatch.setattr(SandboxPool, "run", counted)
    monkeypatch.setattr(build, "make_engine", lambda kind, cfg, model, tok, *a: ScriptedToolEngine(
        tok, (_call(OK_CODE), _call(BAD_CODE))))
    batches = []
    real = step.collect_batch
    monkeypatch.setattr(step, "collect_batch", lambda ctx: batches.append(real(ctx)) or batches[-1])
    run_training(load_config(None, small_overrides(tmp_path, **{
        **AGENT, "rollout.agent.tools": "[code_interpreter]", "reward.name": "tests/helpers/agent_info_reward.py:score",
        "rollout.n": 4, "rollout.val_n": 4, "rollout.max_new_tokens": 128, "rollout.agent.max_response_len": 600,
        "sandbox.workers": 2, "sandbox.timeout": 5.0})))

    # 2 steps x 2 prompts + validation (before step 1 and after step 2) of 1 prompt, each prompt with 2 calling
    # samples: 12 sandbox runs, in the run's tier
    assert len(runs) == 12 and sum(code == OK_CODE for code, _ in runs) == 6
    for code, result in runs:
        assert result.tier == sandbox_tier
        if code == OK_CODE:  # ran as an unprivileged uid, not the trainer's root / user
            assert result.ok and result.stdout == "7006652 True\n"
        else:
            assert result.returncode == 1 and "ZeroDivisionError" in result.stderr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(build.resolve_model_path("builtin:tiny-qwen3")))
    tok.chat_template = open(TEMPLATE).read()
    ok_tool = tool_response_ids(tok, [ToolResult("code_interpreter", "7006652 True")], enable_thinking=True)
    answer = tok.encode(ANSWER, add_special_tokens=False) + [tok.eos_token_id]
    for batch in batches:
        traj = batch.traj
        for i, j in enumerate(traj.sample_index):
            n = int(traj.extra["response_len"][i])
            spans = model_spans(traj.response_mask[i], n)
            ids = traj.response_ids[i].tolist()
            assert ids[spans[-1][0]:spans[-1][1]] == answer and traj.response_mask[i, n:].sum() == 0
            if j % 2:
                assert spans == [(0, len(answer))]
                continue
            (a, b), (c, _) = spans  # call, tool turn (mask 0), answer
            tool_text = tok.decode(ids[b:c])
            assert traj.response_mask[i, b:c].sum() == 0 and (traj.rollout_logprobs[i, b:c] == 0).all()
            if j % 4 == 0:
                assert ids[b:c] == ok_tool
            else:
                assert "ZeroDivisionError" in tool_text and "<tool_response>" in tool_text
        calls = traj.extra["num_tool_calls"].tolist()
        errors = traj.extra["tool_errors"].tolist()
        assert calls == [1 - j % 2 for j in traj.sample_index]
        assert errors == [int(j % 4 == 2) for j in traj.sample_index]
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["agent/tool_calls_mean"] == 0.5 and r["agent/num_turns_mean"] == 1.5
        assert r["agent/tool_error_rate"] == 0.5 and r["agent/truncated_by_turns_frac"] == 0.0
        assert r["agent/tool_latency/code_interpreter"] > 0.001  # a sandbox run, not a no-op
    report = json.loads((tmp_path / "t" / "eval" / "step_2.json").read_text())
    assert report["agent"]["overall"]["tool_call_rate"] == 0.5 and report["agent"]["overall"]["tool_error_rate"] == 0.5
    from scirl.agent import tools

    with pytest.raises(Exception, match="set_code_runner"):  # the run unset the sandbox runner when it ended
        tools.resolve_tools(["code_interpreter"])[0].fn(code="print(1)")
