"""The tiny tool-use demo's parts: the `tiny_tools` task (disjoint splits, exact answers, SFT conversations), the
tools-aware tiny model's tokenizer and chat template (Hermes rendering, single tool tokens, tool turns appended
token for token), the two recipes, and a short GRPO run of the tools recipe on the bundled tools model."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from conftest import small_overrides
from scirl.agent.hermes import ToolResult, parse_tool_calls, render_tools_prompt, tool_response_ids
from scirl.agent.tools import resolve_tools
from scirl.config import Config, load_config
from scirl.data import synthetic_tools as st
from scirl.errors import ScirlError

REPO = Path(__file__).resolve().parents[1]
MODEL = "builtin:tiny-qwen3-tools"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from scirl.train.model_loading import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(MODEL))


def test_splits_are_disjoint_exact_and_seeded():
    train, val = st.keys("train", 3000), st.keys("val", 1000)
    assert not set(train) & set(val) and len(set(train)) == 3000 and len(set(val)) == 1000
    assert all(st.split_of(a, b) == "val" for a, b in val)
    assert st.keys("val", 50, seed=3) == st.keys("val", 50, seed=3) != st.keys("val", 50, seed=4)
    for s in st.make_problems("val", 20):
        a, b = s.metadata["numbers"]
        assert 1000 <= a <= 9999 and 1000 <= b <= 9999 and s.answer == str(a * b)
        assert f"{a}*{b}" in s.messages[0]["content"] or f"{a} " in s.messages[0]["content"]
        assert s.messages[0]["content"].endswith("Put the final answer in \\boxed{}.")
    with pytest.raises(ScirlError, match="unknown split 'test'"):
        st.keys("test", 1)


def test_the_data_source_is_registered_with_the_tcr_reward():
    from scirl.data.datasets import LoadRequest, get_dataset

    spec = get_dataset("tiny_tools")
    assert spec.reward == "tcr"
    rows = spec.loader(LoadRequest(variant="auto", role="val", size=5, seed=0))
    assert [r.answer for r in rows] == [s.answer for s in st.make_problems("val", 5)]


def test_sft_rows_mix_tool_and_direct_conversations(tmp_path):
    rows = st.sft_rows(1000, seed=0, tool_fraction=0.3)
    tool = [r for r in rows if len(r["messages"]) == 4]
    assert 0.25 < len(tool) / 1000 < 0.35 and all(len(r["messages"]) in (2, 4) for r in rows)
    assert all(r["tools"] == [resolve_tools(["calculator"])[0].schema] for r in rows)
    user, call, result, answer = tool[0]["messages"]
    a, b = map(int, re.findall(r"\d{4}", user["content"])[:2])
    assert st.split_of(a, b) == "train"
    assert call["tool_calls"][0]["function"] == {"name": "calculator", "arguments": {"expression": f"{a}*{b}"}}
    assert result == {"role": "tool", "name": "calculator", "content": str(a * b)}
    assert answer["content"] == f"\\boxed{{{a * b}}}"
    path = st.write_sft_jsonl(tmp_path / "d" / "sft.jsonl", 10, tool_fraction=1.0)
    lines = path.read_text().splitlines()
    assert len(lines) == 10 and all(len(json.loads(x)["messages"]) == 4 for x in lines)


def test_tool_tokens_are_single_and_the_template_renders_hermes(tok):
    for t in ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<|im_end|>"):
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    assert len(tok.encode("35846674", add_special_tokens=False)) == 8
    conv = st.tool_conversation(1234, 5678)
    tools = [resolve_tools(["calculator"])[0].schema]
    text = tok.apply_chat_template(conv, tools=tools, tokenize=False)
    assert text == (
        '<|im_start|>system\n# Tools\n<tools>\n{"name": "calculator", "arguments": ["expression"]}\n</tools>'
        '<|im_end|>\n<|im_start|>user\nWhat is 1234*5678? Put the final answer in \\boxed{}.<|im_end|>\n'
        '<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1234*5678"}}\n'
        '</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n7006652\n</tool_response><|im_end|>\n'
        '<|im_start|>assistant\n\\boxed{7006652}<|im_end|>\n')
    calls, errors = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [("calculator", {"expression": "1234*5678"})] and not errors
    # the rollout's pieces (prompt, model turn, tool turn, model turn) are the template's render, token for token
    prompt = render_tools_prompt(tok, conv[:1], resolve_tools(["calculator"]))
    turn1 = tok.encode(text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0], add_special_tokens=False)
    tool = tool_response_ids(tok, [ToolResult("calculator", "7006652")])
    turn2 = tok.encode("\\boxed{7006652}", add_special_tokens=False)
    eos = [tok.eos_token_id]
    full = tok.apply_chat_template(conv, tools=tools, tokenize=True, return_dict=False)
    assert prompt + turn1 + eos + tool + turn2 + eos == list(full)[:-1]  # the template's last "\n" is not sampled
    assert len(prompt) < 64 and len(full) < 128


def test_build_info_and_size():
    from scirl.train.model_loading import resolve_model_path

    folder = Path(resolve_model_path(MODEL))
    info = json.loads((folder / "build_info.json").read_text())
    assert info["val_tool_call_rate"] == 0.0 and info["val_direct_acc"] < 0.05  # calls come from SFT, not pretraining
    assert info["model_dims"]["max_position_embeddings"] == 512
    assert sum(f.stat().st_size for f in folder.iterdir()) < 5e6


def test_recipes_validate(tmp_path):
    cfg = load_config(str(REPO / "recipes" / "tiny_grpo_tools.yaml"), [f"trainer.output_dir={tmp_path}"])
    assert cfg.model.path == MODEL and cfg.rollout.agent.enable and cfg.rollout.agent.tools == ["calculator"]
    assert cfg.reward.name == "tcr" and cfg.algorithm.clip_ratio_high == 0.28 and cfg.actor.loss_agg_mode == "token-mean"
    assert (REPO / "src" / "scirl" / "recipes" / "tiny_grpo_tools.yaml").read_text() == \
        (REPO / "recipes" / "tiny_grpo_tools.yaml").read_text()
    if "sft" not in {f.name for f in dataclasses.fields(Config)}:
        pytest.skip("scirl sft (the `sft:` config section) is not in this tree")
    sft = load_config(str(REPO / "recipes" / "tiny_sft_tools.yaml"), [f"trainer.output_dir={tmp_path}"])
    assert sft.sft.train == "runs/demo-agent-data/sft.jsonl" and sft.rollout.agent.enable


def test_summary_table_shows_the_tool_call_rate():
    from scirl.log.console import console, summary_table

    ev = lambda m, r: {"n": 8, "metrics": {"mean@8": m}, "agent": {"overall": {"tool_call_rate": r}}}  # noqa: E731
    with console.capture() as cap:
        console.print(summary_table({"before": ev(0.1, 0.25), "after": ev(0.5, 0.75)}))
    out = cap.get()
    assert re.search(r"tool-call rate\s*│\s*0\.250\s*│\s*0\.750\s*│\s*\+0\.500", out), out


def test_grpo_tools_recipe_runs_two_steps(tmp_path):
    from scirl.train.loop import run_training

    over = small_overrides(tmp_path, **{"data.train_batch_size": 2, "actor.ppo_mini_batch_size": 2, "rollout.n": 4,
                                        "rollout.val_n": 2, "data.val_size": 4, "rollout.max_new_tokens": 48,
                                        "reward.workers": 0})
    summary = run_training(load_config(str(REPO / "recipes" / "tiny_grpo_tools.yaml"), over))
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(1 <= r["agent/num_turns_mean"] <= 3 for r in rows)
    assert all(-1.0 <= r["reward/mean"] <= 1.0 for r in rows if "reward/mean" in r)
    rate = summary["after"]["agent"]["overall"]["tool_call_rate"]
    assert 0.0 <= rate <= 1.0 and summary["after"]["n"] == 2
    card = (tmp_path / "t" / "README.md").read_text()  # the card says how the model used its tools
    assert "multi-turn with the tools `calculator` (up to 3 turns)" in card
    before = summary["before"]["agent"]["overall"]
    assert f"| before | 0 | {before['tool_call_rate']:.4f} | {before['tool_calls_mean']:.4f} |" in card


def test_demo_agent_table_writes_the_stages(tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_agent", REPO / "scripts" / "demo_agent.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    ev = lambda m, a, r: {"n": 8, "metrics": {"mean@8": m, "pass@1": a, "maj@8": m, "pass@8": a},  # noqa: E731
                          "agent": {"overall": {"tool_call_rate": r}}}
    sft, grpo = tmp_path / "demo-agent-sft", tmp_path / "demo-agent"
    sft.mkdir()
    grpo.mkdir()
    (sft / "summary.json").write_text(json.dumps({"before": ev(-1.0, 0.0, 0.0), "after": ev(-0.4, 0.3, 0.5)}))
    (grpo / "summary.json").write_text(json.dumps({"before": ev(-0.4, 0.3, 0.5), "after": ev(0.35, 0.66, 0.98)}))
    monkeypatch.setattr(demo, "SFT_RUN", sft)
    monkeypatch.setattr(demo, "GRPO_RUN", grpo)
    demo.table()
    stages = json.loads((grpo / "summary.json").read_text())["stages"]
    assert [stages[k]["tool_call_rate"] for k in ("base", "sft", "grpo")] == [0.0, 0.5, 0.98]
    assert [stages[k]["pass@1"] for k in ("base", "sft", "grpo")] == [0.0, 0.3, 0.66]
    out = capsys.readouterr().out
    assert re.search(r"tool_call_rate\s+0\.000\s+0\.500\s+0\.980", out), out
