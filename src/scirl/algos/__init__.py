"""RL algorithm building blocks: advantage estimators, policy losses and loss aggregation, looked up by name."""

from scirl.algos import advantages, policy_loss  # noqa: F401  (imported so their functions register)
from scirl.algos.aggregation import LOSS_AGG_MODES, aggregate_loss
from scirl.algos.registry import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    get_advantage_estimator,
    get_policy_loss,
    register_advantage,
    register_policy_loss,
)
from scirl.algos.utils import entropy_from_logits, masked_mean

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
    "entropy_from_logits",
]
