"""Rewards: the registry of reward functions, the built-in rewards, and a killable process pool to run them."""

from scirl.rewards import boxed_numeric  # noqa: F401  (imported so it registers)
from scirl.rewards import math_reward  # noqa: F401
from scirl.rewards import mcq  # noqa: F401
from scirl.rewards import overlong  # noqa: F401
from scirl.rewards import tcr  # noqa: F401
from scirl.rewards import judge  # noqa: F401
from scirl.rewards import eed  # noqa: F401
from scirl.rewards import format_trace  # noqa: F401
from scirl.rewards import composite  # noqa: F401
from scirl.rewards import by_dataset  # noqa: F401
from scirl.rewards import code_tests  # noqa: F401
from scirl.rewards.base import REWARDS, RewardResult, get_reward, register_reward
from scirl.rewards.pool import RewardPool

__all__ = ["REWARDS", "RewardResult", "register_reward", "get_reward", "RewardPool"]
