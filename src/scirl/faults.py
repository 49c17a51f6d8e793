"""Fault injection for crash tests: `SCIRL_FAULT=<point>` makes the process kill itself (SIGKILL) at that point.

Points are named where they sit (`ckpt:mid_save`: the checkpoint's model files are written, its trainer state is
not). `SCIRL_FAULT=<point>@<n>` fires on the n-th time the point is reached (default 1). Unset, a point costs one
dictionary lookup. With SCIRL_FAULT_RANK=<r> only rank r of a multi-process run (its RANK env var) fires. Used
by the tests that check what kill -9 at the worst moment leaves behind.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("SCIRL_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    only = os.environ.get("SCIRL_FAULT_RANK")
    if only is not None and os.environ.get("RANK", "0") != only:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
