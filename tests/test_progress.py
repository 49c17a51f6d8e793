"""scirl.progress: plain periodic lines with counts and ETA off a terminal (fake clock), a rich bar on one, nothing
with SCIRL_PROGRESS=0 or in a rank other than 0, one-line errors for bad settings; and a real `scirl eval` /
`scirl grade` showing (or not showing) the lines on stderr."""

import io
import json
import re
import subprocess
import sys

import pytest
from rich.console import Console

from scirl.errors import ScirlError
from scirl.progress import clock_text, progress
from tests.conftest import REPO

LINE = re.compile(r"^(?P<desc>[\w :]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>[\w ]+) \((?P<pct>\d+)%\) "
                  r"elapsed (?P<elapsed>\d+:\d\d:\d\d) eta (?P<eta>\d+:\d\d:\d\d|\?)")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture(autouse=True)
def _progress_on(monkeypatch):
    monkeypatch.setenv("SCIRL_PROGRESS", "1")
    monkeypatch.delenv("SCIRL_PROGRESS_INTERVAL", raising=False)
    monkeypatch.delenv("RANK", raising=False)


def test_plain_lines_are_periodic_with_counts_and_eta():
    clock, out = FakeClock(), io.StringIO()
    with progress(30, "train", "steps", interval=10, clock=clock, stream=out) as bar:
        for step in range(1, 31):
            clock.now += 4  # 4 s a step: a line at most every 10 s means one every 3 steps
            bar.update(step, info=f"reward {step / 100:.3f}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "train: 0/30 steps (0%) elapsed 0:00:00 eta ?"  # the first line, at once
    assert lines[1] == "train: 3/30 steps (10%) elapsed 0:00:12 eta 0:01:48  reward 0.030"  # 27 left at 4 s
    assert lines[-1] == "train: 30/30 steps (100%) elapsed 0:02:00 eta 0:00:00  reward 0.300"  # the last line
    assert len(lines) == 11  # first + steps 3, 6, ..., 27 (9 lines) + last
    steps = [int(LINE.match(ln)["done"]) for ln in lines]
    assert steps == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]


def test_resumed_counts_rate_from_this_session_and_interval_zero_prints_every_update():
    clock, out = FakeClock(), io.StringIO()
    with progress(10, "eval tiny", "prompts", initial=6, interval=0, clock=clock, stream=out) as bar:
        clock.now += 30
        bar.advance(2)  # 2 prompts in 30 s: the 2 left take 30 s more
        clock.now += 30
        bar.advance(2)
    assert out.getvalue().splitlines() == [
        "eval tiny: 6/10 prompts (60%) elapsed 0:00:00 eta ?",
        "eval tiny: 8/10 prompts (80%) elapsed 0:00:30 eta 0:00:30",
        "eval tiny: 10/10 prompts (100%) elapsed 0:01:00 eta 0:00:00",
    ]


def test_interval_from_env_and_failure_prints_no_last_line(monkeypatch):
    monkeypatch.setenv("SCIRL_PROGRESS_INTERVAL", "0")
    clock, out = FakeClock(), io.StringIO()
    with pytest.raises(RuntimeError):
        with progress(3, "merge: read", "files", clock=clock, stream=out) as bar:
            bar.advance()
            raise RuntimeError("boom")
    assert out.getvalue().splitlines() == ["merge: read: 0/3 files (0%) elapsed 0:00:00 eta ?",
                                           "merge: read: 1/3 files (33%) elapsed 0:00:00 eta 0:00:00"]


@pytest.mark.parametrize("env, value, key", [("SCIRL_PROGRESS_INTERVAL", "soon", "SCIRL_PROGRESS_INTERVAL"),
                                             ("SCIRL_PROGRESS_INTERVAL", "-1", "SCIRL_PROGRESS_INTERVAL"),
                                             ("SCIRL_PROGRESS", "maybe", "SCIRL_PROGRESS")])
def test_bad_settings_are_one_line(monkeypatch, env, value, key):
    monkeypatch.setenv(env, value)
    with pytest.raises(ScirlError, match=key) as e:
        with progress(3, "x", stream=io.StringIO()):
            pass
    assert "\n" not in str(e.value)


