"""Rewards: boxed_numeric extraction and scoring, the registry, and RewardPool (parity, timeouts, errors)."""

import os
import time

import pytest

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards import REWARDS, RewardPool, RewardResult, get_reward, register_reward
from scirl.rewards.boxed_numeric import boxed_numeric, last_boxed, parse_number


# --- test rewards, registered at import time so forked workers inherit them ----------------------------
@register_reward("test_sleepy")
def _sleepy(sample, completion, info):
    if completion == "sleep":  # a call far longer than any timeout below: only the pool's kill ends it early
        time.sleep(60)
    return RewardResult(1.0, {"fast": 1.0}, completion)


@register_reward("test_raises")
def _raises(sample, completion, info):
    if completion == "boom":
        raise ValueError("boom")
    return RewardResult(0.5)


@register_reward("test_dies")
def _dies(sample, completion, info):
    if completion == "die":
        os._exit(3)
    return RewardResult(0.25)


def _s(answer="12"):
    return Sample(prompt_id="p", messages=[{"role": "user", "content": "q"}], answer=answer)


def _gone(pid: int) -> bool:
    """True when the process is not just dead but reaped (no zombie left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --- boxed_numeric ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "completion,answer,score,pred",
    [
        (r"so \boxed{12}", "12", 1.0, "12"),
        (r"so \boxed{12.0}", "12", 1.0, "12.0"),
        (r"\boxed{ 1,000 }", "1000", 1.0, " 1,000 "),
        (r"\boxed{$-3$}", "-3", 1.0, "$-3$"),
        (r"\boxed{1/2}", "0.5", 1.0, "1/2"),
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0, r"\frac{1}{2}"),
        (r"\boxed{-\dfrac{3}{4}}", "-0.75", 1.0, r"-\dfrac{3}{4}"),
        (r"\boxed{x = 7}", "7", 1.0, "x = 7"),
        (r"first \boxed{3} then \boxed{12}", "12", 1.0, "12"),
        (r"first \boxed{12} then \boxed{3}", "12", 0.0, "3"),
        (r"\boxed{13}", "12", 0.0, "13"),
        (r"\boxed{twelve}", "12", 0.0, "twelve"),
        ("the answer is 12", "12", 0.0, None),
        (r"\boxed{12", "12", 0.0, None),
        (r"\boxed{12.0001}", "12", 1.0, "12.0001"),  # within rel_tol 1e-4
        (r"\boxed{12.01}", "12", 0.0, "12.01"),
    ],
)
def test_boxed_numeric(completion, answer, score, pred):
    r = boxed_numeric(_s(answer), completion, {})
    assert r.score == score and r.pred == pred
    assert r.components == {"acc": score, "has_box": 0.0 if pred is None else 1.0}


def test_boxed_numeric_tolerances_from_info():
    assert boxed_numeric(_s("12"), r"\boxed{12.01}", {"rel_tol": 1e-2}).score == 1.0
    assert boxed_numeric(_s("0"), r"\boxed{0.001}", {"abs_tol": 1e-2}).score == 1.0
    assert boxed_numeric(_s("0"), r"\boxed{0.001}", {}).score == 0.0


def test_bad_reference_answer():
    with pytest.raises(ScirlError, match="not a number"):
        boxed_numeric(_s("twelve"), r"\boxed{12}", {})


def test_last_boxed_nesting():
    assert last_boxed(r"x \boxed{\frac{a}{b^{2}}} y") == r"\frac{a}{b^{2}}"
    assert last_boxed(r"\fbox{5}") == "5"
    assert last_boxed("nothing") is None
    assert parse_number(r"\frac{1}{0}") is None and parse_number("--5") is None


# --- registry -----------------------------------------------------------------------------------------
def test_registry():
    assert REWARDS["boxed_numeric"] is boxed_numeric
    assert get_reward("boxed_numeric") is boxed_numeric
    with pytest.raises(ScirlError) as e:
        get_reward("boxed_numerc")
    assert "Did you mean 'boxed_numeric'" in str(e.value)
    with pytest.raises(ScirlError, match="boxed_numeric"):
        RewardPool("boxed_numerik", workers=0)


# --- pool ---------------------------------------------------------------------------------------------
def _batch(n=100):
    items = []
    for i in range(n):
        ans = str(i)
        kind = i % 4
        text = {0: rf"\boxed{{{i}}}", 1: rf"\boxed{{{i + 1}}}", 2: "no box", 3: rf"\boxed{{{2 * i}/2}}"}[kind]
        items.append((Sample(f"p{i}", [], ans), text, {}))
    return items


def test_pool_matches_inline():
    items = _batch(100)
    inline, inline_stats = RewardPool("boxed_numeric", workers=0).score(items)
    with RewardPool("boxed_numeric", workers=2) as pool:
        pooled, stats = pool.score(items)
    assert pooled == inline
    assert stats == inline_stats == {"timeouts": 0, "errors": 0}
    assert [r.score for r in pooled[:4]] == [1.0, 0.0, 0.0, 1.0]


def test_timeout_kills_worker_and_pool_recovers():
    """No stopwatch: had the pool not killed the 60 s call at its timeout, that item would come back as a normal
    result ({"fast": 1.0}) instead of a timeout. The timeout (3 s) is far above what a fast call needs."""
    items = [(_s(), "a", {}), (_s(), "sleep", {}), (_s(), "b", {})]
    with RewardPool("test_sleepy", workers=2, timeout=3.0) as pool:
        pids = [w.proc.pid for w in pool._workers]
        results, stats = pool.score(items)
        assert stats == {"timeouts": 1, "errors": 0}
        assert results[0] == RewardResult(1.0, {"fast": 1.0}, "a")
        assert results[1] == RewardResult(0.0, {"timeout": 1.0}, None)
        assert results[2].pred == "b"
        killed = [p for p in pids if p not in {w.proc.pid for w in pool._workers}]
        assert len(killed) == 1 and _gone(killed[0])
        # the same pool keeps working
        results, stats = pool.score([(_s(), "c", {}), (_s(), "d", {})])
        assert [r.pred for r in results] == ["c", "d"] and stats == {"timeouts": 0, "errors": 0}
        live = [w.proc.pid for w in pool._workers]
    assert all(_gone(p) for p in live)  # close() reaps everything


def test_exception_counts_as_error():
    items = [(_s(), "ok", {}), (_s(), "boom", {}), (_s(), "ok", {})]
    with RewardPool("test_raises", workers=1) as pool:
        results, stats = pool.score(items)
        assert stats == {"timeouts": 0, "errors": 1}
        assert [r.score for r in results] == [0.5, 0.0, 0.5]
        assert results[1].components == {"error": 1.0}
        assert "ValueError: boom" in pool.last_error
    results, stats = RewardPool("test_raises", workers=0).score(items)
    assert stats == {"timeouts": 0, "errors": 1} and [r.score for r in results] == [0.5, 0.0, 0.5]


def test_dead_worker_counts_as_error_and_is_replaced():
    """A worker's death is seen at once (EOF on its pipe), not at the call's deadline: with a 120 s timeout, a
    pool that waited for the deadline would report a timeout, not an error."""
    with RewardPool("test_dies", workers=1, timeout=120.0) as pool:
        pid = pool.worker_pids[0]
        results, stats = pool.score([(_s(), "die", {}), (_s(), "fine", {})])
        assert stats == {"timeouts": 0, "errors": 1}
        assert [r.score for r in results] == [0.0, 0.25]
        assert pool.worker_pids[0] != pid and _gone(pid)
        assert "died during a call" in pool.first_error


def test_empty_batch_and_closed_pool():
    pool = RewardPool("boxed_numeric", workers=1)
    assert pool.score([]) == ([], {"timeouts": 0, "errors": 0})
    pool.close()
    pool.close()
    with pytest.raises(ScirlError):
        pool.score([(_s(), "x", {})])
