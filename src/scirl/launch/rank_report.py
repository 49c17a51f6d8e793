"""How a rank tells its launcher why it ended: at exit, `scirl` in a rank writes `rank<R>.json` ({"code", "error"})
into the folder named by SCIRL_RANK_REPORT_DIR; the launcher reads them to pass the first failing rank's exit code
and one-line error through (torchrun's own exit status is 1 for any failure; a Ray actor's process is not ours).
A rank killed by a signal writes nothing: its launcher reports the signal."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

REPORT_DIR = "SCIRL_RANK_REPORT_DIR"


def write_report(code: int, error: str) -> None:
    folder = os.environ.get(REPORT_DIR)
    if not folder or "RANK" not in os.environ:
        return
    try:
        path = Path(folder) / f"rank{int(os.environ['RANK'])}.json"
        path.write_text(json.dumps({"code": code, "error": error, "time": time.time()}))
    except (OSError, ValueError):
        pass  # the report only improves the launcher's message; the exit status still gets through


def read_report(folder: str | Path, rank: int) -> dict | None:
    try:
        return json.loads((Path(folder) / f"rank{rank}.json").read_text())
    except (OSError, ValueError):
        return None


def read_reports(folder: str | Path) -> dict[int, dict]:
    out = {}
    for path in Path(folder).glob("rank*.json"):
        rank = path.stem[4:]
        if rank.isdigit() and (report := read_report(folder, int(rank))) is not None:
            out[int(rank)] = report
    return dict(sorted(out.items()))


def describe_exit(code: int) -> str:
    """A process's exit status in words: `exit code 2`, `killed by SIGKILL`."""
    import signal

    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