def test_disabled_by_env_by_flag_and_in_other_ranks(monkeypatch):
    out = io.StringIO()
    with progress(3, "x", stream=out, enabled=False) as bar:
        bar.advance(3)
    monkeypatch.setenv("RANK", "1")
    with progress(3, "x", stream=out) as bar:
        bar.advance(3)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("SCIRL_PROGRESS", "0")
    with progress(3, "x", stream=out) as bar:
        bar.advance(3)
    assert out.getvalue() == "" and bar.completed == 3


def test_terminal_gets_a_rich_bar_with_eta():
    buf = io.StringIO()
    console = Console(force_terminal=True, file=buf, width=140, color_system=None)
    with progress(4, "export", "stages", console=console, info="load checkpoint") as bar:
        assert bar.live and bar.console is console
        bar.advance(info="write HF folder")
        bar.advance(3, info="done")
    assert not bar.live
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # cursor and colour codes
    last = text.replace("\r", "\n").strip().splitlines()[-1]
    assert "export" in last and "━" in last and "4/4 stages" in last and "done" in last
    assert re.search(r"\d:\d\d:\d\d ETA \d:\d\d:\d\d", last), last
    assert "0/4 stages" in text  # the bar was drawn at the start too


def test_clock_text():
    assert [clock_text(s) for s in (0, 61, 3725.4, None)] == ["0:00:00", "0:01:01", "1:02:05", "?"]


ENV = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO / "src")}


def test_scirl_eval_prints_plain_progress_lines_on_stderr(tmp_path):
    args = [sys.executable, "-m", "scirl", "eval", "--model", "builtin:tiny-qwen3", "--data", "tiny_physics",
            "--n", "2", "--limit", "4", "--batch-prompts", "2", "--max-new-tokens", "4", "--workers", "0",
            "-o", str(tmp_path / "e.json")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**ENV, "SCIRL_PROGRESS_INTERVAL": "0"})
    assert proc.returncode == 0, proc.stderr
    lines = [m for m in map(LINE.match, proc.stderr.splitlines()) if m]
    assert [(m["desc"], m["done"], m["total"], m["unit"]) for m in lines] == [
        ("eval tiny_physics", "0", "4", "prompts"), ("eval tiny_physics", "2", "4", "prompts"),
        ("eval tiny_physics", "4", "4", "prompts")]
    assert lines[0]["eta"] == "?" and lines[1]["eta"] != "?" and lines[2]["pct"] == "100"
    assert "acc " in proc.stderr.splitlines()[-1]
    assert "mean@2" in proc.stdout and "eval 4/4 prompts" in proc.stdout  # stdout as before: lines and table
    assert "elapsed" not in proc.stdout


