"""Reward workers die with the process that started them.

Each case runs a real program (a RewardPool with two workers) in a subprocess and kills it the way a user, Slurm,
Kubernetes or `timeout` would: kill -9, SIGTERM to the trainer alone, SIGTERM to its whole process group, and the
`scirl train ... | tee log` pipeline, which must return once the trainer is gone. Worker exits are awaited with
pidfds (the kernel says when a process that is not our child ends), never with sleeps.
"""

import os
import select
import signal
import subprocess
import sys
import time

import pytest

DEADLINE_S = 20.0  # generous for a loaded 2-core machine: the kernel kills the workers within milliseconds

PROGRAM = r"""
import os, signal, sys
from scirl.data.sample import Sample
from scirl.rewards import RewardPool

from scirl.rewards import RewardResult, register_reward


@register_reward("lifetime_stuck")
def stuck(sample, completion, info):  # a reward call that never returns: only the kernel can end this worker
    if completion == "stuck":
        print("busy", flush=True)
        signal.pause()
    return RewardResult(1.0)


method, mode = sys.argv[1], sys.argv[2]
pool = RewardPool("boxed_numeric" if mode != "busy" else "lifetime_stuck", workers=2, timeout=600,
                  start_method=method)
items = [(Sample(f"p{i}", [], str(i)), "\\boxed{%d}" % i, {}) for i in range(8)]
results, stats = pool.score(items)  # the workers are up and answering
assert [r.score for r in results] == [1.0] * 8 and stats["errors"] == 0, (results, stats)
if mode == "graceful":  # a trainer that finishes its step when the job is told to stop
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # after the fork: the workers do not inherit it
before = pool.worker_pids
print(os.getpid(), *before, flush=True)
if mode == "busy":
    pool.score([(items[0][0], "stuck", {})])  # the parent waits in score() while a worker is stuck in the call
elif mode == "graceful":
    signal.sigwait({signal.SIGTERM})
    results, stats = pool.score(items)
    print(stats["errors"], stats["timeouts"], sum(r.score for r in results), pool.worker_pids == before, flush=True)
    pool.close()
else:
    while True:
        signal.pause()
"""


def _start(method: str, mode: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PROGRAM, method, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, **kwargs)


def _pids(line: bytes) -> tuple[int, list[int]]:
    parent, *workers = (int(x) for x in line.split())
    assert len(workers) == 2 and parent not in workers, line
    return parent, workers


class _Watch:
    """pidfds of processes that are not our children: `wait()` returns the ones still running at the deadline."""

    def __init__(self, pids: list[int]) -> None:
        self.fds = {pid: os.pidfd_open(pid) for pid in pids}  # raises ProcessLookupError if one is already gone

    def wait(self, seconds: float = DEADLINE_S) -> list[int]:
        deadline = time.monotonic() + seconds
        left = dict(self.fds)
        while left and (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(left.values()), [], [], remaining)
            left = {pid: fd for pid, fd in left.items() if fd not in ready}
        return sorted(left)

    def close(self) -> None:
        for pid, fd in self.fds.items():  # a failed run must not leave orphans behind: end what we started
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass
            os.close(fd)


def _read_to_eof(stream, seconds: float = DEADLINE_S) -> bool:
    """True when `stream` (a pipe) reaches EOF within `seconds`: every process holding its write end is gone."""
    deadline = time.monotonic() + seconds
    fd = stream.fileno()
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready and not os.read(fd, 65536):
            return True
    return False


if not hasattr(os, "pidfd_open"):  # pragma: no cover - Linux >= 5.3 with Python >= 3.9
    pytest.skip("needs os.pidfd_open", allow_module_level=True)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_kill_9_takes_the_workers_down(method):
    proc = _start(method, "wait")
    parent, workers = _pids(proc.stdout.readline())
    watch = _Watch(workers)
    try:
        os.kill(parent, signal.SIGKILL)
        assert proc.wait(timeout=DEADLINE_S) == -signal.SIGKILL
        assert watch.wait() == []  # all workers gone
        assert _read_to_eof(proc.stdout)  # and none holds the trainer's stdout
    finally:
        watch.close()
        proc.stdout.close()


