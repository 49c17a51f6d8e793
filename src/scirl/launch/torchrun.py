"""`scirl train ... trainer.nproc_per_node=N` on one machine: scirl starts torchrun itself
(`python -m torch.distributed.run --standalone --nproc-per-node N -m scirl train <the same args>`), and

* the torchrun agent dies with this launcher (scirl.procs: kill -9 of `scirl train` ends the agent, each rank dies
  with the agent, each reward worker with its rank), so `scirl train ... | tee log` ends and nothing is orphaned;
* SIGTERM / Ctrl-C go to this launcher only (the agent runs in a session of its own, as torchrun runs each rank)
  and are forwarded straight to the ranks, not through the agent, whose shutdown kills the ranks 30 s after its
  own signal: each rank checkpoints at the next step boundary however long that step takes. A second signal
  kills the agent, and so every rank, at once;
* the exit status is the run's: 128 + signal after a forwarded stop, else the first failing rank's code and
  one-line error (each rank reports them, scirl.launch.rank_report), else torchrun's.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from scirl import procs
from scirl.launch import LAUNCHER_PID
from scirl.launch.rank_report import REPORT_DIR, read_reports
from scirl.launch.signals import ForwardSignals
from scirl.errors import ScirlError


class LaunchFailed(ScirlError):
    """A rank failed: the launcher exits with `exit_code` (the rank's own where it reported one)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def children(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc; every thread's children)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    except OSError:
        return []
    return sorted(set(out))


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def torchrun_command(nproc: int, worker_argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            *worker_argv]


def launch_torchrun(nproc: int, worker_argv: list[str], threads: int) -> int:
    """Run `worker_argv` (e.g. ["-m", "scirl", "train", ...]) on `nproc` local ranks under torchrun; return the
    run's exit status (raises LaunchFailed with the failing rank's error)."""
    _sweep_report_dirs()
    report_dir = tempfile.mkdtemp(prefix=f"scirl-ranks-{os.getpid()}-")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), LAUNCHER_PID: str(os.getpid()), REPORT_DIR: report_dir}
    try:
        agent = procs.popen(torchrun_command(nproc, worker_argv), env=env, start_new_session=True)
        forward = ForwardSignals(forward=lambda s: _signal_all(children(agent.pid), s),
                                 kill_now=lambda s: _signal_all([agent.pid], signal.SIGKILL))
        with forward:
            code = agent.wait()
        reports = read_reports(report_dir)
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)
    return run_status(code, reports, nproc, forward.signum)


def _sweep_report_dirs() -> None:
    """Remove the rank-report folders of launchers that are gone (a kill -9 skips the launcher's own cleanup)."""
    for folder in Path(tempfile.gettempdir()).glob("scirl-ranks-*-*"):
        pid = folder.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def run_status(launcher_code: int, reports: dict[int, dict], nproc: int, signum: int | None) -> int:
    """The launcher's exit status: 128 + signal after a forwarded stop; else the first failing rank's report
    (raised as LaunchFailed, one line); else the launcher's own status."""
    if signum is not None:
        return 128 + signum
    errors = {r: rep for r, rep in reports.items() if 0 < int(rep.get("code", 0)) <= 128}
    if errors:  # the first rank to fail; its peers then fail too, or are stopped by torchrun
        rank, rep = min(errors.items(), key=lambda item: item[1].get("time", 0.0))
        code = int(rep["code"])
        raise LaunchFailed(f"rank {rank} failed (exit code {code}): {rep.get('error') or 'see its output above'}", code)
    missing = [r for r in range(nproc) if r not in reports]
    if launcher_code != 0 and missing:
        raise LaunchFailed(f"rank {missing[0]} died without a report (killed by a signal, or out of memory): "
                           "torchrun's summary above names the signal", 128 + signal.SIGKILL)
    stopped = [int(rep["code"]) for rep in reports.values() if int(rep.get("code", 0)) > 128]
    if stopped:
        return stopped[0]  # ranks stopped by a signal sent to them: each printed its own line (checkpoint, step)
    if launcher_code != 0:
        raise LaunchFailed(f"torchrun failed (exit code {launcher_code}); its output is above", launcher_code)
    return 0