def test_scirl_grade_progress_on_and_off(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"response": f"\\boxed{{{i}}}", "answer": "3"}) + "\n" for i in range(6)))
    cmd = [sys.executable, "-m", "scirl", "grade", "--reward", "boxed_numeric", str(src), "--workers", "0"]
    on = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**ENV, "SCIRL_PROGRESS_INTERVAL": "0"})
    assert on.returncode == 0, on.stderr
    counts = [m["done"] for m in map(LINE.match, on.stderr.splitlines()) if m]
    assert counts == ["0", "1", "2", "3", "4", "5", "6"] and "accuracy: 0.1667" in on.stdout
    off = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**ENV, "SCIRL_PROGRESS": "0"})
    assert off.returncode == 0 and off.stderr == "" and off.stdout == on.stdout.replace(
        on.stdout.split("throughput: ")[1].split("\n")[0], off.stdout.split("throughput: ")[1].split("\n")[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_reward_pool_reports_finished_counts(workers):
    from scirl.data.sample import Sample
    from scirl.rewards import RewardPool

    items = [(Sample(prompt_id=str(i), messages=[], answer="3"), f"\\boxed{{{i % 4}}}", {}) for i in range(9)]
    seen = []
    with RewardPool("boxed_numeric", workers=workers, timeout=10) as pool:
        results, _ = pool.score(items, on_progress=seen.append)
    assert sum(r.score for r in results) == 2.0  # 3 and 7 -> \boxed{3}, twice
    assert seen == sorted(set(seen)) and seen[-1] == 9 and (workers or seen == list(range(1, 10)))


def _lines(err: str) -> list[tuple[str, str, str, str]]:
    return [(m["desc"], m["done"], m["total"], m["unit"]) for m in map(LINE.match, err.splitlines()) if m]


def test_export_merge_card_and_report_show_their_stages(tmp_path, capsys, monkeypatch):
    import torch

    from scirl.cli import main
    from scirl.config import load_config, save_config
    from scirl.train.model_loading import load_model_and_tokenizer

    monkeypatch.setenv("SCIRL_PROGRESS_INTERVAL", "0")  # a line per update: every stage is seen
    model, tokenizer = load_model_and_tokenizer("builtin:tiny-qwen3")
    ckpt = tmp_path / "run" / "checkpoints" / "step_1"
    model.save_pretrained(ckpt / "model")
    tokenizer.save_pretrained(ckpt / "model")
    torch.save({"step": 1}, ckpt / "trainer_state.pt")
    capsys.readouterr()
    assert main(["export", str(ckpt), "-o", str(tmp_path / "exported")]) == 0
    assert _lines(capsys.readouterr().err) == [("export", str(i), "2", "stages") for i in range(3)]

    verl = tmp_path / "actor"  # a verl checkpoint of world size 1: plain tensors in one rank file
    model.config.save_pretrained(verl / "huggingface")
    torch.save(model.state_dict(), verl / "model_world_size_1_rank_0.pt")
    (verl / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    assert main(["merge", "--from", "verl", str(verl), "-o", str(tmp_path / "merged")]) == 0
    lines, n = _lines(capsys.readouterr().err), len(model.state_dict())
    assert lines == [("merge: read", "0", "1", "rank files"), ("merge: read", "1", "1", "rank files"),
                     *(("merge: assemble", str(i), str(n), "tensors") for i in range(n + 1)),
                     *(("merge: write", str(i), "2", "stages") for i in range(3))]

    run = tmp_path / "run"
    save_config(load_config(None, []), run / "config.yaml")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/mean": s / 4}) + "\n" for s in (1, 2)))
    assert main(["card", str(run)]) == 0 and main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert _lines(err) == [("card", "0", "1", "files"), ("card", "1", "1", "files"),
                           *(("report", str(i), "2", "stages") for i in range(3))]
    assert err.splitlines()[-1].endswith(str(run / "report.html"))


def test_bad_setting_stops_a_command_before_its_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scirl", "grade", "--reward", "boxed_numeric", "nope.jsonl"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**ENV, "SCIRL_PROGRESS_INTERVAL": "often"})
    assert proc.returncode == 2 and proc.stderr == (
        "scirl: error: SCIRL_PROGRESS_INTERVAL='often': must be a number of seconds >= 0 (0: a line per update)\n")


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_which_console_draws_the_bar(monkeypatch):
    from scirl.log.console import console as stdout_console
    from scirl.progress import _terminal_console

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich would take any file for a terminal: a CI log is still no tty
    monkeypatch.setattr(sys, "stdout", _Tty())
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert _terminal_console() is None  # stderr is a log: plain lines there
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert _terminal_console() is stdout_console  # one terminal: the command's own console, prints stay above
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    console = _terminal_console()
    assert console is not stdout_console and console.file is sys.stderr  # stdout piped: the bar on stderr only


def test_a_narrow_terminal_cuts_the_info_never_the_counts_or_eta():
    buf = io.StringIO()
    console = Console(force_terminal=True, file=buf, width=80, color_system=None)
    with progress(30, "train", "steps", console=console) as bar:
        bar.update(12, info="reward [0.188]  acc 0.188  len 27.4  6.6s/step  " + "x" * 40)
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).replace("\r", "\n").strip().splitlines()[-1]
    assert len(last) <= 80 and "12/30 steps" in last and "ETA -:--:--" in last, last  # no rate known yet
    assert "reward [0.188]" in last and last.endswith("…")  # the info as given (no markup), cut at the edge
