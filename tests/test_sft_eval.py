"""The rollout evaluation of `scirl sft` (sft.rollout_eval=true): scirl train's validation on data.val before and
after training, in eval/step_<N>.json and summary.json; a resumed run takes 'before' from eval/step_0.json."""

from __future__ import annotations

import json
import shutil

from helpers.sft_data import sft_args
from scirl.cli import main

EVAL = {"sft.rollout_eval": True, "data.val": "tiny_physics", "data.val_size": 4, "rollout.val_n": 2,
        "rollout.val_temperature": 0.0, "rollout.max_new_tokens": 12, "reward.workers": 0, "sft.max_steps": 2,
        "trainer.save_freq": 1}


def test_rollout_eval_before_and_after(tmp_path):
    assert main(["sft", *sft_args(tmp_path, **{**EVAL, "trainer.run_name": "full"})]) == 0
    full = tmp_path / "full"
    assert sorted(p.name for p in (full / "eval").glob("step_*.json")) == ["step_0.json", "step_2.json"]
    summary = json.loads((full / "summary.json").read_text())
    for when, step in (("before", 0), ("after", 2)):
        report = summary[when]
        assert report["step"] == step and report["n"] == 2 and report["num_prompts"] == 4
        assert report == json.loads((full / "eval" / f"step_{step}.json").read_text())
        assert 0.0 <= report["metrics"]["mean@2"] <= 1.0
    samples = (full / "eval" / "step_2_samples.jsonl").read_text().splitlines()
    assert len(samples) == 8  # 4 prompts x 2 samples, graded
    # greedy: the trained weights answer differently from the initial ones
    before = [json.loads(s)["response"] for s in (full / "eval" / "step_0_samples.jsonl").read_text().splitlines()]
    after = [json.loads(s)["response"] for s in samples]
    assert before != after
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_2")
    for name in ("summary.json", "eval/step_2.json", "eval/step_2_samples.jsonl"):
        (part / name).unlink()
    assert main(["sft", *sft_args(tmp_path, **{**EVAL, "trainer.run_name": "part"})]) == 0
    resumed = json.loads((part / "summary.json").read_text())
    assert resumed["before"] == summary["before"] and resumed["after"]["metrics"] == summary["after"]["metrics"]
