"""Training with rollout.engine=openai: a short run whose rollouts come from a `scirl serve` subprocess, the weights
pushed after every step (the server then scores like the trainer's final weights), the sync guard passing and
logged; with the push skipped, the guard stops the run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from conftest import small_overrides
from scirl.config import load_config
from scirl.errors import ScirlError
from scirl.rollout.openai_engine import OpenAIRolloutEngine
from scirl.train.logprobs import sequence_logprobs
from scirl.train.loop import run_training
from scirl.train.model_loading import load_model_and_tokenizer
from test_serve import http, running_server

REWARD = Path(__file__).parent / "helpers" / "length_reward.py"  # varies within a group: every step moves weights
TOL = 1e-4


def overrides(tmp_path, url: str, **extra) -> list[str]:
    return small_overrides(tmp_path, **{
        "rollout.engine": "openai", "rollout.base_url": url + "/v1", "rollout.sync_check_freq": 1,
        "rollout.sync_check_tol": TOL, "rollout.max_new_tokens": 16, "rollout.request_timeout": 120,
        "reward.name": f"{REWARD}:score", "actor.lr": 1e-3, "data.val_size": 4, "rollout.val_n": 2, **extra})


def server_logprobs(engine, model, ids: list[int], plen: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the server's, `model`'s) log-probs of ids[plen:] at T=1."""
    t = torch.tensor([ids])
    with torch.no_grad():
        ours, _ = sequence_logprobs(model, t[:, :plen], torch.ones_like(t[:, :plen]), t[:, plen:], 1.0, False)
    return engine.sequence_logprobs(ids, plen, 1.0), ours[0]


def test_training_run_samples_from_the_server_and_pushes_weights(tmp_path, tiny_model_and_tokenizer):
    initial, tok = tiny_model_and_tokenizer
    with running_server(tmp_path) as srv:
        cfg = load_config(None, overrides(tmp_path, srv.url))
        t0 = time.perf_counter()
        run_training(cfg)
        print(f"2-step openai-engine training run: {time.perf_counter() - t0:.1f} s")
        assert http("GET", srv.url + "/health")[1]["generated_tokens"] > 0  # the rollouts came from the server
        rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        for r in rows:  # the guard ran after each step's push, and passed
            assert 0 <= r["rollout/sync_logprob_diff"] < TOL and r["rollout/sync_logprob_diff_max"] < 10 * TOL
            assert r["rollout/logprob_diff_mean"] < TOL  # the server's log-probs vs the trainer's old log-probs
            print(f"step {r['step']}: sync_logprob_diff {r['rollout/sync_logprob_diff']:.2e}, "
                  f"logprob_diff_mean {r['rollout/logprob_diff_mean']:.2e}")
        # the server now holds the trained weights: not the initial model's, exactly the final checkpoint's
        (final_dir,) = [p.parent for p in (tmp_path / "t").glob("checkpoints/step_2/model/config.json")]
        final, _ = load_model_and_tokenizer(str(final_dir))
        engine = OpenAIRolloutEngine.from_config(cfg, tok)
        ids = tok.encode("Question: what is 6*7? Answer: \\boxed{42}", add_special_tokens=False)
        served, trained = server_logprobs(engine, final, ids, 8)
        _, before = server_logprobs(engine, initial, ids, 8)
        engine.close()
        assert (served - before).abs().max() > 1e-3 and (served - trained).abs().max() < TOL
    assert list((tmp_path / "t").glob(".weights-push-*")) == []  # the pushed files are removed


def test_with_the_push_skipped_the_guard_stops_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(OpenAIRolloutEngine, "update_weights", lambda self, state_dict: None)
    with running_server(tmp_path) as srv:
        cfg = load_config(None, overrides(tmp_path, srv.url))
        with pytest.raises(ScirlError, match=r"rollout weight sync check failed after step 1: the OpenAIRolloutEngine "
                                             r"scores the probe sequence .* above rollout.sync_check_tol=0.0001"):
            run_training(cfg)


def test_lora_run_pushes_the_merged_model_to_the_server(tmp_path):
    """A LoRA policy with server rollouts: the server holds the plain model and is pushed base + adapter merged after
    every step; its log-probs match the trainer's, and at the end it scores like `scirl export`'s merged folder."""
    lora = {"model.lora.rank": 8, "model.lora.alpha": 16, "model.lora.target_modules": "[q_proj,v_proj]",
            "actor.lr": 1e-2}
    with running_server(tmp_path) as srv:
        cfg = load_config(None, overrides(tmp_path, srv.url, **lora))
        run_training(cfg)
        rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
        for r in rows:
            assert r["rollout/sync_logprob_diff"] < TOL and r["rollout/logprob_diff_mean"] < TOL
        from scirl.cli import main

        assert main(["export", str(tmp_path / "t"), "-o", str(tmp_path / "merged")]) == 0
        merged, tok = load_model_and_tokenizer(str(tmp_path / "merged"))
        base, _ = load_model_and_tokenizer("builtin:tiny-qwen3")
        engine = OpenAIRolloutEngine.from_config(cfg, tok)
        ids = tok.encode("Question: what is 6*7? Answer: \\boxed{42}", add_special_tokens=False)
        served, want = server_logprobs(engine, merged, ids, 8)
        _, before = server_logprobs(engine, base, ids, 8)
        engine.close()
        assert (served - before).abs().max() > 1e-4 and (served - want).abs().max() < TOL
