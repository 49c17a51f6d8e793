"""The reward interface: RewardResult, and the name -> reward-function registry (TRL-style plain callables).

A reward is `fn(sample: Sample, completion: str, info: dict) -> RewardResult` (or a number). It must be a
module-level function (so a worker process can run it) and must not use torch. Besides the registered names,
`get_reward` accepts a reward of your own as `module:function` or `path/to/file.py:function` (rewards/user.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from scirl.data.sample import Sample
from scirl.errors import ScirlError
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
    """The reward registered as `name`, or the function a `module:function` / `path/to/file.py:function` spec
    names; a one-line ScirlError (naming the closest registered match, or what is wrong with the spec) otherwise."""
    if isinstance(name, str) and ":" in name and name not in REWARDS:
        from scirl.rewards.user import load_reward

        return load_reward(name)
    try:
        return lookup(REWARDS, "reward", name)
    except ScirlError as e:
        raise ScirlError(f"{e}; or a reward of your own: module:function or path/to/file.py:function") from None
