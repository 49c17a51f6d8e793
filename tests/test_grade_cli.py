"""`scirl grade`: JSONL in, graded JSONL out, summary lines, malformed rows reported by line number and skipped."""

import json
import subprocess
import sys

import pytest

from scirl.rewards.grade import default_output


def run_grade(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "scirl.cli", "grade", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def summary(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_boxed_numeric_with_malformed_rows(tmp_path):
    good = [
        {"response": "so \\boxed{12}", "answer": "12", "id": "a"},
        {"response": "so \\boxed{13}", "answer": "12", "extra": [1, 2]},
        {"response": "\\boxed{0.5}", "answer": 0.5},
        {"response": "no box", "answer": 7},
    ]
    lines = [
        json.dumps(good[0]),
        "{not json",  # line 2
        json.dumps(good[1]),
        "[1, 2, 3]",  # line 4: not an object
        "",  # blank lines are ignored, not malformed
        json.dumps({"answer": "1"}),  # line 6: no response
        json.dumps(good[2]),
        json.dumps({"response": "x"}),  # line 8: no answer
        json.dumps({"response": 5, "answer": "1"}),  # line 9: response not a string
        json.dumps(good[3]),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run_grade("--reward", "boxed_numeric", str(src), "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    for n in (2, 4, 6, 8, 9):
        assert sum(f"in.jsonl:{n}:" in line for line in err) == 1, proc.stderr
    assert len(err) == 5 and "Traceback" not in proc.stderr
    s = summary(proc.stdout)
    assert s["rows"] == "4" and s["skipped"] == "5"
    assert float(s["accuracy"]) == pytest.approx(0.5) and float(s["mean_score"]) == pytest.approx(0.5)
    assert s["timeouts"] == "0" and s["errors"] == "0" and s["throughput"].endswith("rows/s")
    out = read_jsonl(tmp_path / "in.graded.jsonl")
    assert s["output"] == str(tmp_path / "in.graded.jsonl")
    assert [r["score"] for r in out] == [1.0, 0.0, 1.0, 0.0]
    assert [r["pred"] for r in out] == ["12", "13", "0.5", None]
    for row, graded in zip(good, out):
        assert {k: graded[k] for k in row} == row  # written back unchanged, plus the grade
        assert set(graded["components"]) == {"acc", "has_box"}


def test_mcq_with_choices_and_output_path(tmp_path):
    choices = {"text": ["50 pC", "56 pC", "60 pC", "64 pC"], "label": ["A", "B", "C", "D"]}
    rows = [
        {"response": "<answer>B</answer>", "answer": "B", "choices": choices},
        {"response": "56 pC", "answer": "B", "choices": choices},
        {"response": "\\boxed{C}", "answer": "B", "choices": choices},
        {"response": "<answer>Yes</answer>", "answer": "Yes"},
        {"response": "<answer>A, C</answer>", "answer": "AC"},
    ]
    src = tmp_path / "mcq.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dst = tmp_path / "sub" / "graded.jsonl"
    proc = run_grade("--reward", "mcq", str(src), "-o", str(dst), "--workers", "1", "--timeout", "5")
    assert proc.returncode == 0, proc.stderr
    s = summary(proc.stdout)
    assert s["rows"] == "5" and s["skipped"] == "0" and float(s["accuracy"]) == pytest.approx(0.8)
    out = read_jsonl(dst)
    assert [r["pred"] for r in out] == ["B", "B", "C", "True", "AC"]
    assert [r["components"]["acc"] for r in out] == [1.0, 1.0, 0.0, 1.0, 1.0]
    assert all("format_ok" in r["components"] for r in out)


def test_info_json_reaches_the_reward_and_rows_override_it(tmp_path):
    rows = [{"response": "\\boxed{41}", "answer": "42", "rel_tol": 1e-6},  # the row's value wins over --info
            {"response": "\\boxed{41}", "answer": "42"}]
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    proc = run_grade("--reward", "boxed_numeric", str(src), "--info", '{"rel_tol": 0.05}', "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    assert [r["score"] for r in read_jsonl(tmp_path / "t.graded.jsonl")] == [0.0, 1.0]


def test_many_malformed_rows_first_20_then_a_count(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text("".join("oops\n" for _ in range(25)) + json.dumps({"response": "\\boxed{1}", "answer": 1}) + "\n")
    proc = run_grade("--reward", "boxed_numeric", str(src), "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.splitlines()
    assert len(err) == 21 and "bad.jsonl:20:" in err[19] and "5 more" in err[20]
    assert summary(proc.stdout)["skipped"] == "25"


def test_errors_are_counted_and_summarised(tmp_path):
    src = tmp_path / "e.jsonl"
    src.write_text(json.dumps({"response": "\\boxed{1}", "answer": "not a number"}) + "\n")
    proc = run_grade("--reward", "boxed_numeric", str(src), "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert summary(proc.stdout)["errors"] == "1"
    assert "not a number" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--reward", "mcqq", "IN"], "unknown reward 'mcqq'"),
        (["--reward", "mcq", "no_such_file.jsonl"], "no_such_file.jsonl"),
        (["IN"], "--reward"),
        (["--reward", "mcq", "IN", "--workers", "many"], "--workers"),
        (["--reward", "mcq", "IN", "--info", "{bad"], "--info"),
        (["--reward", "mcq", "IN", "--info", "[1]"], "--info"),
        (["--reward", "mcq", "IN", "--timeout", "0"], "timeout"),
    ],
)
def test_user_errors_one_line_exit_2(tmp_path, args, expected):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"response": "B", "answer": "B"}) + "\n")
    args = [str(src) if a == "IN" else a for a in args]
    proc = run_grade(*args, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("scirl: error:") and expected in lines[0], proc.stderr


def test_help_and_default_output_name(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scirl.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "grade" in proc.stdout and "train" in proc.stdout
    proc = run_grade("--help")
    assert proc.returncode == 0 and "--reward" in proc.stdout
    assert default_output(tmp_path / "x.jsonl") == tmp_path / "x.graded.jsonl"
    assert default_output(tmp_path / "x.txt") == tmp_path / "x.txt.graded.jsonl"


@pytest.mark.parametrize(
    "content, why",
    [("", "the file has no rows"), ("\n\n", "the file has no rows"),
     ("oops\n" + json.dumps({"answer": "1"}) + "\n", "all 2 rows are malformed, see above")],
    ids=["empty", "blank", "all_malformed"],
)
def test_no_gradable_row_exits_2_and_writes_nothing(tmp_path, content, why):
    """An accuracy of nan with exit 0 would pass for a result in a script: this is an error naming the file."""
    src = tmp_path / "nothing.jsonl"
    src.write_text(content)
    proc = run_grade("--reward", "boxed_numeric", str(src), "--workers", "0")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    last = proc.stderr.splitlines()[-1]
    assert last == f"scirl: error: grade: {src}: no gradable row ({why}); nothing written", proc.stderr
    assert "accuracy" not in proc.stdout and not (tmp_path / "nothing.graded.jsonl").exists()
