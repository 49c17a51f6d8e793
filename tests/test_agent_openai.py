"""The agent loop through the openai engine: a 2-step `scirl train` with rollout.engine=openai and
rollout.agent on, against a real `scirl serve` HTTP server on 127.0.0.1 (in a thread of this process, so its
sampler can be scripted: turn 1 calls the calculator on even samples and answers on odd ones, a prompt holding a
tool response is answered; the log-probs are the served model's own, at the request's temperature). Checks: the
requests (n samples on turn 1, one per continuing row after), the mask the loss gets token by token, the server's
log-probs equal the trainer's on model tokens, the weights pushed after each step (sync guard passes), the
agent metrics count exactly the scripted calls."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import pytest

from conftest import free_port, small_overrides
from scirl.agent.hermes import ToolResult, tool_response_ids
from scirl.config import load_config
from test_agent_training import AGENT, ANSWER, CALL, TEMPLATE

TOL = 1e-4


@pytest.fixture
def long_tiny(tmp_path) -> str:
    """The bundled tiny model with a 4k context (the tools block alone is ~520 tokens; RoPE has no fixed limit,
    but scirl serve refuses a prompt past max_position_embeddings)."""
    import shutil

    from scirl.train.model_loading import resolve_model_path

    folder = tmp_path / "tiny-4k"
    shutil.copytree(resolve_model_path("builtin:tiny-qwen3"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 4096
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


@pytest.fixture
def scripted_server(monkeypatch, long_tiny):
    """(url, requests): a scirl serve thread whose sampler is scripted; each request's (prompt ids, n)."""
    import scirl.serve.completions as comp
    from scirl.serve.server import serve

    requests: list[tuple[list[int], int]] = []

    def sample(cm, ids, req, max_new, watch):
        tok = cm.tokenizer
        second = "<tool_response>" in tok.decode(ids)
        requests.append((list(ids), req["n"]))
        out = []
        for j in range(req["n"]):
            toks = tok.encode(ANSWER if second or j % 2 else CALL, add_special_tokens=False) + [tok.eos_token_id]
            toks = toks[:max_new]
            lp = comp._forward_logprobs(cm, [ids + toks], req["temperature"])[0][len(ids) - 1:]
            out.append((toks, lp.gather(1, __import__("torch").tensor(toks).unsqueeze(1)).squeeze(1).tolist(),
                        "stop" if toks[-1] == tok.eos_token_id else "length"))
        return out

    monkeypatch.setattr(comp, "_sample", sample)
    port, ready, stop = free_port(), threading.Event(), threading.Event()
    args = argparse.Namespace(model=long_tiny, host="127.0.0.1", port=port, served_model_name=None,
                              device="cpu", dtype="float32", threads=0, max_tokens=256, read_only=False,
                              log_requests=False)
    thread = threading.Thread(target=serve, args=(args, ready, stop), daemon=True)
    thread.start()
    assert ready.wait(60), "scirl serve did not come up"
    try:
        yield f"http://127.0.0.1:{port}", requests
    finally:
        stop.set()
        thread.join(60)


def test_agent_training_through_the_openai_engine(tmp_path, scripted_server, long_tiny, monkeypatch):
    import scirl.train.step as step
    from scirl.train.loop import run_training

    url, requests = scripted_server
    batches = []
    real = step.collect_batch
    monkeypatch.setattr(step, "collect_batch", lambda ctx: batches.append(real(ctx)) or batches[-1])
    run_training(load_config(None, small_overrides(tmp_path, **{
        **AGENT, "model.path": long_tiny, "rollout.engine": "openai", "rollout.base_url": url + "/v1", "rollout.sync_check_freq": 1,
        "rollout.sync_check_tol": TOL, "rollout.request_timeout": 60, "actor.lr": 1e-3, "rollout.n": 4,
        "rollout.val_n": 2, "rollout.max_new_tokens": 128, "rollout.agent.max_response_len": 400,
        "reward.name": "tests/helpers/agent_info_reward.py:score"})))

    tok = __import__("transformers").AutoTokenizer.from_pretrained(long_tiny)
    tok.chat_template = Path(TEMPLATE).read_text()
    call, answer = (tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in (CALL, ANSWER))
    tool = tool_response_ids(tok, [ToolResult("calculator", "7006652")], enable_thinking=True)
    # each training step: 2 prompts x n=4 on turn 1, then the 4 rows that called continue one request each
    train = [r for r in requests if r[1] == 4]
    assert len(train) == 2 * 2
    continued = [ids for ids, n in requests if n == 1 and "<tool_response>" in tok.decode(ids)]
    assert all(ids[-len(call) - len(tool):] == call + tool for ids in continued)
    assert len(batches) == 2
    for batch in batches:  # the mask the loss is given: model tokens 1, the tool turn 0
        traj = batch.traj
        for i, j in enumerate(traj.sample_index):
            expect = [1.0] * len(call) + [0.0] * len(tool) + [1.0] * len(answer) if j % 2 == 0 else [1.0] * len(answer)
            width = traj.response_mask.shape[1]
            assert traj.response_mask[i].tolist() == expect + [0.0] * (width - len(expect))
            assert traj.response_ids[i, :len(expect)].tolist() == (call + tool + answer if j % 2 == 0 else answer)
            assert (traj.rollout_logprobs[i][traj.response_mask[i] == 0] == 0).all()
            assert (traj.rollout_logprobs[i][traj.response_mask[i] == 1] < 0).all()
        assert batch.scores.tolist() == pytest.approx([0.4 if j % 2 == 0 else 0.2 for j in traj.sample_index])
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["agent/tool_calls_mean"] == 0.5 and r["agent/num_turns_mean"] == 1.5
        assert r["agent/tool_error_rate"] == 0.0 and r["agent/tool_latency/calculator"] > 0
        assert r["rollout/logprob_diff_mean"] < TOL  # the server's log-probs = the trainer's on model tokens
        assert 0 <= r["rollout/sync_logprob_diff"] < TOL  # the weights were pushed after the step
    report = json.loads((tmp_path / "t" / "eval" / "step_2.json").read_text())
    assert report["agent"]["overall"]["tool_call_rate"] == 0.5
