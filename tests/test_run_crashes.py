"""Real `scirl train` processes killed at the worst moments: kill -9 mid-step and mid-save leave no process behind
and a `| tee` ends; SIGTERM checkpoints at the step boundary and the resumed run is bitwise the uninterrupted one;
a second signal exits at once; a second run on the same folder is refused; a full disk keeps the last checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scirl import procs

REWARD = Path(__file__).parent / "helpers" / "blocking_reward.py"
DEADLINE = 120.0  # generous: these run on a loaded 2-core machine
# call 32 + 16 + 1: the first reward call of step 2 (validation 8 prompts x 4, then 4 prompts x 4 per step)
STEP_2 = 49


def overrides(out: Path, **extra) -> list[str]:
    base = {"trainer.output_dir": out, "trainer.run_name": "r", "trainer.total_steps": 4, "trainer.save_freq": 2,
            "trainer.test_freq": 0, "trainer.progress": "false", "data.train_size": 64, "data.val_size": 8,
            "data.train_batch_size": 4, "actor.ppo_mini_batch_size": 4, "actor.ppo_micro_batch_size": 8,
            "rollout.n": 4, "rollout.val_n": 4, "rollout.max_new_tokens": 40, "reward.workers": 2,
            "reward.timeout": 300, "reward.name": f"{REWARD}:score", "actor.lr": 1e-3}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def start(tmp: Path, block_at: int = 0, fault: str | None = None, stdout=subprocess.PIPE, **extra):
    env = {**os.environ, "SCIRL_TEST_COUNTER": str(tmp / "calls"), "SCIRL_TEST_BLOCK_AT": str(block_at),
           "SCIRL_TEST_MARKER": str(tmp / "blocked"), "SCIRL_TEST_RELEASE": str(tmp / "release"),
           "PYTHONUNBUFFERED": "1"}
    env.pop("SCIRL_FAULT", None)
    if fault:
        env["SCIRL_FAULT"] = fault
    (tmp / "calls").unlink(missing_ok=True)
    return procs.popen([sys.executable, "-m", "scirl", "train", *overrides(tmp / "runs", **extra)], env=env,
                       stdout=stdout, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])  # state, ppid


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (st := _stat(int(p.name))) is not None:
            children.setdefault(st[1], []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def finish(proc) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=DEADLINE * 3)
    return proc.returncode, out or "", err


def weights(run: Path, step: int) -> dict:
    return load_file(run / "checkpoints" / f"step_{step}" / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same 4-step run with nothing happening to it."""
    tmp = tmp_path_factory.mktemp("reference")
    code, _, err = finish(start(tmp))
    assert code == 0, err
    return tmp / "runs" / "r"


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_mid_step_leaves_no_process_and_the_tee_ends(tmp_path):
    trainer = start(tmp_path, block_at=STEP_2)
    tee = subprocess.Popen(["tee", str(tmp_path / "log")], stdin=trainer.stdout, stdout=subprocess.DEVNULL)
    trainer.stdout.close()  # only the trainer (and whatever inherited its stdout) holds the pipe now
    wait_for(lambda: (tmp_path / "blocked").exists(), "step 2's reward call")
    family = descendants(trainer.pid)
    assert len(family) >= 2  # the reward workers, one of them blocked in a call
    trainer.kill()
    trainer.wait(timeout=DEADLINE)
    wait_for(lambda: not any(alive(p) for p in family), "the reward workers to die with the trainer")
    assert tee.wait(timeout=DEADLINE) == 0  # nothing holds the pipe: `scirl train ... | tee log` returns
    assert "step 1/4" in (tmp_path / "log").read_text()
    trainer.stderr.close()


def test_kill_9_mid_save_then_resume_is_bitwise_the_uninterrupted_run(tmp_path, uninterrupted):
    trainer = start(tmp_path, fault="ckpt:mid_save@2")  # the step-4 save dies after the weights, before the state
    family = []
    wait_for(lambda: family.extend(p for p in descendants(trainer.pid) if p not in family) or trainer.poll() is not None,
             "the trainer to kill itself mid-save")
    code, _, _ = finish(trainer)
    assert code == -signal.SIGKILL
    wait_for(lambda: not any(alive(p) for p in family), "the reward workers to die with the trainer")
    run = tmp_path / "runs" / "r"
    assert [p.name for p in (run / "checkpoints").iterdir()] != [] and list((run / "checkpoints").glob(".tmp_step_4_*"))
    code, out, err = finish(start(tmp_path))  # the same command again
    assert code == 0, err
    assert "removed .tmp_step_4_" in out and "resumed from" in out and "(step 2)" in out
    assert not list((run / "checkpoints").glob(".tmp_*"))
    assert_same_weights(weights(run, 4), weights(uninterrupted, 4))


