"""Pathological completions through every registered plain-answer reward, in a real RewardPool.

Huge exponent towers, a megabyte of braces, deep \\frac nesting, unbalanced braces, lone surrogates and the empty
string must each come back as an ordinary low score (0, or the reward's minimum such as -1 for strict modes):
no exception out of the pool, no reward error, and no timeout: the rewards' own guards end each call (the pool's
120 s timeout only catches a real hang; no wall-clock bound, which a loaded machine would break). The rewards are whatever
`scirl.rewards` registers when the test runs, so rewards added later are covered automatically.
"""

import math
import time

import pytest
from conftest import nested_frac

from scirl.data.sample import Sample
from scirl.rewards import REWARDS, RewardPool

# rewards that do not take a plain answer (judge needs an endpoint, composite a PHYBench setup, overlong wraps)
SKIP = {"judge", "composite", "overlong"}
# per-reward (answer, info, allowed scores): an exact score for every pathological input, or a (low, high) range.
# Unlisted rewards get answer "10", no info, and must score in [-1, 0] (0, or a strict mode's minimum).
SETUP = {
    "mcq": ("B", {"choices": ["10", "20", "30", "40"]}, 0.0),
    "tcr": ("10", {"num_turns": 2}, -1.0),  # wrong with no tool call: the minimum
    "boxed_numeric": ("10", {}, 0.0),
    "math": ("10", {}, 0.0),
    "code_tests": ('{"inputs": ["1"], "outputs": ["10"]}', {}, 0.0),  # no fenced program in any: no_code, 0
    "dataset": ("10", {}, 0.0),  # dispatches to the sample's own reward, here math
    # answer-independent format rewards (a box is present / enough newlines): only robustness is checked
    "format_boxed": ("10", {}, (0.0, 1.0)),
    "trace_steps": ("10", {}, (0.0, 1.0)),
}
DEFAULT = ("10", {}, (-1.0, 0.0))




PATHOLOGICAL = {
    "tower": "the answer is \\boxed{10^{10^{10^{10}}}}",
    "tower_bare": "10^{10^{10^{10}}}",
    "mb_of_braces": "{" * 1_000_000,
    "boxed_mb_of_braces": "\\boxed{" + "{" * 1_000_000,
    "nested_frac": "\\boxed{" + nested_frac(200) + "}",  # equals 1, not 10
    "unbalanced": "\\boxed{1+{2",
    "unbalanced_closed": "so \\boxed{1+{2} and } }}",
    "huge_int": "\\boxed{" + "9" * 5000 + "}",
    "surrogate": "answer \\boxed{\udcff7} \ud800",
    "surrogateescape": b"\xff\xfe \\boxed{\xc3\x28} 9 \x80".decode("utf-8", errors="surrogateescape"),
    "empty": "",
}


def _plain_rewards() -> list[str]:
    return sorted(n for n in REWARDS if n not in SKIP and not n.startswith("test_"))


def test_the_known_rewards_are_covered():
    assert {"mcq", "tcr", "boxed_numeric"} <= set(_plain_rewards())


def test_pathological_battery():
    start = time.monotonic()
    report = []
    for name in _plain_rewards():
        answer, info, expected = SETUP.get(name, DEFAULT)
        sample = Sample(f"patho-{name}", [{"role": "user", "content": "q"}], answer)
        sample.reward = "math" if name == "dataset" else None
        keys = list(PATHOLOGICAL)
        items = [(sample, PATHOLOGICAL[k], dict(info)) for k in keys]
        t0 = time.monotonic()
        with RewardPool(name, workers=2, timeout=120) as pool:
            results, stats = pool.score(items)
            last_error = pool.last_error
        report.append((name, round(time.monotonic() - t0, 2), stats))
        assert stats == {"timeouts": 0, "errors": 0}, (name, stats, last_error)
        for key, res in zip(keys, results):
            assert isinstance(res.score, float) and math.isfinite(res.score), (name, key, res)
            if isinstance(expected, tuple):
                assert expected[0] <= res.score <= expected[1], (name, key, res)
            else:
                assert res.score == expected, (name, key, res)
            assert res.pred is None or isinstance(res.pred, str), (name, key, res)
            assert all(isinstance(v, (int, float)) for v in res.components.values()), (name, key, res)
    print("pathological battery:", report, f"total {time.monotonic() - start:.2f}s")


@pytest.mark.parametrize("name", ["mcq", "tcr", "boxed_numeric"])
def test_a_sane_answer_still_scores_after_the_battery(name):
    answer, info, _ = SETUP[name]
    good = {"mcq": "<answer>B</answer>", "tcr": "so \\boxed{10}", "boxed_numeric": "so \\boxed{10}"}[name]
    with RewardPool(name, workers=0) as pool:
        (res,), stats = pool.score([(Sample("p", [], answer), good, dict(info))])
    assert stats == {"timeouts": 0, "errors": 0} and res.score == 1.0
