"""`scirl eval --from-samples FILE --reward NAME`: regrade every row (its reference answer and grader are in the row)
and recompute the metrics; without --reward the stored scores are used as they are."""

import json

import pytest

from scirl.errors import ScirlError
from scirl.eval.command import main as eval_main


def _row(pid, j, response, answer, score, reward=None, **extra):
    return {"prompt_id": pid, "data_source": extra.pop("source", "hand"), "sample": j, "response": response,
            "pred": None, "score": score, "correct": score >= 0.5, "answer": answer, "answer_type": "numeric",
            "reward": reward, **extra}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_regrade_with_a_named_reward_rescores_every_row(tmp_path):
    # stored scores are all 0 (a broken grader); the answers say otherwise
    rows = [_row("a", 0, "so \\boxed{4}", "4", 0.0), _row("a", 1, "\\boxed{5}", "4", 0.0),
            _row("b", 0, "\\boxed{12}", "12", 0.0), _row("b", 1, "\\boxed{12.0}", "12", 0.0)]
    f = _write(tmp_path / "run.samples.jsonl", rows)
    assert eval_main(["--from-samples", str(f)]) == 0  # no --reward: the scores as stored
    assert json.loads((tmp_path / "run.recomputed.json").read_text())["metrics"]["mean@2"] == 0.0
    assert eval_main(["--from-samples", str(f), "--reward", "boxed_numeric", "--workers", "1"]) == 0
    report = json.loads((tmp_path / "run.regraded.json").read_text())
    m = report["metrics"]
    # a: 1 of 2 right, b: 2 of 2 right
    assert m["mean@2"] == pytest.approx((0.5 + 1.0) / 2) and m["pass@1"] == pytest.approx(0.75)
    assert m["pass@2"] == 1.0
    assert report["regraded_with"] == "boxed_numeric" and report["reward_errors"] == 0
    assert report["samples_file"] == str(tmp_path / "run.regraded.samples.jsonl")
    out = _read(tmp_path / "run.regraded.samples.jsonl")
    assert [(r["score"], r["pred"], r["correct"]) for r in out] == [
        (1.0, "4", True), (0.0, "5", False), (1.0, "12", True), (1.0, "12.0", True)]
    assert _read(f) == rows  # the input is untouched


def test_regrade_dataset_uses_each_rows_own_reward_info_and_metadata(tmp_path):
    rows = [
        # OlympiadBench-style tolerance from reward_info: |3.1 - 3.14| = 0.04 <= 1.01 * 0.05
        _row("ob", 0, "\\boxed{3.1}", "3.14", 0.0, "math", source="ob", reward_info={"precision": 0.05}),
        # mcq reads the option texts from meta.choices: "blue" is option B
        _row("mc", 0, "The answer is blue.", "B", 0.0, "mcq", source="mc", meta={"choices": ["red", "blue"]}),
        # a composite worth 0.5 sits exactly on the dataset's 0.5 threshold: correct
        _row("half", 0, "\\boxed{9}", "9", 0.0, "composite", source="half", meta={"correct_threshold": 0.5},
             reward_info={"components": [{"name": "boxed_numeric", "weight": 0.5}]}),
        # ... and 0.5 under a 1.0 threshold is not
        _row("strict", 0, "\\boxed{9}", "9", 0.0, "composite", source="strict", meta={"correct_threshold": 1.0},
             reward_info={"components": [{"name": "boxed_numeric", "weight": 0.5}]}),
    ]
    f = _write(tmp_path / "s.jsonl", rows)
    assert eval_main(["--from-samples", str(f), "--reward", "dataset", "--workers", "0", "-o",
                      str(tmp_path / "ds.json")]) == 0
    out = _read(tmp_path / "ds.samples.jsonl")
    assert [(r["score"], r["correct"]) for r in out] == [(1.0, True), (1.0, True), (0.5, True), (0.5, False)]
    report = json.loads((tmp_path / "ds.json").read_text())
    assert report["by_source"]["half"]["pass@1"] == 1.0 and report["by_source"]["strict"]["pass@1"] == 0.0
    assert report["metrics"]["pass@1"] == pytest.approx(3 / 4)
    # a named reward gets no per-row reward_info / choices it does not read: math without the tolerance
    assert eval_main(["--from-samples", str(f), "--reward", "math", "--workers", "0", "-o",
                      str(tmp_path / "math.json")]) == 0
    assert _read(tmp_path / "math.samples.jsonl")[0]["score"] == 0.0


def test_regrade_refuses_rows_it_cannot_regrade(tmp_path):
    old = {"prompt_id": "a", "data_source": "x", "sample": 0, "response": "\\boxed{1}", "pred": "1", "score": 1.0}
    f = _write(tmp_path / "old.jsonl", [old, {**old, "sample": 1}])
    with pytest.raises(ScirlError, match=r"old.jsonl line 1: the reference 'answer' is missing .*drop --reward"):
        eval_main(["--from-samples", str(f), "--reward", "math", "--workers", "0"])
    assert not (tmp_path / "old.regraded.json").exists()
    assert eval_main(["--from-samples", str(f)]) == 0  # recomputing the stored scores still works
    assert json.loads((tmp_path / "old.recomputed.json").read_text())["metrics"]["pass@1"] == 1.0
    # --reward dataset needs each row's own reward (rows of a local file have none)
    f = _write(tmp_path / "local.jsonl", [_row("a", 0, "\\boxed{1}", "1", 1.0, "math"), _row("b", 0, "x", "1", 0.0)])
    with pytest.raises(ScirlError, match=r"local.jsonl line 2: the row names no reward of its own"):
        eval_main(["--from-samples", str(f), "--reward", "dataset", "--workers", "0"])
    # the regraded rows never overwrite a file
    (tmp_path / "local.regraded.samples.jsonl").write_text("keep\n")
    with pytest.raises(ScirlError, match=r"local.regraded.samples.jsonl already exists"):
        eval_main(["--from-samples", str(f), "--reward", "math", "--workers", "0"])
    assert (tmp_path / "local.regraded.samples.jsonl").read_text() == "keep\n"
    with pytest.raises(ScirlError, match=r"would overwrite"):
        eval_main(["--from-samples", str(f), "--reward", "math", "--samples", str(f)])
    with pytest.raises(ScirlError, match="unknown reward 'mathh'"):
        eval_main(["--from-samples", str(f), "--reward", "mathh", "-o", str(tmp_path / "z.json")])
