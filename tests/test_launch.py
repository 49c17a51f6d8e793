"""The launchers on real processes: scirl starts torchrun itself (`trainer.nproc_per_node=2`) or Ray actors
(`trainer.launcher=ray`, a real local Ray instance); the ranks join one gloo group; a rank's failure ends the run
with its error and exit code (no hang); SIGTERM reaches every rank once; kill -9 of the launcher leaves no process;
a local Ray instance leaves nothing in its temp folder and writes no auth token; bad launcher settings are one
line, exit 2. The mechanics use a tiny worker (`python -m scirl.launch.selftest`: all-reduce of the ranks)."""

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from scirl import procs
from scirl.cli import main as scirl_main

DEADLINE = 120.0


def env_with(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in ("SCIRL_FAULT", "SCIRL_FAULT_RANK", "SCIRL_SELFTEST_SLEEP", "SCIRL_SELFTEST_FAIL_RANK", "WORLD_SIZE",
              "RANK", "OMP_NUM_THREADS", "RAY_ADDRESS"):
        env.pop(k, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def selftest(launcher: str, *overrides: str, env: dict, **popen) -> subprocess.Popen:
    return procs.popen([sys.executable, "-m", "scirl.launch.selftest", launcher, "2", *overrides], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out, err


def rank_lines(out: str) -> dict[int, str]:
    return {int(m.group(1)): m.group(0) for m in re.finditer(r"selftest rank (\d)/2 [^\n]*", out)}


def wait_for(cond, what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> list[int]:
    from scirl.launch.torchrun import children

    out, todo = [], [pid]
    while todo:
        for c in children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


# ---------------------------------------------------------------------------------------------------- torchrun


def test_threads_per_rank_rule(monkeypatch):
    from scirl.config import load_config
    from scirl.launch import threads_per_rank

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_rank(load_config(None, ["trainer.num_threads=5"]), 8.0) == 5
    assert threads_per_rank(load_config(None, []), 8.0) == 8  # the rank's share of the cores
    assert threads_per_rank(load_config(None, []), 0.5) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_per_rank(load_config(None, []), 8.0) == 2  # the user's environment wins over the share
    assert threads_per_rank(load_config(None, ["trainer.num_threads=5"]), 8.0) == 5


def test_a_rank_started_by_torchrun_trains_itself(monkeypatch):
    """`torchrun --nproc-per-node 2 -m scirl train ... trainer.nproc_per_node=2` by hand: no second launch."""
    from scirl.config import load_config
    from scirl.launch import launch_if_needed

    cfg = load_config(None, ["trainer.nproc_per_node=2"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch_if_needed(cfg, ["trainer.nproc_per_node=2"]) is None
    cfg = load_config(None, ["trainer.nproc_per_node=2", "trainer.launcher=ray"])
    assert launch_if_needed(cfg, []) is None
    monkeypatch.delenv("WORLD_SIZE")
    assert launch_if_needed(load_config(None, []), []) is None  # one process: no launcher at all


def test_torchrun_rank_failure_ends_the_run_with_its_error_and_code():
    start = time.monotonic()
    code, out, err = finish(selftest("torchrun", env=env_with(SCIRL_SELFTEST_FAIL_RANK=1, SCIRL_SELFTEST_SLEEP=60)))
    assert code == 3, err  # the failing rank's own exit code, not torchrun's 1
    assert err.strip().splitlines()[-1] == "scirl: rank 1 failed (exit code 3): selftest failure injected on rank 1"
    assert time.monotonic() - start < 50  # rank 0 (asleep for 60 s) was stopped, not waited for


def test_torchrun_ranks_join_one_group_and_sigterm_reaches_every_rank_once():
    proc = selftest("torchrun", "trainer.num_threads=3", env=env_with(SCIRL_SELFTEST_SLEEP=90))
    seen = []
    wait_for(lambda: seen.append(proc.stdout.readline()) or len(rank_lines("".join(seen))) == 2, "both ranks")
    for rank, line in rank_lines("".join(seen)).items():  # all-reduce of 0 + 1 over gloo; env vars; our threads
        assert f"selftest rank {rank}/2 local {rank}/2 sum 1 omp 3 " in line
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    out = "".join(seen) + out
    assert code == 128 + signal.SIGTERM, err
    assert "selftest rank 0 stopped by SIGTERM" in out and "selftest rank 1 stopped by SIGTERM" in out
    assert "scirl: SIGTERM received: every rank stops after this step" in err and "second" not in err


def test_kill_9_of_the_torchrun_launcher_leaves_no_process_and_the_tee_ends(tmp_path):
    proc = selftest("torchrun", env=env_with(SCIRL_SELFTEST_SLEEP=90), start_new_session=True)
    tee = subprocess.Popen(["tee", str(tmp_path / "log")], stdin=proc.stdout, stdout=subprocess.DEVNULL)
    proc.stdout.close()
    wait_for(lambda: len(rank_lines((tmp_path / "log").read_text() if (tmp_path / "log").exists() else "")) == 2,
             "both ranks")
    family = descendants(proc.pid)
    assert len(family) >= 3  # torchrun's agent and its 2 ranks
    proc.kill()
    proc.wait(timeout=DEADLINE)
    wait_for(lambda: not any(alive(p) for p in family), "torchrun and the ranks to die with the launcher", 10)
    assert tee.wait(timeout=10) == 0
    proc.stderr.close()


# ---------------------------------------------------------------------------------------------------- bad input


def one_line_error(capsys, args: list[str]) -> str:
    assert scirl_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_key_fails_before_any_process_starts(capsys):
    start = time.monotonic()
    err = one_line_error(capsys, ["train", "trainer.nproc_per_node=2", "trainer.nprocs=2"])
    assert err.startswith("scirl: error: unknown config key 'trainer.nprocs'")
    assert time.monotonic() - start < 10


def test_torchrun_on_several_machines_says_what_to_run(capsys):
    err = one_line_error(capsys, ["train", "trainer.nnodes=2", "trainer.nproc_per_node=8"])
    assert err.startswith("scirl: error: trainer.nnodes=2 with trainer.launcher=torchrun: start torchrun on each "
                          "machine yourself, `torchrun --nnodes 2 --nproc-per-node 8 --node-rank <0..1>")
    assert "-m scirl train trainer.nnodes=2 trainer.nproc_per_node=8`, or use trainer.launcher=ray" in err


def test_ray_not_importable_is_one_line_naming_the_key(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where ray is not installed
    err = one_line_error(capsys, ["train", "trainer.launcher=ray", "trainer.nproc_per_node=2"])
    assert err.startswith("scirl: error: trainer.launcher=ray: ray is not importable")


def test_ray_address_not_reachable_is_one_line_in_seconds(capsys, monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    start = time.monotonic()
    err = one_line_error(capsys, ["train", "trainer.launcher=ray", f"ray.address=127.0.0.1:{port}"])
    assert err.startswith(f"scirl: error: ray.address=127.0.0.1:{port}: cannot reach a Ray cluster")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # where Ray looks for the running cluster's address
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    err = one_line_error(capsys, ["train", "trainer.launcher=ray", "ray.address=auto"])
    assert err.startswith("scirl: error: ray.address=auto: no running Ray cluster found")
    assert time.monotonic() - start < 30


# ---------------------------------------------------------------------------------------------------- Ray


def test_ray_local_instance_runs_the_ranks_forwards_sigterm_and_leaves_nothing_behind(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    home = tmp_path / "home"
    home.mkdir()
    try:
        proc = selftest("ray", "ray.object_store_memory=100000000",
                        env=env_with(SCIRL_SELFTEST_SLEEP=90, RAY_TMPDIR=ray_tmp, HOME=home))
        seen = []
        wait_for(lambda: seen.append(proc.stdout.readline()) or len(rank_lines("".join(seen))) == 2, "both ranks")
        lines = rank_lines("".join(seen))
        for rank, line in lines.items():  # one group; torchrun's env vars; 1 CPU per rank; no GPU: none visible
            assert f"selftest rank {rank}/2 local {rank}/2 sum 1 omp 1 cuda_visible  pid" in line
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc)
        out = "".join(seen) + out
        assert code == 128 + signal.SIGTERM, err
        assert "selftest rank 0 stopped by SIGTERM" in out and "selftest rank 1 stopped by SIGTERM" in out
        assert list(ray_tmp.iterdir()) == []  # the session folder went with ray.shutdown()
        assert not (home / ".ray").exists()  # the auth token lived in the environment only
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """A running Ray cluster (`ray start --head`, as on a real machine) shared by this module's Ray tests; its own
    token; stopped (its processes only) and its temp folder removed at the end."""
    temp = Path(tempfile.mkdtemp(prefix="sc-", dir="/tmp"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = env_with(HOME=temp, **auth)
    head = procs.popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
                        "--object-store-memory", "100000000", "--temp-dir", str(temp), "--port", str(port),
                        "--include-dashboard", "false", "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (temp / "ray_current_cluster").exists() or head.poll() is not None, "ray start")
        assert head.poll() is None
        yield f"127.0.0.1:{port}", auth
    finally:
        head.terminate()  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_rank_failure_kills_the_others_and_exits_with_its_error(ray_cluster):
    address, auth = ray_cluster
    start = time.monotonic()
    code, out, err = finish(selftest("ray", f"ray.address={address}",
                                     env=env_with(SCIRL_SELFTEST_FAIL_RANK=1, SCIRL_SELFTEST_SLEEP=90, **auth)))
    assert code == 3, err
    assert err.strip().splitlines()[-1] == "scirl: rank 1 failed (exit code 3): selftest failure injected on rank 1"
    assert time.monotonic() - start < 60  # rank 0 (asleep for 90 s) was killed, not waited for
    pids = [int(line.rsplit(" ", 1)[1]) for line in rank_lines(out).values()]
    assert pids and not any(alive(p) for p in pids)
