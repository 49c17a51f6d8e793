"""`SandboxPool`: `sandbox.workers` sandboxes (one uid each) shared by many threads; each run takes a free one.

The entry point for callers that run programs concurrently (tool calls of a batch of rollouts, code rewards):
`pool.run(code, stdin, timeout)` blocks until a worker is free; `pool.map(codes)` runs a list in parallel.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

from scirl.sandbox.runner import Result, Sandbox


class SandboxPool:
    def __init__(self, cfg=None, first_worker: int = 0):
        """Workers first_worker .. first_worker + cfg.workers - 1 (give each process of a job its own range)."""
        from scirl.config import SandboxConfig

        self.cfg = cfg if cfg is not None else SandboxConfig()
        self.boxes = [Sandbox(self.cfg, worker=first_worker + i) for i in range(self.cfg.workers)]
        self.tier = self.boxes[0].tier.name
        self._free: queue.Queue = queue.Queue()
        for box in self.boxes:
            self._free.put(box)

    def run(self, code: str, stdin: str = "", timeout: float | None = None) -> Result:
        box = self._free.get()
        try:
            return box.run(code, stdin=stdin, timeout=timeout)
        finally:
            self._free.put(box)

    def map(self, codes: list[str], stdins: list[str] | None = None, timeout: float | None = None) -> list[Result]:
        """Run every program, `workers` at a time; results in input order."""
        stdins = stdins if stdins is not None else [""] * len(codes)
        with ThreadPoolExecutor(len(self.boxes)) as ex:
            return list(ex.map(lambda cs: self.run(cs[0], cs[1], timeout), zip(codes, stdins)))
