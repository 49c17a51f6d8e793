"""Process lifetime: every process scirl starts dies with the process that started it, and holds none of its files.

Two mechanisms, used by every child scirl creates (reward workers, servers started by tests, later sandbox and
engine processes):

* `die_with_parent()`: run first in a child. On Linux it asks the kernel (prctl PR_SET_PDEATHSIG) to SIGKILL the
  child when its parent dies, kill -9 included, then checks that the parent did not die before the request
  (the race between fork and prctl). Elsewhere a daemon thread polls `os.getppid()`. The death signal follows the
  *thread* that forked the child, so fork from the main thread (or a thread that lives as long as the child).
* `close_in_children(obj)`: objects registered here (a pipe end the child must not hold, the run-folder lock) are
  closed in every forked child right after the fork (`os.register_at_fork`). A worker that keeps the parent's end
  of its own pipe never sees EOF; a worker that keeps the lock file open keeps the lock.

`popen(args, ...)` starts an exec'd child (a server, a trainer in a test) that dies with the caller.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any

PR_SET_PDEATHSIG = 1
_CLOSE_IN_CHILD: "weakref.WeakSet[Any]" = weakref.WeakSet()


def close_in_children(obj: Any) -> Any:
    """Register an object with a `close()` (a Connection, a file) to be closed in every forked child."""
    _CLOSE_IN_CHILD.add(obj)
    return obj


def _close_registered() -> None:
    for obj in list(_CLOSE_IN_CHILD):
        try:
            obj.close()
        except Exception:  # noqa: BLE001 - already closed, or a half-built object: nothing to hold
            pass
    _CLOSE_IN_CHILD.clear()


os.register_at_fork(after_in_child=_close_registered)


def _watch_parent(parent_pid: int, sig: int, interval: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os.kill(os.getpid(), sig)


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Make this (child) process receive `sig` when its parent dies. `parent_pid` (the parent's pid, read before
    the fork) closes the race where the parent died before this call: then the child exits at once."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)  # the parent is already gone
    if not armed:
        watched = parent_pid if parent_pid is not None else os.getppid()
        threading.Thread(target=_watch_parent, args=(watched, sig), daemon=True, name="scirl-parent-watch").start()


def _preexec(parent_pid: int) -> None:
    die_with_parent(parent_pid)


def popen(args: list[str], **kwargs: Any) -> subprocess.Popen:
    """subprocess.Popen whose child is killed when the calling process dies (SIGKILL, any cause)."""
    parent = os.getpid()
    return subprocess.Popen(args, preexec_fn=lambda: _preexec(parent), **kwargs)  # noqa: PLW1509
