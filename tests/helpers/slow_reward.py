"""A user reward with a fixed cost per call, as a judge's latency (`tests/helpers/slow_reward.py:score`): it sleeps
$SCIRL_TEST_REWARD_SECONDS (default 0.05 s), raises on a completion containing "boom", and otherwise scores the sum of
the completion's character codes modulo 7, scaled to [0, 1)."""

import os
import time


def score(sample, completion, info):
    time.sleep(float(os.environ.get("SCIRL_TEST_REWARD_SECONDS", "0.05")))
    if "boom" in completion:
        raise ValueError("boom")
    return (sum(map(ord, completion)) % 7) / 7