def test_sigterm_to_the_trainer_takes_the_workers_down():
    proc = _start("fork", "wait")
    parent, workers = _pids(proc.stdout.readline())
    watch = _Watch(workers)
    try:
        os.kill(parent, signal.SIGTERM)  # `timeout`, `kill PID`: the default action, no Python cleanup runs
        assert proc.wait(timeout=DEADLINE_S) == -signal.SIGTERM
        assert watch.wait() == []
    finally:
        watch.close()
        proc.stdout.close()


def test_sigterm_to_the_whole_job_leaves_the_step_to_the_trainer():
    """Slurm and Kubernetes signal every process of the job. The workers ignore it, so the trainer can finish its
    step with real rewards (not errors from killed workers), then stop its workers itself."""
    proc = _start("fork", "graceful", start_new_session=True)
    parent, workers = _pids(proc.stdout.readline())
    watch = _Watch(workers)
    try:
        os.killpg(parent, signal.SIGTERM)
        errors, timeouts, total, same_workers = proc.stdout.readline().split()
        assert (int(errors), int(timeouts), float(total), same_workers) == (0, 0, 8.0, b"True")
        assert proc.wait(timeout=DEADLINE_S) == 0
        assert watch.wait() == []
    finally:
        watch.close()
        proc.stdout.close()


def test_tee_pipeline_returns_when_the_trainer_is_killed(tmp_path):
    """`scirl train ... | tee log`: with the trainer killed, tee must see EOF, so the pipeline ends."""
    log = tmp_path / "log"
    shell = subprocess.Popen(["bash", "-c", '"$PY" -c "$PROGRAM" fork wait | tee "$LOG"'], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, start_new_session=True,
                             env={**os.environ, "PY": sys.executable, "PROGRAM": PROGRAM, "LOG": str(log)})
    parent, workers = _pids(shell.stdout.readline())
    watch = _Watch(workers)
    try:
        os.kill(parent, signal.SIGKILL)
        assert shell.wait(timeout=DEADLINE_S) == 0  # the pipeline's status is tee's: it saw EOF and exited
        assert _read_to_eof(shell.stdout)
        assert log.read_text().split() == [str(p) for p in [parent, *workers]]
        assert watch.wait() == []
    finally:
        watch.close()
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)  # the session we started: bash, tee and anything left in it
            shell.wait()
        shell.stdout.close()


def test_a_worker_stuck_in_a_reward_call_dies_with_the_trainer():
    """Busy in a call, a worker never reads its pipe again: only the parent-death signal can end it."""
    proc = _start("fork", "busy")
    parent, workers = _pids(proc.stdout.readline())
    watch = _Watch(workers)
    try:
        assert proc.stdout.readline() == b"busy\n"
        os.kill(parent, signal.SIGKILL)
        assert proc.wait(timeout=DEADLINE_S) == -signal.SIGKILL
        assert watch.wait() == []
    finally:
        watch.close()
        proc.stdout.close()


def _socket_inodes(pid: int) -> set[str]:
    fd_dir = f"/proc/{pid}/fd"
    links = set()
    for name in os.listdir(fd_dir):
        try:
            links.add(os.readlink(f"{fd_dir}/{name}"))
        except OSError:  # closed between listdir and readlink
            pass
    return {link for link in links if link.startswith("socket:")}


def test_no_worker_holds_a_parent_end_of_any_pipe():
    """Each worker holds its own end of its own pipe and nothing else of the pool's: no parent-side end (its own
    or another worker's), so a worker's recv() sees EOF once the parent is gone."""
    from scirl.data.sample import Sample
    from scirl.rewards import RewardPool

    with RewardPool("boxed_numeric", workers=3) as pool:
        pool._replace(0)  # a replacement is forked after the others: it must not inherit their parent ends
        # one item per worker, all dispatched at once: an answer means the worker is past its fork-time cleanup
        (a, b, c), stats = pool.score([(Sample(f"p{i}", [], str(i)), f"\\boxed{{{i}}}", {}) for i in range(3)])
        assert [a.score, b.score, c.score] == [1.0, 1.0, 1.0] and stats["errors"] == 0
        parent_ends = {f"socket:[{os.fstat(w.conn.fileno()).st_ino}]" for w in pool._workers}
        assert len(parent_ends) == 3
        for pid in pool.worker_pids:
            held = _socket_inodes(pid)
            assert held and not held & parent_ends, (pid, held & parent_ends)
