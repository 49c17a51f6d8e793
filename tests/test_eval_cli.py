"""`scirl eval`: end to end on the bundled tiny model, --from-samples recomputation and regrade, and bad input."""

import json
import subprocess
import sys
from math import comb

import numpy as np
import pytest

from scirl.eval.command import main as eval_main
from scirl.errors import ScirlError
from tests.conftest import REPO, SHARED_DATA

ROW_KEYS = {"prompt_id", "data_source", "sample", "response", "pred", "score"}


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "scirl.cli", "eval", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2",
                                                       "PYTHONPATH": str(REPO / "src")})


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_report_and_rows(out, samples, n, sources, prompts_per_source):
    report = json.loads(out.read_text())
    assert report["n"] == n and report["num_prompts"] == sum(prompts_per_source)
    assert list(report["by_source"]) == sources
    assert report["prompts_by_source"] == dict(zip(sources, prompts_per_source))
    ks = [k for k in (1, 2, 4, 8, 16) if k <= n]
    assert {f"mean@{n}", f"best@{n}", f"maj@{n}", *(f"pass@{k}" for k in ks)} <= set(report["metrics"])
    rows = _rows(samples)
    assert len(rows) == n * report["num_prompts"]
    assert all(ROW_KEYS <= set(r) for r in rows)
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r["sample"])
    assert all(sorted(v) == list(range(n)) for v in by_prompt.values())
    mean = sum(r["score"] for r in rows) / len(rows)
    assert report["metrics"][f"mean@{n}"] == pytest.approx(mean)  # equal counts per prompt: plain mean
    return report, rows


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
def test_eval_aime24_amc23_end_to_end(tmp_path):
    out = tmp_path / "res" / "eval.json"
    proc = run_cli("--model", "builtin:tiny-qwen3", "--data", "aime24,amc23", "--n", "4", "--limit", "5",
                   "--max-new-tokens", "16", "--data-dir", str(SHARED_DATA), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    samples = tmp_path / "res" / "eval.samples.jsonl"  # named after -o
    report, rows = _check_report_and_rows(out, samples, 4, ["aime24", "amc23"], [5, 5])
    assert report["samples_file"] == str(samples)
    assert report["reward"] == {"aime24": "math", "amc23": "math"}
    assert report["sampling"]["temperature"] == 0.6 and report["sampling"]["top_p"] == 0.95
    assert "aime24" in proc.stdout and "mean@4" in proc.stdout  # the table
    assert all(r["reward"] == "math" and isinstance(r["answer"], str) and r["answer"] for r in rows)
    # recompute from the samples file: identical metrics, no generation
    again = tmp_path / "again.json"
    proc = run_cli("--from-samples", str(samples), "-o", str(again), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    re_report = json.loads(again.read_text())
    assert re_report["metrics"] == report["metrics"] and re_report["by_source"] == report["by_source"]
    # regrade with each row's own (dataset) reward: the same grader, so the same scores and metrics
    proc = run_cli("--from-samples", str(samples), "--reward", "dataset", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    regraded = json.loads((tmp_path / "res" / "eval.regraded.json").read_text())
    assert regraded["regraded_with"] == "dataset" and regraded["metrics"] == report["metrics"]
    assert [r["score"] for r in _rows(tmp_path / "res" / "eval.regraded.samples.jsonl")] == [r["score"] for r in rows]


def test_eval_tiny_task_grades_real_answers(tmp_path):
    """No shared data needed: the synthetic task, where the tiny model is right some of the time."""
    out = tmp_path / "tiny.json"
    code = eval_main(["--model", "builtin:tiny-qwen3", "--data", "tiny_physics", "--n", "4", "--limit", "12",
                      "--temperature", "1.0", "--top-p", "1.0", "--max-new-tokens", "48", "--workers", "0",
                      "-o", str(out), "--samples", str(tmp_path / "s.jsonl")])
    assert code == 0
    report, rows = _check_report_and_rows(out, tmp_path / "s.jsonl", 4, ["tiny_physics"], [12])
    assert 0.05 < report["metrics"]["mean@4"] < 0.95  # held-out mean@8 of the bundled model is 0.32
    assert report["reward"] == {"tiny_physics": "boxed_numeric"}
    assert any(r["pred"] is not None for r in rows)
    # every score by hand: 1 exactly when the boxed number is the integer answer
    for r in rows:
        right = r["pred"] is not None and r["pred"].strip().lstrip("-").isdigit() and int(r["pred"]) == int(r["answer"])
        assert r["score"] == (1.0 if right else 0.0) and r["correct"] == right
    # the metrics by hand from the per-prompt correct counts c of n = 4
    counts = {}
    for r in rows:
        counts[r["prompt_id"]] = counts.get(r["prompt_id"], 0) + r["correct"]
    cs = list(counts.values())
    assert 0 < sum(cs) < 48 and len(set(cs)) > 1
    m = report["metrics"]
    assert m["pass@1"] == pytest.approx(sum(c / 4 for c in cs) / 12)
    assert m["pass@2"] == pytest.approx(sum(1 - comb(4 - c, 2) / comb(4, 2) for c in cs) / 12)
    assert m["pass@4"] == pytest.approx(sum(c > 0 for c in cs) / 12)
    assert m["mean@4"] == pytest.approx(sum(cs) / 48)


def _write_samples(path, counts_correct):
    """One prompt per (n, c): c correct samples (score 1, pred '1') then n - c wrong ones (score 0, pred '0')."""
    rows = []
    for p, (n, c) in enumerate(counts_correct):
        rows += [{"prompt_id": f"p{p}", "data_source": "hand", "sample": j, "response": "",
                  "pred": "1" if j < c else "0", "score": 1.0 if j < c else 0.0} for j in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _bootstrap_by_hand(c, n=16, draws=1000, seed=42):
    """best@n and maj@n of verl's bootstrap for c correct (pred '1', score 1) then n - c wrong (pred '0', score 0),
    draw by draw: the draws are np.random.seed(seed) + one choice(n, n) per draw, as verl does."""
    np.random.seed(seed)
    best = maj = 0
    for _ in range(draws):
        idx = [int(i) for i in np.random.choice(n, size=n, replace=True)]
        votes = ["1" if i < c else "0" for i in idx]
        best += "1" in votes
        ones, zeros = votes.count("1"), votes.count("0")
        maj += ones > zeros or (ones == zeros and votes[0] == "1")  # a tie goes to the pred drawn first
    return best / draws, maj / draws


def test_from_samples_worked_numbers(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    _write_samples(f, [(16, 1), (16, 4)])
    assert eval_main(["--from-samples", str(f), "-o", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())["metrics"]
    # pass@k = 1 - C(16-c, k) / C(16, k), written out
    assert m["pass@1"] == pytest.approx((1 / 16 + 4 / 16) / 2)
    assert m["pass@2"] == pytest.approx(((1 - 105 / 120) + (1 - 66 / 120)) / 2)
    assert m["pass@4"] == pytest.approx(((1 - 1365 / 1820) + (1 - 495 / 1820)) / 2)  # 0.25 and 0.72802
    assert m["pass@8"] == pytest.approx(((1 - 6435 / 12870) + (1 - 495 / 12870)) / 2)  # 0.5 and 0.96154
    assert m["pass@16"] == 1.0
    assert m["mean@16"] == pytest.approx((1 / 16 + 4 / 16) / 2)
    assert m["std@16"] == pytest.approx(((1 / 16 * 15 / 16) ** 0.5 + (4 / 16 * 12 / 16) ** 0.5) / 2)
    (best1, maj1), (best4, maj4) = _bootstrap_by_hand(1), _bootstrap_by_hand(4)
    assert round(best1, 3) == 0.656  # verl's best@16 for 1 correct of 16 (seed 42): not pass@16 = 1
    assert m["best@16"] == pytest.approx((best1 + best4) / 2, abs=1e-12)
    assert m["maj@16"] == pytest.approx((maj1 + maj4) / 2, abs=1e-12)
    assert "hand" in capsys.readouterr().out


def test_from_samples_mixed_n_is_handled_and_said(tmp_path, capsys):
    f = tmp_path / "s.jsonl"
    _write_samples(f, [(16, 4), (8, 2), (4, 1)])
    assert eval_main(["--from-samples", str(f)]) == 0
    report = json.loads((tmp_path / "s.recomputed.json").read_text())
    assert report["n"] == 4 and "pass@8" not in report["metrics"]
    assert "truncated to their first 4 samples" in report["note"]
    assert "note:" in capsys.readouterr().out
    # the first 4 samples of each prompt: c = 4, 2, 1 of 4
    assert report["metrics"]["pass@1"] == pytest.approx((1.0 + 0.5 + 0.25) / 3)


def test_from_samples_bad_rows_name_the_line(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"prompt_id": "a", "data_source": "x", "sample": 0, "score": 1}\n\n{"prompt_id": "a"}\n')
    with pytest.raises(ScirlError, match=r"s.jsonl line 3: missing field\(s\) data_source, sample, score"):
        eval_main(["--from-samples", str(f)])
    f.write_text('{"prompt_id": "a", "data_source": "x", "sample": 0, "score": 1}\n{oops\n')
    with pytest.raises(ScirlError, match="line 2: invalid JSON"):
        eval_main(["--from-samples", str(f)])


def test_bad_input_one_line_exit_2(tmp_path):
    proc = run_cli("--model", "builtin:tiny-qwen3", "--data", "aime24,amc_23", "--n", "2", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown dataset 'amc_23'" in lines[0] and "Did you mean 'amc23'" in lines[0]
    assert all(name in lines[0] for name in ("aime25", "gsm8k", "phybench", "olympiadbench_physics"))
    bad = tmp_path / "mine.jsonl"
    bad.write_text('{"q": "1+1?", "final": "2"}\n{"q": "2+2?", "final": "4"}\n{"q": "3+3?"}\n{"q": "x"}\n')
    proc = run_cli("--model", "builtin:tiny-qwen3", "--data", str(bad), "--field", "prompt=q",
                   "--field", "answer=final", cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1
    assert "'final' missing" in lines[0] and "mine.jsonl line 3" in lines[0]
    proc = run_cli("--model", "/no/such/model", "--data", "tiny_physics", cwd=tmp_path)
    assert proc.returncode == 2 and "/no/such/model" in proc.stderr
