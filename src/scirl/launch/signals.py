"""A launcher's signal handling: the first SIGTERM / SIGINT is forwarded to the ranks (each checkpoints at its next
step boundary and exits 128 + signal), a second one ends them at once; either way the launcher exits 128 + signal
once the ranks are gone."""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ForwardSignals:
    """Context manager (main thread): on the first signal call `forward(signum)`, on a later one `kill_now(signum)`.
    `signum` holds the first signal received (None when none came)."""

    def __init__(self, forward: Callable[[int], None], kill_now: Callable[[int], None]):
        self.forward, self.kill_now = forward, kill_now
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"\nscirl: second {name}: stopping every rank now, without a checkpoint\n".encode())
            self.kill_now(signum)
            return
        self.signum = signum
        os.write(2, f"\nscirl: {name} received: every rank stops after this step with a checkpoint (send it again "
                    "to stop at once)\n".encode())
        self.forward(signum)

    def __enter__(self) -> "ForwardSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
