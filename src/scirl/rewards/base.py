"""The reward interface: RewardResult, and the name -> reward-function registry (TRL-style plain callables).

A reward is `fn(sample: Sample, completion: str, info: dict) -> RewardResult`. It must be a module-level
function (so a worker process can run it) and must not use torch.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

from scirl.data.sample import Sample
from scirl.errors import ScirlError

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

    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ScirlError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return deco


def get_reward(name: str) -> RewardFn:
    """The reward registered as `name`; a one-line ScirlError naming the closest match when unknown."""
    try:
        return REWARDS[name]
    except (KeyError, TypeError):
        known = sorted(REWARDS)
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ScirlError(f"unknown reward {name!r}.{hint} Known: {', '.join(known) or '(none)'}") from None
