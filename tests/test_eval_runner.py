"""Validation internals: `correct` on the dataset's threshold, regradable rows, atomic eval files of a training run."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from scirl.data.sample import Sample
from scirl.eval.runner import evaluate, generate_and_grade, write_eval
from scirl.rewards import RewardPool
from scirl.rollout.base import SamplingParams

# 0.5 for any \boxed{}, + 0.5 when it holds the answer: scores 0, 0.5 and 1.0 land on the thresholds 0.5 and 1.0
HALF_AND_HALF = {"components": [{"name": "format_boxed", "weight": 0.5}, {"name": "boxed_numeric", "weight": 0.5}]}


class ScriptedEngine:
    """A rollout engine that answers with fixed texts: texts[prompt index][sample index]."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, uids, sampling):
        rows = [(u, j) for u in uids for j in range(sampling.n)]
        return SimpleNamespace(uid=[u for u, _ in rows], sample_index=[j for _, j in rows],
                               texts=[self.texts[int(u)][j] for u, j in rows],
                               truncated=torch.tensor([j == 1 for _, j in rows]),
                               response_mask=torch.ones(len(rows), 3))


def _samples():
    return [Sample("p0", [{"role": "user", "content": "2+2?"}], "4", data_source="easy", reward="boxed_numeric",
                   metadata={"correct_threshold": 0.5, "solution": "not stored"}),
            Sample("p1", [{"role": "user", "content": "3+4?"}], "7", data_source="strict", reward="math",
                   reward_info={"precision": 0.01}, metadata={"correct_threshold": 1.0, "choices": ["6", "7"]})]


TEXTS = [["\\boxed{5}", "no box"],  # 0.5 (on the 0.5 threshold: correct), 0.0
         ["\\boxed{7}", "\\boxed{8}"]]  # 1.0 (on the 1.0 threshold: correct), 0.5 (under it)


def test_correct_on_the_dataset_threshold():
    with RewardPool("composite", workers=0) as pool:
        records, stats = generate_and_grade(ScriptedEngine(TEXTS), pool, _samples(), [[1], [2]],
                                            SamplingParams(2, 1.0, 1.0, 8), seed=0, reward_info=HALF_AND_HALF)
    got = [(r["prompt_id"], r["sample"], r["score"], r["correct"]) for r in records]
    assert got == [("p0", 0, 0.5, True), ("p0", 1, 0.0, False), ("p1", 0, 1.0, True), ("p1", 1, 0.5, False)]
    assert stats["truncated"] == 2 and stats["response_tokens"] == 12


def test_evaluate_rows_carry_what_a_regrade_needs():
    with RewardPool("composite", workers=0) as pool:
        report, rows = evaluate(ScriptedEngine(TEXTS), pool, _samples(), [[1], [2]], SamplingParams(2, 1.0, 1.0, 8),
                                "toy", seed=0, reward_info=HALF_AND_HALF)
    assert report["metrics"]["pass@1"] == 0.5 and report["metrics"]["mean@2"] == pytest.approx((0.25 + 0.75) / 2)
    p0, p0b, p1, p1b = rows
    assert p0["answer"] == "4" and p0["reward"] == "boxed_numeric" and p0["meta"] == {"correct_threshold": 0.5}
    assert "reward_info" not in p0 and p0["question"] == "2+2?" and "question" not in p0b  # once per prompt
    assert p1["reward"] == "math" and p1["reward_info"] == {"precision": 0.01}
    assert p1["meta"] == {"choices": ["6", "7"], "correct_threshold": 1.0} and p1b["answer"] == "7"


def test_write_eval_is_atomic(tmp_path, monkeypatch):
    rows = [{"prompt_id": "p", "data_source": "s", "sample": 0, "score": 1.0}]
    path = write_eval(tmp_path, 3, {"metrics": {"pass@1": 1.0}}, rows)
    assert path == tmp_path / "eval" / "step_3.json"
    assert json.loads(path.read_text()) == {"metrics": {"pass@1": 1.0}}
    samples = tmp_path / "eval" / "step_3_samples.jsonl"
    assert [json.loads(line) for line in samples.read_text().splitlines()] == rows

    def crash(src, dst):  # the process dies after writing the temporary file, before the rename
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        write_eval(tmp_path, 3, {"metrics": {"pass@1": 0.0}}, rows * 2)
    assert json.loads(path.read_text()) == {"metrics": {"pass@1": 1.0}}  # the old files, whole
    assert [json.loads(line) for line in samples.read_text().splitlines()] == rows
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["step_3.json", "step_3_samples.jsonl"]
