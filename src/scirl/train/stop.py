"""Stopping a run on request: SIGTERM (Slurm, Kubernetes, `timeout`) or Ctrl-C asks the run to stop at the next
step boundary, where it writes a checkpoint; a second signal exits at once.

`RunStopped` carries the exit status (128 + the signal number, as a shell reports a death by that signal).
"""

from __future__ import annotations

import os
import signal
import threading

from scirl.errors import ScirlError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(ScirlError):
    """The run stopped early on a signal; `exit_code` is 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class SignalScope:
    """Context manager: while active, SIGTERM / SIGINT call `self._handle` (main thread only; elsewhere, and when
    `enabled` is false, the handlers are left alone); on exit the previous handlers come back. `signum` holds the
    first signal received."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: object) -> None:
        raise NotImplementedError

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class GracefulStop(SignalScope):
    """While active, SIGTERM / SIGINT set `signum` instead of killing the process; a second one exits at once."""

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:  # the second signal: no checkpoint, no cleanup beyond what the kernel does
            os.write(2, f"\nscirl: second {name}: exiting now, without a checkpoint\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        if os.environ.get("RANK", "0") != "0":
            return  # one line per run, not one per rank
        os.write(2, f"\nscirl: {name} received: stopping after this step with a checkpoint (send it again to exit "
                    "at once)\n".encode())


def stop_signal(stop: GracefulStop) -> int:
    """The signal that asked any rank to stop (0: none), the same on every rank: all stop at this boundary."""
    from scirl import dist

    if dist.world_size() == 1:
        return stop.signum or 0
    import torch

    return int(dist.all_reduce_max(torch.tensor(stop.signum or 0)).item())
