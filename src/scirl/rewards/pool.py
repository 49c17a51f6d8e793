"""RewardPool: score completions in persistent worker processes, killing any call that runs past its timeout.

Each worker runs one reward call at a time and talks to the parent over its own pipe. The parent dispatches
items to idle workers and waits (`multiprocessing.connection.wait`) until a result arrives or the nearest
deadline passes; a worker whose call is late is killed (SIGKILL), reaped and replaced, and that item scores
0.0 with components {"timeout": 1.0}. A reward that raises, returns something that is not a finite number
(`user.to_result`), or a worker that dies, scores 0.0 with {"error": 1.0}. `workers=0` runs rewards inline in
this process: exceptions are caught, but timeouts are NOT enforced there.

Errors are counted per call (`score()`'s stats) and over the pool's life (`errors_total`); the first failure's
traceback is kept (`first_error`, handed out once by `take_first_error()`) and the latest in `last_error`.
`error_report()` turns them into the console lines the trainer prints.

`cancel()` (from another thread: the overlap scorer, rewards/overlap.py, when generation fails) makes the call in
progress stop within 50 ms: its busy workers are replaced, as after Ctrl-C, and it raises ScoringCancelled.

Lifetime: workers die with the process that started them. Each worker arms a parent-death signal first
(`procs.die_with_parent`), every parent-side pipe end is registered with `procs.close_in_children` before the next
worker forks (so no worker holds its own or another worker's parent end, and a recv() sees EOF when the parent
is gone), and workers ignore SIGINT and SIGTERM: a signal sent to the whole job reaches the trainer, which
decides when its workers stop (close(), or its own death). Every pool is closed at interpreter exit.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.procs import close_in_children, die_with_parent
from scirl.rewards.base import RewardFn, RewardResult, get_reward
from scirl.rewards.user import BadRewardValue, canonical_spec, is_spec, to_result

Item = tuple[Sample, str, dict]
POLL = 0.05  # seconds between checks for cancel() while waiting on workers


class ScoringCancelled(ScirlError):
    """RewardPool.score stopped by cancel()."""


def _timeout_result() -> RewardResult:
    return RewardResult(0.0, {"timeout": 1.0}, None)


def _error_result() -> RewardResult:
    return RewardResult(0.0, {"error": 1.0}, None)


def _failure_text(e: BaseException) -> str:
    """A bad return value is explained in one line; an exception raised by the reward keeps its traceback."""
    if isinstance(e, BadRewardValue):
        return f"{type(e).__name__}: {e}"
    return traceback.format_exc(limit=5)


def _worker_main(reward: RewardFn | str, conn: Connection, parent_pid: int | None) -> None:
    """Worker loop: receive (sample, completion, info), reply ("ok", RewardResult) or ("err", message).

    `reward` is the function itself (forked workers, importable functions) or a spec string that is resolved
    here (a user file under the spawn start method)."""
    die_with_parent(parent_pid)  # first: from here on, the parent's death is this worker's death
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and a job-wide SIGTERM are the parent's business
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fn: RewardFn | None = None
    load_error = None
    try:
        fn = get_reward(reward) if isinstance(reward, str) else reward
    except BaseException:  # noqa: BLE001 - every call then answers with this error
        load_error = traceback.format_exc(limit=5)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        sample, completion, info = job
        if fn is None:
            reply = ("err", load_error)
        else:
            try:
                reply = ("ok", to_result(fn(sample, completion, info)))
            except BaseException as e:  # noqa: BLE001 - any failure of user code is an error result
                reply = ("err", _failure_text(e))
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send(("err", traceback.format_exc(limit=5)))


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, target: RewardFn | str, parent_pid: int | None) -> None:
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        close_in_children(parent_conn)  # before the fork: this worker and all later ones close the parent's end
        self.proc = ctx.Process(target=_worker_main, args=(target, child_conn, parent_pid), daemon=True,
                                name="scirl-reward")
        try:
            self.proc.start()
        finally:
            child_conn.close()  # only the worker holds its end: later workers never inherit it
        self.conn: Connection = parent_conn

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5.0)
        self.conn.close()


def _default_start_method() -> str:
    return "fork" if sys.platform.startswith("linux") else "spawn"


class RewardPool:
    """Score (sample, completion, info) items with the reward `reward_name` (a registered name, or a
    `module:function` / `path/to/file.py:function` spec) in `workers` processes.

    `timeout` is per call, in seconds. `workers=0` runs inline with no timeout enforcement.
    `start_method` defaults to 'fork' on Linux and 'spawn' elsewhere (with 'spawn' a registered reward must be
    importable by its module path; a spec is resolved again in each worker). Rewards must not use torch.
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
        self.last_error: str | None = None  # the latest failure (traceback or message)
        self.first_error: str | None = None  # the first failure over the pool's life
        self._first_error_taken = False
        self.errors_total = 0
        self.timeouts_total = 0
        self._owner_pid = os.getpid()
        self._closed = False
        self._cancel = threading.Event()
        warm_up = getattr(sys.modules.get(getattr(self.fn, "__module__", ""), None), "warm_up", None)
        if workers and callable(warm_up):  # e.g. math: import math-verify once here, not in every forked worker
            warm_up()
        method = start_method or _default_start_method()
        self._ctx = mp.get_context(method) if workers else None
        # a spawned worker cannot unpickle a function from a file loaded here: it resolves the spec itself
        self._target: RewardFn | str = canonical_spec(reward_name) if is_spec(reward_name) and method != "fork" \
            else self.fn
        # the pid a worker checks its parent against (a forkserver child's parent is the server, not us)
        self._parent_pid = self._owner_pid if method in ("fork", "spawn") else None
        self._workers: list[_Worker] = [self._new_worker() for _ in range(workers)]
        self._finalizer = weakref.finalize(self, RewardPool._shutdown, self._workers, self._owner_pid)

    # ------------------------------------------------------------------ public API
    def score(self, items: list[Item], on_progress: Callable[[int], None] | None = None
              ) -> tuple[list[RewardResult], dict[str, int]]:
        """Score `items`; results come back in input order, with {"timeouts": n, "errors": n} for this call.
        `on_progress(n)` is told the number of items finished so far whenever it grows (a progress bar)."""
        if self._closed:
            raise ScirlError("RewardPool.score called after close()")
        on_progress = on_progress or (lambda n: None)
        if not self._workers:
            results, stats = self._score_inline(items, on_progress)
        else:
            items = list(items)
            busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item index, deadline)
            try:
                results, stats = self._score_workers(items, busy, on_progress)
            except BaseException:
                # interrupted (e.g. Ctrl-C): busy workers would answer into the next call, so replace them
                for slot in list(busy):
                    self._replace(slot)
                raise
        self.errors_total += stats["errors"]
        self.timeouts_total += stats["timeouts"]
        return results, stats

    def cancel(self, on: bool = True) -> None:
        """Stop the score() call in progress (in another thread) and any started while on; cancel(False) re-arms."""
        if on:
            self._cancel.set()
        else:
            self._cancel.clear()

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise ScoringCancelled("reward scoring cancelled")

    @property
    def worker_pids(self) -> list[int]:
        """The pids of the live worker processes (empty for workers=0)."""
        return [w.proc.pid for w in self._workers]

    def take_first_error(self) -> str | None:
        """The first failure's traceback of this pool's life, once; None afterwards (and before any failure)."""
        if self._first_error_taken or self.first_error is None:
            return None
        self._first_error_taken = True
        return self.first_error

    def close(self) -> None:
        """Stop the workers (politely, then by force) and reap them. Safe to call twice."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _note_error(self, text: str | None) -> None:
        self.last_error = text
        if self.first_error is None:
            self.first_error = text

    def _score_inline(self, items: list[Item], on_progress) -> tuple[list[RewardResult], dict[str, int]]:
        results, errors = [], 0
        for sample, completion, info in items:
            self._check_cancel()
            try:
                results.append(to_result(self.fn(sample, completion, info)))
            except Exception as e:  # noqa: BLE001
                self._note_error(_failure_text(e))
                results.append(_error_result())
                errors += 1
            on_progress(len(results))
        return results, {"timeouts": 0, "errors": errors}

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self._target, self._parent_pid)

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = self._new_worker()

    def _score_workers(
        self, items: list[Item], busy: dict[int, tuple[int, float]], on_progress
    ) -> tuple[list[RewardResult], dict[str, int]]:
        results: list[RewardResult | None] = [None] * len(items)
        stats = {"timeouts": 0, "errors": 0}
        todo = list(range(len(items) - 1, -1, -1))  # stack, popped in input order
        idle = list(range(len(self._workers) - 1, -1, -1))
        finished = 0

        def fail(slot: int, kind: str) -> None:
            item_idx, _ = busy.pop(slot)
            results[item_idx] = _timeout_result() if kind == "timeouts" else _error_result()
            stats[kind] += 1
            self._replace(slot)
            idle.append(slot)

        while todo or busy:
            self._check_cancel()
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
                    self._note_error(traceback.format_exc(limit=5))
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
            for conn in wait(list(conn_to_slot), timeout=min(wait_for, POLL)):
                slot = conn_to_slot[conn]
                try:
                    status, payload = conn.recv()
                except (EOFError, OSError):  # the worker died mid-call
                    self._note_error(f"reward worker {self._workers[slot].proc.pid} died during a call")
                    fail(slot, "errors")
                    continue
                item_idx, _ = busy.pop(slot)
                idle.append(slot)
                if status == "ok":
                    results[item_idx] = payload
                else:
                    self._note_error(payload)
                    results[item_idx] = _error_result()
                    stats["errors"] += 1

            now = time.monotonic()
            for slot in [s for s, (_, deadline) in busy.items() if deadline <= now]:
                fail(slot, "timeouts")
            if len(items) - len(todo) - len(busy) > finished:
                finished = len(items) - len(todo) - len(busy)
                on_progress(finished)
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


def error_report(pool: Any, stats: dict, calls: int, where: str = "this step") -> list[str]:
    """Console lines for one scoring call: the pool's first failure (its traceback, once per pool), then how many
    of `calls` failed or timed out `where`. Empty when nothing went wrong. Works with any object that has
    `take_first_error()` and `reward_name` (a RewardPool); other pools only get the counts."""
    lines = []
    errors, timeouts = int(stats.get("errors", 0)), int(stats.get("timeouts", 0))
    name = getattr(pool, "reward_name", "?")
    take = getattr(pool, "take_first_error", None)
    first = take() if callable(take) else None
    if first:
        lines.append(f"reward {name!r} failed; its first failure in this run (later ones are only counted, and "
                     f"score 0):\n{first.rstrip()}")
    if errors:
        lines.append(f"reward: {errors} of {calls} calls failed {where} (scored 0; first traceback above)")
    if timeouts:
        lines.append(f"reward: {timeouts} of {calls} calls timed out {where} (scored 0; "
                     f"reward.timeout={getattr(pool, 'timeout', '?')} s)")
    return lines
