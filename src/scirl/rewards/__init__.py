"""Rewards: the registry of reward functions, the built-in rewards, and a killable process pool to run them."""

from scirl.rewards import boxed_numeric  # noqa: F401  (imported so it registers)
from scirl.rewards.base import REWARDS, RewardResult, get_reward, register_reward
from scirl.rewards.pool import RewardPool

__all__ = ["REWARDS", "RewardResult", "register_reward", "get_reward", "RewardPool"]
