"""`scirl eval` streams its rows and resumes: a real `scirl eval` killed (SIGKILL) or interrupted (SIGINT) after its
first batch keeps the graded rows, refuses to overwrite them without --resume, and `--resume` ends with exactly the
samples and metrics of an uninterrupted run. Two evals into one folder keep separate samples files."""

import json
import signal
import subprocess
import sys

import pytest

from scirl.errors import ScirlError
from scirl.eval.command import main as eval_main
from scirl.procs import popen
from tests.conftest import REPO

TOTAL, BATCH, N = 40, 2, 2  # 20 batches: the child is far from done when the first batch's line arrives
ARGS = ["--model", "builtin:tiny-qwen3", "--data", "tiny_physics", "--n", str(N), "--limit", str(TOTAL),
        "--batch-prompts", str(BATCH), "--temperature", "1.0", "--top-p", "1.0", "--max-new-tokens", "24",
        "--workers", "0"]
ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO / "src")}
CLI = [sys.executable, "-m", "scirl.cli", "eval"]
RUN_ONLY = ("wall_seconds", "samples_file")  # the only keys allowed to differ between two runs


def _run(*args, cwd):
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=ENV)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its eval JSON and the text of its samples file."""
    d = tmp_path_factory.mktemp("reference")
    proc = _run(*ARGS, "-o", str(d / "ref.json"), cwd=d)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((d / "ref.json").read_text())
    assert report["num_prompts"] == TOTAL and report["n"] == N
    return report, (d / "ref.samples.jsonl").read_text()


def _interrupt_after_first_batch(tmp_path, out, sig):
    """Start `scirl eval`, send `sig` as soon as it reports its first batch done; (return code, stderr text)."""
    err = tmp_path / "stderr.txt"
    with open(err, "w") as err_file:
        proc = popen([*CLI, *ARGS, "-o", str(out)], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                     stderr=err_file, text=True)
        try:
            for line in proc.stdout:
                if line.startswith(f"eval {BATCH}/{TOTAL} prompts"):  # printed after the batch is on disk
                    proc.send_signal(sig)
                    break
            proc.stdout.read()
            proc.wait(timeout=600)
        finally:
            proc.kill()
            proc.stdout.close()
    return proc.returncode, err.read_text()


def _committed(out):
    meta = json.loads(out.with_name(out.stem + ".samples.meta.json").read_text())
    return meta["batches"]


def _same_as_reference(out, reference):
    ref_report, ref_text = reference
    assert out.with_name(out.stem + ".samples.jsonl").read_text() == ref_text
    report = json.loads(out.read_text())
    assert report["samples_file"] == str(out.with_name(out.stem + ".samples.jsonl"))
    assert {k: v for k, v in report.items() if k not in RUN_ONLY} == \
        {k: v for k, v in ref_report.items() if k not in RUN_ONLY}


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "ev" / "phys.json"
    samples = tmp_path / "ev" / "phys.samples.jsonl"
    rc, _ = _interrupt_after_first_batch(tmp_path, out, signal.SIGKILL)
    assert rc == -signal.SIGKILL and not out.exists()
    batches = _committed(out)
    assert 1 <= len(batches) < TOTAL // BATCH and batches[0] == {
        "start": 0, "stop": BATCH, "rows": BATCH * N, "timeouts": 0, "errors": 0,
        "truncated": batches[0]["truncated"], "response_tokens": batches[0]["response_tokens"]}
    kept = BATCH * N * len(batches)
    lines = samples.read_text().split("\n")
    assert lines[:kept] == reference[1].split("\n")[:kept]  # every committed row, as the full run wrote it
    with open(samples, "a") as f:  # and a crash in the middle of writing a row
        f.write('{"prompt_id": "tiny_physics/val/')
    before = samples.read_bytes()

    proc = _run(*ARGS, "-o", str(out), cwd=tmp_path)  # without --resume: refused, nothing touched
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert str(samples) in lines[0] and "--resume" in lines[0]
    assert samples.read_bytes() == before
    with pytest.raises(ScirlError, match=r"made with --temperature 1\.0, this run has 0\.7"):
        eval_main([*ARGS, "-o", str(out), "--resume", "--temperature", "0.7"])
    with pytest.raises(ScirlError, match=r"made with --batch-prompts 2, this run has 4"):
        eval_main([*ARGS, "-o", str(out), "--resume", "--batch-prompts", "4"])
    assert samples.read_bytes() == before

    proc = _run(*ARGS, "-o", str(out), "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming {samples}: {BATCH * len(batches)} of {TOTAL} prompts already done" in proc.stdout
    _same_as_reference(out, reference)
    assert len(_committed(out)) == TOTAL // BATCH


def test_ctrl_c_keeps_the_rows_and_resume_finishes(tmp_path, reference):
    out = tmp_path / "c.json"
    rc, err = _interrupt_after_first_batch(tmp_path, out, signal.SIGINT)
    assert rc == 130, err
    done = BATCH * len(_committed(out))
    assert 1 <= done // BATCH < TOTAL // BATCH
    assert f"interrupted; {done} of {TOTAL} prompts are saved in {tmp_path / 'c.samples.jsonl'}" in err
    assert "--resume" in err
    rows = (tmp_path / "c.samples.jsonl").read_text().splitlines()
    assert len(rows) == done * N  # Ctrl-C lands between batches or mid-batch: only whole batches are on disk
    proc = _run(*ARGS, "-o", str(out), "--resume", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _same_as_reference(out, reference)


SMALL = ["--model", "builtin:tiny-qwen3", "--n", "1", "--max-new-tokens", "4", "--workers", "0"]


def test_two_evals_into_one_folder_keep_their_own_samples(tmp_path):
    ev = tmp_path / "ev"
    assert eval_main([*SMALL, "--data", "tiny_physics", "--limit", "2", "-o", str(ev / "a.json")]) == 0
    data = tmp_path / "mine.jsonl"
    data.write_text('{"q": "What is 2+2? Put the answer in \\\\boxed{}.", "a": "4"}\n')
    assert eval_main([*SMALL, "--data", str(data), "--field", "prompt=q", "--field", "answer=a",
                      "--reward", "boxed_numeric", "-o", str(ev / "b.json")]) == 0
    a, b = json.loads((ev / "a.json").read_text()), json.loads((ev / "b.json").read_text())
    assert a["samples_file"] == str(ev / "a.samples.jsonl") and b["samples_file"] == str(ev / "b.samples.jsonl")
    rows_a = [json.loads(x) for x in (ev / "a.samples.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (ev / "b.samples.jsonl").read_text().splitlines()]
    assert [r["data_source"] for r in rows_a] == ["tiny_physics"] * 2 and len(rows_b) == 1
    assert rows_b[0]["answer"] == "4" and rows_b[0]["reward"] is None  # a local file has no reward of its own
    assert not (ev / "samples.jsonl").exists()
    # the same -o again is refused, and the first eval's files stay as they were
    before = (ev / "a.samples.jsonl").read_bytes()
    with pytest.raises(ScirlError, match=r"a.samples.jsonl already exists .*pass --resume"):
        eval_main([*SMALL, "--data", "tiny_physics", "--limit", "2", "-o", str(ev / "a.json")])
    assert (ev / "a.samples.jsonl").read_bytes() == before
    # --resume of a finished eval generates nothing and writes the same JSON
    assert eval_main([*SMALL, "--data", "tiny_physics", "--limit", "2", "-o", str(ev / "a.json"), "--resume"]) == 0
    again = json.loads((ev / "a.json").read_text())
    same = [k for k in a if k != "wall_seconds"]
    assert {k: again[k] for k in same} == {k: a[k] for k in same} and set(again) == set(a)
    assert (ev / "a.samples.jsonl").read_bytes() == before


def test_resume_refuses_other_prompts_or_a_file_without_settings(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"q": "1+1?", "a": "2"}\n{"q": "2+3?", "a": "5"}\n')
    args = [*SMALL, "--data", str(data), "--field", "prompt=q", "--field", "answer=a", "--reward", "boxed_numeric",
            "-o", str(tmp_path / "m.json")]
    assert eval_main(args) == 0
    before = (tmp_path / "m.samples.jsonl").read_bytes()
    data.write_text('{"q": "1+1?", "a": "2"}\n{"q": "2+3?", "a": "6"}\n')  # an answer changed in the data file
    with pytest.raises(ScirlError, match="--resume: the prompts differ from those"):
        eval_main([*args, "--resume"])
    assert (tmp_path / "m.samples.jsonl").read_bytes() == before
    (tmp_path / "m.samples.meta.json").unlink()
    with pytest.raises(ScirlError, match=r"m.samples.jsonl has no settings record m.samples.meta.json"):
        eval_main([*args, "--resume"])
    assert (tmp_path / "m.samples.jsonl").read_bytes() == before
