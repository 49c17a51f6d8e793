"""RL algorithm building blocks: advantage estimators, policy losses, aggregation, KL, rollout correction, DAPO."""

from scirl.algos import advantages, policy_loss  # noqa: F401  (imported so their functions register)
from scirl.algos.aggregation import LOSS_AGG_MODES, aggregate_loss
from scirl.algos.dynamic_sampling import filter_groups
from scirl.algos.kl import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
    make_kl_controller,
)
from scirl.algos.overlong import overlong_penalty
from scirl.algos.registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    get_advantage_estimator,
    get_policy_loss,
    register_advantage,
    register_policy_loss,
)
from scirl.algos.rollout_correction import rollout_correction_metrics, rollout_is_weights, rollout_rs_mask
from scirl.algos.utils import entropy_from_logits, masked_mean, masked_whiten

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "LOSS_AGG_MODES",
    "aggregate_loss",
    "get_advantage_estimator",
    "get_policy_loss",
    "register_advantage",
    "register_policy_loss",
    "masked_mean",
    "masked_whiten",
    "entropy_from_logits",
    "kl_penalty",
    "KL_KINDS",
    "FixedKLController",
    "AdaptiveKLController",
    "make_kl_controller",
    "rollout_is_weights",
    "rollout_rs_mask",
    "rollout_correction_metrics",
    "overlong_penalty",
    "filter_groups",
]
