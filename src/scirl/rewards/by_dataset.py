"""The `dataset` reward: grade each sample with its own dataset's reward (math for AIME, mcq for SciKnowEval, ...).

This is what a mixture of sources needs: the loader stamps `sample.reward` / `sample.reward_info`, and this
dispatcher calls that reward with `{**sample.reward_info, **info}` (recipe `reward.kwargs` win).
"""

from __future__ import annotations

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, get_reward, register_reward


@register_reward("dataset")
def dataset_reward(sample: Sample, completion: str, info: dict) -> RewardResult:
    if not sample.reward:
        raise ScirlError(f"reward 'dataset': sample {sample.prompt_id!r} names no reward; set reward.name")
    if sample.reward == "dataset":
        raise ScirlError(f"reward 'dataset': sample {sample.prompt_id!r} names 'dataset' as its own reward")
    return get_reward(sample.reward)(sample, completion, {**sample.reward_info, **(info or {})})


def warm_up() -> None:
    """Import the heavy graders once in the parent, before reward workers fork."""
    from scirl.rewards import math_reward

    math_reward.warm_up()
