"""Leave nothing of a local Ray instance behind, however its driver ends (kill -9 included).

Ray ends its GCS and raylet with the driver that started them, but its dashboard and runtime-env agents outlive a
driver killed with SIGKILL (they keep waiting on the dead GCS), and the instance's temp folder stays. Nothing runs
in a process after SIGKILL, so a small watcher does the cleanup:
`python -m scirl.launch.ray_reaper MARKER FOLDER DRIVER_PID` blocks on a pipe whose other end only the driver
holds; at EOF (the driver closed it or died) it kills every process whose environment carries
SCIRL_RAY_INSTANCE=MARKER (the instance's processes and the ranks inherit it from the driver) or that holds a file
under FOLDER open, then removes FOLDER. It ignores SIGINT / SIGTERM and lives in a session of its own, so a signal
to the driver's process group does not end it before the driver."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from scirl import procs

MARKER_VAR = "SCIRL_RAY_INSTANCE"


def start_reaper(marker: str, folder: str) -> subprocess.Popen:
    """Start the watcher; keep the returned Popen (its stdin is the pipe) open until the instance is shut down."""
    proc = subprocess.Popen([sys.executable, "-m", "scirl.launch.ray_reaper", marker, folder, str(os.getpid())],
                            stdin=subprocess.PIPE,
                            start_new_session=True, env={k: v for k, v in os.environ.items() if k != MARKER_VAR})
    procs.close_in_children(proc.stdin)  # a forked child holding the write end would keep the watcher waiting
    return proc


def stop_reaper(proc: subprocess.Popen) -> None:
    """The driver is done with the instance: the watcher sweeps (nothing should be left) and exits."""
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass


def _holds(proc: Path, folder: str) -> bool:
    """The process has a file under `folder` open (Ray's agents keep their logs there)."""
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd).startswith(folder + os.sep):
                return True
        except OSError:
            continue
    return False


def _marked(marker: str, folder: str, driver: int) -> list[int]:
    """The instance's processes: the marker in their environment, or (Ray's agents rewrite theirs with their
    process title) a file of the instance's folder open."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in (os.getpid(), driver):  # the driver may still be closing
            continue
        try:
            if needle in (p / "environ").read_bytes().split(b"\0") or _holds(p, folder):
                found.append(int(p.name))
        except OSError:
            continue
    return found


def sweep(marker: str, folder: str, driver: int) -> None:
    for _ in range(3):  # a process starting while we look is caught on the next pass
        pids = _marked(marker, folder, driver)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)
    shutil.rmtree(folder, ignore_errors=True)


def main(marker: str, folder: str, driver: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while sys.stdin.buffer.read(4096):
        pass
    sweep(marker, folder, driver)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
