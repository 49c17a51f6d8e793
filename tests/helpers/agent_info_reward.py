"""A test reward that shows what a multi-turn run hands its reward: score = info["num_turns"] / 10 (the tcr
reward's convention: 2 + 2 * tool rounds), the graded text itself as `pred`, the tool-call count as a component."""

from scirl.rewards.base import RewardResult


def score(sample, completion, info):
    return RewardResult(info["num_turns"] / 10, {"calls": float(info["num_tool_calls"])}, completion)
