"""A launcher's signal handling: the first SIGTERM / SIGINT is forwarded to the ranks (each checkpoints at its next
step boundary and exits 128 + signal), a second one ends them at once; either way the launcher exits 128 + signal
once the ranks are gone."""

from __future__ import annotations

import os
import signal
from typing import Callable

from scirl.train.stop import SignalScope


class ForwardSignals(SignalScope):
    """Context manager (main thread): on the first signal call `forward(signum)`, on a later one `kill_now(signum)`.
    `signum` holds the first signal received (None when none came)."""

    def __init__(self, forward: Callable[[int], None], kill_now: Callable[[int], None]):
        super().__init__()
        self.forward, self.kill_now = forward, kill_now

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
