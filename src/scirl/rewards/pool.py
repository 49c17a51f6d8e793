"""RewardPool: score completions in persistent worker processes, killing any call that runs past its timeout.

Each worker runs one reward call at a time and talks to the parent over its own pipe. The parent dispatches
items to idle workers and waits (`multiprocessing.connection.wait`) until a result arrives or the nearest
deadline passes; a worker whose call is late is killed (SIGKILL), reaped and replaced, and that item scores
0.0 with components {"timeout": 1.0}. A reward that raises, or a worker that dies, scores 0.0 with
{"error": 1.0}. `workers=0` runs rewards inline in this process: exceptions are caught, but timeouts are NOT
enforced there. Workers are daemon processes, and every pool is closed at interpreter exit.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardFn, RewardResult, get_reward

Item = tuple[Sample, str, dict]


def _timeout_result() -> RewardResult:
    return RewardResult(0.0, {"timeout": 1.0}, None)


def _error_result() -> RewardResult:
    return RewardResult(0.0, {"error": 1.0}, None)


def _as_result(out: Any) -> RewardResult:
    if isinstance(out, RewardResult):
        return out
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        return RewardResult(float(out))
    raise TypeError(f"reward returned {type(out).__name__}, expected RewardResult")


def _worker_main(fn: RewardFn, conn: Connection) -> None:
    """Worker loop: receive (sample, completion, info), reply ("ok", RewardResult) or ("err", message)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        sample, completion, info = job
        try:
            reply = ("ok", _as_result(fn(sample, completion, info)))
        except BaseException:  # noqa: BLE001 - any failure of user code is an error result
            reply = ("err", traceback.format_exc(limit=5))
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send(("err", traceback.format_exc(limit=5)))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, fn: RewardFn) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(fn, child_conn), daemon=True, name="scirl-reward")
        self.proc.start()
        child_conn.close()
        self.conn: Connection = parent_conn

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5.0)
        self.conn.close()


def _default_start_method() -> str:
    return "fork" if sys.platform.startswith("linux") else "spawn"


class RewardPool:
    """Score (sample, completion, info) items with the registered reward `reward_name` in `workers` processes.

    `timeout` is per call, in seconds. `workers=0` runs inline with no timeout enforcement.
    `start_method` defaults to 'fork' on Linux and 'spawn' elsewhere (with 'spawn' the reward must be
    importable by its module path). Rewards must not use torch.
    """

    def __init__(self, reward_name: str, workers: int = 1, timeout: float = 5.0, start_method: str | None = None):
        if workers < 0:
            raise ScirlError(f"RewardPool workers must be >= 0, got {workers}")
        if not timeout > 0:
            raise ScirlError(f"RewardPool timeout must be > 0 seconds, got {timeout}")
        self.reward_name = reward_name
        self.fn: RewardFn = get_reward(reward_name)
        self.timeout = float(timeout)
        self.num_workers = workers
        self.last_error: str | None = None
        self._owner_pid = os.getpid()
        self._closed = False
        warm_up = getattr(sys.modules.get(getattr(self.fn, "__module__", ""), None), "warm_up", None)
        if workers and callable(warm_up):  # e.g. math: import math-verify once here, not in every forked worker
            warm_up()
        self._ctx = mp.get_context(start_method or _default_start_method()) if workers else None
        self._workers: list[_Worker] = [_Worker(self._ctx, self.fn) for _ in range(workers)]
        self._finalizer = weakref.finalize(self, RewardPool._shutdown, self._workers, self._owner_pid)

    # ------------------------------------------------------------------ public API
    def score(self, items: list[Item]) -> tuple[list[RewardResult], dict[str, int]]:
        """Score `items`; results come back in input order, with {"timeouts": n, "errors": n} for this call."""
        if self._closed:
            raise ScirlError("RewardPool.score called after close()")
        if not self._workers:
            return self._score_inline(items)
        items = list(items)
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item index, deadline)
        try:
            return self._score_workers(items, busy)
        except BaseException:
            # interrupted (e.g. Ctrl-C): busy workers would answer into the next call, so replace them
            for slot in list(busy):
                self._replace(slot)
            raise

    def close(self) -> None:
        """Stop the workers (politely, then by force) and reap them. Safe to call twice."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _score_inline(self, items: list[Item]) -> tuple[list[RewardResult], dict[str, int]]:
        results, errors = [], 0
        for sample, completion, info in items:
            try:
                results.append(_as_result(self.fn(sample, completion, info)))
            except Exception:  # noqa: BLE001
                self.last_error = traceback.format_exc(limit=5)
                results.append(_error_result())
                errors += 1
        return results, {"timeouts": 0, "errors": errors}

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = _Worker(self._ctx, self.fn)

    def _score_workers(
        self, items: list[Item], busy: dict[int, tuple[int, float]]
    ) -> tuple[list[RewardResult], dict[str, int]]:
        results: list[RewardResult | None] = [None] * len(items)
        stats = {"timeouts": 0, "errors": 0}
        todo = list(range(len(items) - 1, -1, -1))  # stack, popped in input order
        idle = list(range(len(self._workers) - 1, -1, -1))

        def fail(slot: int, kind: str) -> None:
            item_idx, _ = busy.pop(slot)
            results[item_idx] = _timeout_result() if kind == "timeouts" else _error_result()
            stats[kind] += 1
            self._replace(slot)
            idle.append(slot)

        while todo or busy:
            while todo and idle:
                slot = idle.pop()
                item_idx = todo[-1]
                try:
                    self._workers[slot].conn.send(items[item_idx])
                except OSError:  # the worker died while idle: replace it and retry the item
                    self._replace(slot)
                    idle.append(slot)
                    continue
                except Exception:  # noqa: BLE001 - the item cannot be pickled; nothing was written
                    self.last_error = traceback.format_exc(limit=5)
                    todo.pop()
                    results[item_idx] = _error_result()
                    stats["errors"] += 1
                    idle.append(slot)
                    continue
                todo.pop()
                busy[slot] = (item_idx, time.monotonic() + self.timeout)

            if not busy:
                continue
            wait_for = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
            conn_to_slot = {self._workers[s].conn: s for s in busy}
            for conn in wait(list(conn_to_slot), timeout=wait_for):
                slot = conn_to_slot[conn]
                try:
                    status, payload = conn.recv()
                except (EOFError, OSError):  # the worker died mid-call
                    self.last_error = f"reward worker {self._workers[slot].proc.pid} died during a call"
                    fail(slot, "errors")
                    continue
                item_idx, _ = busy.pop(slot)
                idle.append(slot)
                if status == "ok":
                    results[item_idx] = payload
                else:
                    self.last_error = payload
                    results[item_idx] = _error_result()
                    stats["errors"] += 1

            now = time.monotonic()
            for slot in [s for s, (_, deadline) in busy.items() if deadline <= now]:
                fail(slot, "timeouts")
        return results, stats  # type: ignore[return-value]

    @staticmethod
    def _shutdown(workers: list[_Worker], owner_pid: int, grace: float = 1.0) -> None:
        if os.getpid() != owner_pid:  # a forked copy of the pool does not own these processes
            return
        for w in workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + grace
        for w in workers:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            w.kill()
        workers.clear()
