"""rollout.agent in the trainer: config errors (unknown tool, a template that ignores tools=), a real 2-step run on
the tiny model with the calculator (wiring: metrics, eval "agent" block), and a run on a scripted engine that calls
the tool on half the rows, which proves the tool path end to end: the mask the loss gets is 0 exactly on the tool
turn, the reward grades the last model turn with tcr's num_turns, metrics and the eval block count the calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import small_overrides
from scirl.agent.hermes import ToolResult, tool_response_ids
from scirl.config import load_config
from scirl.errors import ScirlError
from scirl.rollout.assemble import Sample, to_trajectories

TEMPLATE = str(Path(__file__).parent / "helpers" / "qwen3_chat_template.jinja")
AGENT = {"rollout.agent.enable": "true", "rollout.agent.tools": "[calculator]", "rollout.agent.chat_template": TEMPLATE,
         "rollout.agent.max_turns": 3, "data.train_batch_size": 2, "actor.ppo_mini_batch_size": 2,
         "rollout.n": 2, "rollout.val_n": 2, "data.val_size": 1, "rollout.max_new_tokens": 16,
         "data.max_prompt_length": 700}  # the tools block of the system prompt is ~520 of the tiny vocabulary's tokens
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1234*5678"}}\n</tool_call>'
ANSWER = "The answer is \\boxed{7006652}."


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_unknown_tool_is_one_line_listing_the_known_ones(tmp_path):
    with pytest.raises(ScirlError) as e:
        load_config(None, small_overrides(tmp_path, **{**AGENT, "rollout.agent.tools": "[calculater]"}))
    msg = str(e.value)
    assert "\n" not in msg and "calculater" in msg and "calculator" in msg and "code_interpreter" in msg


def test_a_template_that_ignores_tools_is_refused_at_config_load(tmp_path):
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ScirlError, match=r"rollout.agent.chat_template=.*ignores tools=.*'calculator'") as e:
        load_config(None, small_overrides(tmp_path, **{**AGENT, "rollout.agent.chat_template": str(plain)}))
    assert "\n" not in str(e.value)
    with pytest.raises(ScirlError, match="cannot read"):
        load_config(None, small_overrides(tmp_path, **{**AGENT, "rollout.agent.chat_template": str(tmp_path / "x")}))
    # off: the same template is not checked against tools
    load_config(None, small_overrides(tmp_path, **{**AGENT, "rollout.agent.enable": "false",
                                                   "rollout.agent.chat_template": str(plain)}))


def test_the_bundled_template_is_refused_when_the_run_builds(tmp_path):
    from scirl.train.loop import run_training

    cfg = load_config(None, small_overrides(tmp_path, **{**AGENT, "rollout.agent.chat_template": ""}))
    with pytest.raises(ScirlError, match="ignores tools="):
        run_training(cfg)


def test_tiny_model_trains_two_steps_with_the_agent_on(tmp_path):
    from scirl.train.loop import run_training

    run_training(load_config(None, small_overrides(tmp_path, **AGENT)))
    rows = _rows(tmp_path / "t")
    assert len(rows) == 2
    for r in rows:
        assert 1 <= r["agent/num_turns_mean"] <= 3 and r["agent/tool_calls_mean"] >= 0
        assert 0 <= r["agent/tool_error_rate"] <= 1 and 0 <= r["agent/truncated_by_turns_frac"] <= 1
    report = json.loads((tmp_path / "t" / "eval" / "step_2.json").read_text())
    overall = report["agent"]["overall"]
    assert 1 <= overall["num_turns_mean"] <= 3 and 0 <= overall["tool_call_rate"] <= 1
    assert list(report["agent"]["by_source"]) == list(report["by_source"])


class ScriptedToolEngine:
    """Turn 1: sample j even calls the calculator, j odd answers at once; turn 2 (a prompt holding a tool response)
    answers. Log-probs are a constant -1 (the trainer recomputes its own)."""

    shares_module = True

    def __init__(self, tok, calls=(CALL,)):
        self.tok, self.calls = tok, calls  # sample j (even) makes calls[(j // 2) % len(calls)]

    def generate(self, prompts, uids, sampling):
        samples = []
        for p, u in zip(prompts, uids):
            second = "<tool_response>" in self.tok.decode(p)
            for j in range(sampling.n):
                text = ANSWER if second or j % 2 else self.calls[(j // 2) % len(self.calls)]
                ids = self.tok.encode(text, add_special_tokens=False) + [self.tok.eos_token_id]
                samples.append(Sample(list(p), u, j, ids, [-1.0] * len(ids), False))
        return to_trajectories(samples, self.tok.pad_token_id, self.tok)

    def update_weights(self, state_dict):
        pass

    def close(self):
        pass


def test_tool_path_through_the_trainer(tmp_path, monkeypatch):
    import scirl.train.build as build
    import scirl.train.step as step
    from scirl.train.loop import run_training

    monkeypatch.setattr(build, "make_engine", lambda kind, cfg, model, tok, *a: ScriptedToolEngine(tok))
    batches = []
    real = step.collect_batch
    monkeypatch.setattr(step, "collect_batch", lambda ctx: batches.append(real(ctx)) or batches[-1])
    run_training(load_config(None, small_overrides(tmp_path, **{
        **AGENT, "reward.name": "tests/helpers/agent_info_reward.py:score", "rollout.n": 4, "rollout.val_n": 4,
        "rollout.max_new_tokens": 128, "rollout.agent.max_response_len": 400})))  # a call is ~90 tiny tokens

    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(build.resolve_model_path("builtin:tiny-qwen3")))
    tok.chat_template = Path(TEMPLATE).read_text()
    call, answer = (tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in (CALL, ANSWER))
    tool = tool_response_ids(tok, [ToolResult("calculator", "7006652")], enable_thinking=True)
    for batch in batches:  # the mask the loss is given: model tokens 1, the tool turn 0, padding 0
        traj = batch.traj
        for i, j in enumerate(traj.sample_index):
            expect = [1.0] * len(call) + [0.0] * len(tool) + [1.0] * len(answer) if j % 2 == 0 else [1.0] * len(answer)
            width = traj.response_mask.shape[1]
            assert traj.response_mask[i].tolist() == expect + [0.0] * (width - len(expect))
            got = traj.response_ids[i, :len(expect)].tolist()
            assert got == (call + tool + answer if j % 2 == 0 else answer)
        # rewards: num_turns 4 (one tool round) or 2, on the last model turn
        assert batch.scores.tolist() == pytest.approx([0.4 if j % 2 == 0 else 0.2 for j in traj.sample_index])
    rows = _rows(tmp_path / "t")
    for r in rows:
        assert r["agent/num_turns_mean"] == 1.5 and r["agent/tool_calls_mean"] == 0.5
        assert r["agent/tool_error_rate"] == 0.0 and r["agent/truncated_by_turns_frac"] == 0.0
        assert r["agent/tool_latency/calculator"] > 0
    report = json.loads((tmp_path / "t" / "eval" / "step_2.json").read_text())
    overall = report["agent"]["overall"]
    assert overall["tool_call_rate"] == 0.5 and overall["num_turns_mean"] == 1.5 and overall["tool_error_rate"] == 0
    records = [json.loads(x) for x in (tmp_path / "t" / "eval" / "step_2_samples.jsonl").read_text().splitlines()]
    for rec in records:
        assert rec["pred"] == ANSWER and rec["num_tool_calls"] == (rec["sample"] + 1) % 2
        assert rec["score"] == (0.4 if rec["sample"] % 2 == 0 else 0.2)
        if rec["num_tool_calls"]:
            assert "7006652" in rec["response"].split("<tool_call>")[-1] and len(rec["response"]) > len(ANSWER) + 40


def test_select_and_concat_carry_extra_and_tool_rounds_count_gaps():
    import torch

    from scirl.agent.engine import model_spans, tool_rounds
    from scirl.rollout.base import Trajectories

    def traj(uids, turns):
        b = len(uids)
        return Trajectories(torch.zeros(b, 2, dtype=torch.long), torch.ones(b, 2, dtype=torch.long),
                            torch.zeros(b, 3, dtype=torch.long), torch.ones(b, 3), torch.zeros(b, 3), list(uids),
                            [0] * b, torch.zeros(b, dtype=torch.bool), list(uids),
                            extra={"num_turns": torch.tensor(turns), "agent_stats": [f"s{t}" for t in turns]})

    both = Trajectories.concat([traj("ab", [1, 2]), traj("c", [3])])
    assert both.extra["num_turns"].tolist() == [1, 2, 3] and both.extra["agent_stats"] == ["s1", "s2", "s3"]
    picked = both.select([2, 0])
    assert picked.extra["num_turns"].tolist() == [3, 1] and picked.extra["agent_stats"] == ["s3", "s1"]
    # model runs [0,2) and [4,5): one tool turn between; a row cut inside its second tool turn has two
    mask = torch.tensor([1.0, 1, 0, 0, 1, 0, 0])
    assert model_spans(mask, 5) == [(0, 2), (4, 5)] and tool_rounds(model_spans(mask, 5), 5) == 1
    assert tool_rounds(model_spans(mask, 7), 7) == 2 and tool_rounds(model_spans(mask[:2], 2), 2) == 0


def test_overlong_penalty_under_the_agent_measures_the_whole_conversation(tmp_path):
    import torch

    from scirl.train.rollout_batch import overlong_shaping

    over = {**AGENT, "reward.overlong_buffer.enable": "true", "reward.overlong_buffer.len": 100,
            "rollout.agent.max_response_len": 400}
    cfg = load_config(None, small_overrides(tmp_path, **over))  # buffer 100 > max_new_tokens 24: fine under the agent
    traj = type("T", (), {"extra": {"response_len": torch.tensor([300, 350, 400])}, "__len__": lambda s: 3})()
    assert overlong_shaping(cfg, traj).tolist() == [0.0, -0.5, -1.0]
    with pytest.raises(ScirlError, match="rollout.agent.max_response_len=50"):
        load_config(None, small_overrides(tmp_path, **{**over, "rollout.agent.max_response_len": 50}))
