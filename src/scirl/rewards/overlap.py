"""Sample and grade one batch, scoring each finished chunk of prompt groups while the engine generates the next.

`sample_and_score` is the one place the trainer (train/rollout_batch.py) and the evaluator (eval/runner.py) turn
prompts into graded rows. With `overlap` on it consumes `engine.stream(...)` (rollout.base.RolloutEngine: whole
prompt groups, as they finish, in any order) and hands each chunk to a `ChunkScorer`: one background thread that
calls `pool.score` on the chunks in the order they arrived. The reward pool's parent side mostly waits on its
workers' pipes, so the thread leaves the GIL to generation. When the stream ends, the scorer is joined and the rows
are put back in the canonical order `engine.generate` returns (prompt order, then sample index): everything
downstream sees the same Trajectories and the same scores as the sequential path (`overlap` off: generate, then
score), given the same generated rows. An engine without `stream` takes the sequential path.

Timings (`Scored.timing`, seconds):
- `generate`: wall time from the first request until the engine's last chunk arrived.
- `reward`: scoring wall time NOT hidden behind generation: from the last chunk's arrival until its score is in
  (sequential path: all of the scoring).
- `reward_overlapped`: scoring time that ran while the engine was still generating (0 on the sequential path).
`reward + reward_overlapped` is the scorer's busy time; only `generate + reward` adds to the step.

A failure on either side stops both: an exception in the scoring thread is raised by the caller's thread after
the stream; an exception (or Ctrl-C) while generating or waiting cancels the pool call in progress (its busy
workers are replaced, as after Ctrl-C in the pool itself), and is raised. Rewards must not use torch (the pool's
rule already): its global RNG is the sampler's, and inline rewards (reward.workers=0) run in the scoring thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult
from scirl.rollout.base import SamplingParams, Trajectories

ItemsOf = Callable[[Trajectories], list]  # a chunk's reward items: (sample, completion, info) per row


@dataclass
class Scored:
    traj: Trajectories  # canonical row order (prompt order, then sample index), as engine.generate returns it
    results: list[RewardResult]  # one per row of traj
    stats: dict[str, int]  # {"timeouts": n, "errors": n} over the whole batch
    timing: dict[str, float] = field(default_factory=dict)  # generate / reward / reward_overlapped (module doc)
    spans: list[tuple[float, float, float]] = field(default_factory=list)  # per chunk: arrived, scoring start, end


class ChunkScorer:
    """Scores submitted chunks with `pool.score` in one background thread, in submission order."""

    def __init__(self, pool, items_of: ItemsOf):
        self.pool, self.items_of = pool, items_of
        self.scored: list[tuple[list[RewardResult], dict]] = []  # per submitted chunk, in submission order
        self.spans: list[tuple[float, float, float]] = []  # per chunk (perf_counter): submitted, started, finished
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="scirl-reward-overlap", daemon=True)
        self._thread.start()

    def submit(self, chunk: Trajectories) -> None:
        self._queue.put((chunk, time.perf_counter()))

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._stop.is_set():
                return
            chunk, submitted = job
            started = time.perf_counter()
            try:
                self.scored.append(self.pool.score(self.items_of(chunk)))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread by join()
                self._error = e
                return
            self.spans.append((submitted, started, time.perf_counter()))

    def join(self) -> list[tuple[list[RewardResult], dict]]:
        """Wait until every submitted chunk is scored; the per-chunk (results, stats), or the thread's exception."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.scored

    def abort(self) -> None:
        """Stop scoring: the pool call in progress is cancelled (RewardPool.cancel, when the pool has it; else it
        runs to its end), then the thread is joined and the pool re-armed."""
        self._stop.set()
        cancel = getattr(self.pool, "cancel", None)
        if callable(cancel):
            cancel(True)
        self._queue.put(None)
        self._thread.join()
        if callable(cancel):
            cancel(False)


def sample_and_score(engine, pool, prompts: list[list[int]], uids: list[str], sampling: SamplingParams,
                     items_of: ItemsOf, overlap: bool = True) -> Scored:
    """Generate `sampling.n` rows per prompt with `engine` and score them with `pool` (module doc)."""
    t0 = time.perf_counter()
    if not overlap or not hasattr(engine, "stream"):  # an engine with only `generate` (a test double) scores after
        traj = engine.generate(prompts, uids, sampling)
        t1 = time.perf_counter()
        results, stats = pool.score(items_of(traj))
        t2 = time.perf_counter()
        return Scored(traj, results, dict(stats), {"generate": t1 - t0, "reward": t2 - t1, "reward_overlapped": 0.0},
                      [(t1, t1, t2)])
    scorer = ChunkScorer(pool, items_of)
    chunks: list[Trajectories] = []
    try:
        for chunk in engine.stream(prompts, uids, sampling):
            chunks.append(chunk)
            scorer.submit(chunk)
        t1 = time.perf_counter()
        scored = scorer.join()
    except BaseException:
        scorer.abort()
        raise
    t2 = time.perf_counter()
    order = canonical_order(chunks, uids, sampling.n)
    traj = Trajectories.concat(chunks).select(order)
    flat = [r for results, _ in scored for r in results]
    stats = {k: sum(int(s.get(k, 0)) for _, s in scored) for k in ("timeouts", "errors")}
    hidden = sum(max(0.0, min(end, t1) - max(start, t0)) for _, start, end in scorer.spans)
    return Scored(traj, [flat[i] for i in order], stats,
                  {"generate": t1 - t0, "reward": t2 - t1, "reward_overlapped": hidden}, scorer.spans)


def canonical_order(chunks: list[Trajectories], uids: list[str], n: int) -> list[int]:
    """The row permutation that puts the concatenated `chunks` in generate's order (prompt order, then sample
    index); refuses a stream that yields a row twice, misses one, or yields an unknown uid."""
    position = {u: i for i, u in enumerate(uids)}
    keys = [(position.get(u, -1), j) for c in chunks for u, j in zip(c.uid, c.sample_index)]
    expected = [(i, j) for i in range(len(uids)) for j in range(n)]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    if [keys[i] for i in order] != expected:
        counts = Counter(keys)
        bad = sorted({k for k in keys if counts[k] > 1 or k[0] < 0} | set(expected) - set(keys))[:3]
        got = [(uids[i] if i >= 0 else "?", j) for i, j in bad]
        raise ScirlError(f"engine.stream yielded {len(keys)} rows for {len(uids)} prompts x n={n} = {len(expected)} "
                         f"(a row missing, repeated or unknown, e.g. (uid, sample) {got}): each prompt group must "
                         "come exactly once")
    return order
