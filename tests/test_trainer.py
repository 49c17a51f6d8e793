"""End to end on the tiny model: run folder contents, metrics, checkpoints, bitwise resume, non-finite skip,
and gradient accumulation that matches one big batch."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_overrides
from scirl.algos import POLICY_LOSSES, register_policy_loss
from scirl.config import load_config
from scirl.train.loop import run_training

REQUIRED_METRICS = [
    "reward/mean", "reward/acc", "adv/mean", "adv/std", "actor/pg_loss", "actor/pg_clipfrac", "actor/entropy",
    "response/length_mean", "response/length_max", "response/truncated_frac", "actor/grad_norm", "actor/lr",
    "timing/rollout", "timing/reward", "timing/update",
]


def test_run_folder_metrics_eval_and_checkpoint(tmp_path, monkeypatch):
    from scirl.rewards import RewardPool

    scored = []  # every training batch's per-sample scores, as the reward pool returned them
    real_score = RewardPool.score

    def recording_score(self, items):
        results, stats = real_score(self, items)
        scored.append([r.score for r in results])
        return results, stats

    monkeypatch.setattr(RewardPool, "score", recording_score, raising=True)
    cfg = load_config(None, small_overrides(tmp_path, **{"trainer.save_freq": 1, "trainer.total_steps": 2}))
    summary = run_training(cfg)
    run = tmp_path / "t"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in REQUIRED_METRICS:
        assert key in rows[0], key
    # the values hold, not just the keys: score calls are val(8x4), step 1 (4x4), step 2 (4x4), val(8x4)
    assert [len(s) for s in scored] == [32, 16, 16, 32]
    for row, scores, lr in zip(rows, scored[1:3], (5e-5, 1e-4)):  # lr 1e-4 after 2 warmup steps
        assert row["reward/mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
        assert row["reward/acc"] == pytest.approx(sum(s >= 0.5 for s in scores) / len(scores), abs=1e-6)
        assert 1 <= row["response/length_mean"] <= row["response/length_max"] <= 40  # rollout.max_new_tokens
        assert row["actor/lr"] == pytest.approx(lr) and row["actor/grad_norm"] > 0
    for step, scores in ((0, scored[0]), (2, scored[3])):
        report = json.loads((run / "eval" / f"step_{step}.json").read_text())
        assert report["n"] == 4 and report["num_prompts"] == 8
        assert {"mean@4", "pass@1", "pass@4", "best@4", "maj@4"} <= set(report["metrics"])
        assert report["metrics"]["mean@4"] == pytest.approx(sum(scores) / 32, abs=1e-6)
    from scirl.train.model_loading import resolve_model_path

    start = load_file(f"{resolve_model_path('builtin:tiny-qwen3')}/model.safetensors")
    end = load_file(run / "checkpoints" / "step_2" / "model" / "model.safetensors")
    assert sum(not torch.equal(start[k], end[k]) for k in start) >= len(start) // 2  # training moved the weights
    saved = json.loads((run / "summary.json").read_text())
    assert saved["steps"] == 2 and saved["before"]["metrics"] == summary["before"]["metrics"]
    assert saved["wall_seconds"] > 0
    assert (run / "config.yaml").is_file()
    # checkpoints are loadable HF folders; no temp folder is left behind
    from transformers import AutoModelForCausalLM

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_1", "step_2"]
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_2" / "model")
    assert model.config.model_type == "qwen3"
    # the trainer state sits beside the HF folder, not in it (the folder uploads as is)
    assert (run / "checkpoints" / "step_2" / "trainer_state.pt").is_file()
    assert not (run / "checkpoints" / "step_2" / "model" / "trainer_state.pt").exists()
    assert saved["status"] == "finished"


def test_resume_is_bitwise_identical(tmp_path):
    extra = {"trainer.save_freq": 2, "trainer.total_steps": 4, "trainer.test_freq": 2, "actor.lr": 1e-3}
    run_training(load_config(None, small_overrides(tmp_path, **{**extra, "trainer.run_name": "full"})))
    full = tmp_path / "full"
    # "stop" after step 2: a copy of the run folder as it stood then
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_4")
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n" + '{"step": 3, "partial": true}\n')
    summary = run_training(load_config(None, small_overrides(tmp_path, **{**extra, "trainer.run_name": "part",
                                                                          "trainer.resume": "auto"})))
    assert summary["resumed_from_step"] == 2
    a = load_file(full / "checkpoints" / "step_4" / "model" / "model.safetensors")
    b = load_file(part / "checkpoints" / "step_4" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    first = load_file(full / "checkpoints" / "step_2" / "model" / "model.safetensors")
    assert any(not torch.equal(first[k], a[k]) for k in a)  # training did move the weights
    steps = [json.loads(x)["step"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    # the resumed step logs the same numbers as the uninterrupted one (wall-clock timings aside)
    def last(run):
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[3])
        return {k: v for k, v in row.items() if not k.startswith("timing/")}

    assert last(full) == last(part)


def test_non_finite_loss_is_skipped_and_counted(tmp_path):
    @register_policy_loss("nan_for_test")
    def nan_loss(log_prob, old_log_prob, advantages, response_mask, *args, **kwargs):
        return log_prob * float("nan"), {}

    try:
        cfg = load_config(None, small_overrides(tmp_path, **{"actor.policy_loss": "nan_for_test"}))
        summary = run_training(cfg)
    finally:
        POLICY_LOSSES.pop("nan_for_test")
    assert summary["skipped_updates"] == 2
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["actor/skipped_updates"] for r in rows] == [1.0, 1.0]
    # the weights were never touched
    from scirl.train.model_loading import resolve_model_path

    start = load_file(f"{resolve_model_path('builtin:tiny-qwen3')}/model.safetensors")
    end = load_file(tmp_path / "t" / "checkpoints" / "step_2" / "model" / "model.safetensors")
    assert all(torch.equal(start[k], end[k]) for k in start)


def test_micro_batches_accumulate_to_the_full_batch_gradient(tmp_path, tiny_model_and_tokenizer):
    from scirl.data.prompts import tokenize_prompts
    from scirl.data.synthetic import make_problems
    from scirl.rollout.base import SamplingParams
    from scirl.rollout.hf_engine import HFRolloutEngine
    from scirl.train.actor import Actor

    model, tok = tiny_model_and_tokenizer
    _, prompt_ids, _ = tokenize_prompts(make_problems("train", 4, seed=3), tok, 256, True, "x")
    torch.manual_seed(0)
    traj = HFRolloutEngine(model, tok).generate(prompt_ids, list("abcd"), SamplingParams(n=4, max_new_tokens=32))
    adv = torch.randn(len(traj), 1) * traj.response_mask
    grads = []
    for micro in (16, 3):
        cfg = load_config(None, small_overrides(tmp_path, **{"actor.ppo_micro_batch_size": micro, "actor.lr": 0.0}))
        actor = Actor(model, cfg)
        actor.update(traj, adv)  # lr 0: weights unchanged, gradients kept for inspection
        grads.append(torch.cat([p.grad.flatten() for p in actor.params if p.grad is not None]).clone())
        actor.optimizer.zero_grad()
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
