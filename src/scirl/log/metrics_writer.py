"""metrics.jsonl: one JSON object per training step, appended and flushed as the run goes (resume-safe)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # keep NaN/inf visible without writing invalid JSON
    return value


class MetricsWriter:
    def __init__(self, run_dir: Path, resume_from_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_from_step and self.path.exists():  # drop steps after the checkpoint we resume from
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= resume_from_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif not resume_from_step:
            self.path.write_text("")
        self.file = open(self.path, "a")

    def write(self, step: int, metrics: dict) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
