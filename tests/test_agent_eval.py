"""`scirl eval` with rollout.agent: multi-turn tool rollouts outside a training run. The bundled tiny model with
the calculator (the wiring: tools in the prompt, rows with turns, the "agent" block per source), a scripted engine
that calls the tool on half the samples (exact counts, the last model turn graded, --from-samples keeps the
block, a resume with other agent settings is refused), and bad input (one line each)."""

from __future__ import annotations

import json

import pytest

from scirl.errors import ScirlError
from scirl.eval.command import main as eval_main
from test_agent_training import ANSWER, TEMPLATE, ScriptedToolEngine

AGENT = ["rollout.agent.enable=true", "rollout.agent.tools=[calculator]", f"rollout.agent.chat_template={TEMPLATE}",
         "rollout.agent.max_turns=3"]


def _eval(tmp_path, *extra):
    out = tmp_path / "ev.json"
    eval_main(["--model", "builtin:tiny-qwen3", "--data", "tiny_physics", "--limit", "3", "--n", "2",
               "--temperature", "1.0", "--top-p", "1.0", "-o", str(out), *extra])
    rows = [json.loads(x) for x in (tmp_path / "ev.samples.jsonl").read_text().splitlines()]
    return json.loads(out.read_text()), rows


def test_tiny_model_eval_with_the_calculator(tmp_path, monkeypatch):
    import scirl.rollout.hf_engine as hf

    prompts = []

    class Recording(hf.HFRolloutEngine):
        def generate(self, ids, uids, sampling):
            prompts.append([self.tokenizer.decode(p) for p in ids])
            return super().generate(ids, uids, sampling)

    monkeypatch.setattr(hf, "HFRolloutEngine", Recording)
    report, rows = _eval(tmp_path / "a", "--max-new-tokens", "12", *AGENT)
    first = len(prompts)
    plain, plain_rows = _eval(tmp_path / "b", "--max-new-tokens", "12")
    assert len(rows) == len(plain_rows) == 6
    assert "agent" not in plain and all("num_turns" not in r for r in plain_rows)
    # the tools' schemas are in the agent's prompts (the chat template's tools=), not in the plain ones
    assert len(prompts[0]) == 3 and all('"name": "calculator"' in p and "<tools>" in p for p in prompts[0])
    assert not any("calculator" in p for batch in prompts[first:] for p in batch)
    assert report["sampling"]["agent"]["tools"] == ["calculator"] and report["sampling"]["agent"]["max_turns"] == 3
    agent = report["agent"]
    assert list(agent["by_source"]) == list(report["by_source"]) == ["tiny_physics"]
    assert all(1 <= r["num_turns"] <= 3 and r["num_tool_calls"] >= 0 for r in rows)
    assert agent["overall"]["num_turns_mean"] == pytest.approx(sum(r["num_turns"] for r in rows) / 6)
    assert agent["overall"]["tool_call_rate"] == pytest.approx(sum(r["num_tool_calls"] > 0 for r in rows) / 6)


def test_scripted_tool_calls_are_counted_and_the_last_turn_is_graded(tmp_path, monkeypatch):
    import scirl.rollout.hf_engine as hf

    monkeypatch.setattr(hf, "HFRolloutEngine", lambda model, tok: ScriptedToolEngine(tok))
    args = ["--max-new-tokens", "128", "--reward", "tests/helpers/agent_info_reward.py:score", "--n", "4",
            *AGENT, "rollout.agent.max_response_len=400"]
    report, rows = _eval(tmp_path, *args)
    assert len(rows) == 12
    for r in rows:  # samples 0, 2 call the calculator once, then answer; 1, 3 answer at once
        calls = (r["sample"] + 1) % 2
        assert r["num_tool_calls"] == calls and r["num_turns"] == 1 + calls and r["tool_errors"] == 0
        assert r["pred"] == ANSWER and r["score"] == pytest.approx(0.2 + 0.2 * calls)  # tcr's num_turns 4 or 2
        if calls:
            assert "7006652" in r["response"].split("<tool_call>")[-1] and r["tool_latency"]["calculator"][0] > 0
    overall = report["agent"]["overall"]
    assert overall["tool_call_rate"] == 0.5 and overall["tool_calls_mean"] == 0.5
    assert overall["num_turns_mean"] == 1.5 and overall["tool_error_rate"] == 0.0
    assert overall["truncated_by_turns_frac"] == 0.0 and overall["tool_latency/calculator"] > 0
    assert report["metrics"]["mean@4"] == pytest.approx(0.3)
    # the samples file alone gives the same block
    eval_main(["--from-samples", str(tmp_path / "ev.samples.jsonl"), "-o", str(tmp_path / "re.json")])
    assert json.loads((tmp_path / "re.json").read_text())["agent"] == report["agent"]
    # a resume with other agent settings is refused, naming them
    with pytest.raises(ScirlError, match=r"made with rollout.agent .*max_turns.*3"):
        _eval(tmp_path, *args[:-1], "rollout.agent.max_turns=5", "--resume")


def test_agent_from_a_recipe_and_bad_input(tmp_path, monkeypatch):
    import scirl.rollout.hf_engine as hf

    monkeypatch.setattr(hf, "HFRolloutEngine", lambda model, tok: ScriptedToolEngine(tok))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"rollout:\n  n: 99\n  agent:\n    enable: true\n    tools: [calculator]\n"
                      f"    chat_template: {TEMPLATE}\n    max_response_len: 400\nsandbox:\n  timeout: 3.0\n")
    report, rows = _eval(tmp_path, "--max-new-tokens", "128", "--agent-from", str(recipe))
    assert report["agent"]["overall"]["tool_call_rate"] == 0.5 and report["sampling"]["agent"]["max_turns"] == 16
    assert report["n"] == 2  # only the recipe's agent and sandbox sections are taken
    # an override turns it off again: single-turn, no block
    report, _ = _eval(tmp_path / "off", "--max-new-tokens", "128", "--agent-from", str(recipe),
                      "rollout.agent.enable=false")
    assert "agent" not in report
    for extra, pattern in ((["rollout.n=3"], "only rollout.agent.KEY=VALUE and sandbox.KEY=VALUE"),
                           ([*AGENT, "rollout.agent.tools=[calculater]"], "Did you mean 'calculator'"),
                           (["--agent-from", str(tmp_path / "nope.yaml")], "no such file")):
        with pytest.raises(ScirlError, match=pattern) as e:
            _eval(tmp_path / "bad", *extra)
        assert "\n" not in str(e.value)
    with pytest.raises(ScirlError, match="--from-samples recomputes metrics only"):
        eval_main(["--from-samples", "x.samples.jsonl", *AGENT])