def test_sigterm_checkpoints_at_the_step_boundary_and_resume_is_bitwise(tmp_path, uninterrupted):
    trainer = start(tmp_path, block_at=STEP_2)
    wait_for(lambda: (tmp_path / "blocked").exists(), "step 2's reward call")
    os.killpg(trainer.pid, signal.SIGTERM)  # as Slurm does: the whole process group, reward workers included
    (tmp_path / "release").touch()
    code, _, err = finish(trainer)
    run = tmp_path / "runs" / "r"
    assert code == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    assert last == (f"scirl: stopped by SIGTERM after step 2: checkpoint {run / 'checkpoints' / 'step_2'}; run the "
                    "same command again to continue (trainer.resume=auto)")
    assert "Traceback" not in err and "reward/errors" not in err
    import json

    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["reward/errors"] == 0  # workers ignored the SIGTERM
    code, out, err = finish(start(tmp_path))
    assert code == 0, err
    assert_same_weights(weights(run, 4), weights(uninterrupted, 4))


def test_a_second_signal_exits_at_once_and_leaves_no_process(tmp_path):
    trainer = start(tmp_path, block_at=STEP_2)
    wait_for(lambda: (tmp_path / "blocked").exists(), "step 2's reward call")
    family = descendants(trainer.pid)
    trainer.send_signal(signal.SIGINT)
    first = trainer.stderr.readline()
    while "received" not in first:
        first = trainer.stderr.readline()
    assert first.strip() == ("scirl: SIGINT received: stopping after this step with a checkpoint (send it again to "
                             "exit at once)")
    trainer.send_signal(signal.SIGINT)
    code, _, err = finish(trainer)
    assert code == 128 + signal.SIGINT and "scirl: second SIGINT: exiting now, without a checkpoint" in err
    wait_for(lambda: not any(alive(p) for p in family), "the reward workers to die with the trainer")
    assert not (tmp_path / "runs" / "r" / "checkpoints" / "step_4").exists()


def test_a_second_run_on_the_same_folder_is_refused_in_one_line(tmp_path):
    first = start(tmp_path, block_at=1)  # blocked in the first validation call, holding the lock
    wait_for(lambda: (tmp_path / "blocked").exists(), "the first run's first reward call")
    code, out, err = finish(start(tmp_path))
    import socket

    assert code == 2
    assert err.strip().startswith(f"scirl: error: run folder {tmp_path / 'runs' / 'r'} is in use by another run "
                                  f"(pid {first.pid} on host {socket.gethostname()}, since ")
    assert len(err.strip().splitlines()) == 1
    first.kill()
    finish(first)


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    code, _, err = finish(start(tmp_path, **{"trainer.total_steps": 2}))
    assert code == 0, err
    run = tmp_path / "runs" / "r"
    before = weights(run, 2)
    import resource

    def limit_file_size():  # 1 MB per file: metrics and eval files fit, the 3.4 MB weights do not
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    env = {**os.environ, "SCIRL_TEST_COUNTER": str(tmp_path / "calls"), "SCIRL_TEST_BLOCK_AT": "0",
           "SCIRL_TEST_MARKER": str(tmp_path / "m"), "SCIRL_TEST_RELEASE": str(tmp_path / "r")}
    out = subprocess.run([sys.executable, "-m", "scirl", "train", *overrides(tmp_path / "runs")], env=env,
                         preexec_fn=limit_file_size, capture_output=True, text=True, timeout=DEADLINE * 3)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "scirl: error: checkpoint step_4 was not written: Error while serializing: I/O error: File too large (os "
        f"error 27); the previous checkpoint {run / 'checkpoints' / 'step_2'} is intact")
    assert "Traceback" not in out.stderr and not list((run / "checkpoints").glob(".tmp_*"))
    assert_same_weights(weights(run, 2), before)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2"]
