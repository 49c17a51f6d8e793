"""metrics.jsonl: one JSON object per training step, appended and flushed as the run goes.

The run folder rules (scirl.train.run_folder) trim the file to the step a run resumes from before it is opened;
this writer only appends."""

from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # keep NaN/inf visible without writing invalid JSON
    return value


class MetricsWriter:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
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
