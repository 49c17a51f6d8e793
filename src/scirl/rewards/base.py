"""The reward interface: RewardResult, and the name -> reward-function registry (TRL-style plain callables).

A reward is `fn(sample: Sample, completion: str, info: dict) -> RewardResult`. It must be a module-level
function (so a worker process can run it) and must not use torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from scirl.data.sample import Sample
from scirl.registry import lookup, register_in

RewardFn = Callable[[Sample, str, dict], "RewardResult"]


@dataclass
class RewardResult:
    """One scored completion: the scalar `score`, named `components` (logged), and the extracted `pred`
    (the answer the completion commits to, used for majority voting; None when there is none)."""

    score: float
    components: dict[str, float] = field(default_factory=dict)
    pred: str | None = None


REWARDS: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register a reward function under `name`."""
    return register_in(REWARDS, "reward", name)


def get_reward(name: str) -> RewardFn:
    """The reward registered as `name`; a one-line ScirlError naming the closest match when unknown."""
    return lookup(REWARDS, "reward", name)
