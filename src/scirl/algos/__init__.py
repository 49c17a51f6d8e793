"""RL algorithm building blocks: advantages, losses, aggregation, KL, rollout correction, DAPO, RLSD, SDPO, OPD."""

# imported so their functions register
from scirl.algos import advantages, cov_losses, dppo, pg_losses, policy_loss  # noqa: F401
from scirl.algos.aggregation import LOSS_AGG_MODES, aggregate_loss, global_denominator
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
from scirl.algos.rollout_correction import (
    normalize_is_weights,
    rollout_correction_metrics,
    rollout_is_weights,
    rollout_rs_mask,
    rollout_rs_masks,
)
from scirl.algos.utils import entropy_from_logits, masked_mean, masked_whiten
from scirl.algos.rlsd import rlsd_advantages, rlsd_lambda, rlsd_weight_stats  # also registers the "rlsd" loss
from scirl.algos.sdpo import generalized_jsd, sdpo_loss, topk_with_tail
from scirl.algos.opd import opd_diagnostics, opd_hybrid_advantages, opd_token_rewards, opd_topk_loss

# Losses over whole next-token distributions (teacher vs student) replace the policy gradient; they take other
# inputs than the PG losses, so the actor calls them itself (scirl.train.distill_losses). Registered so that
# `actor.policy_loss` can name them.
for _name, _fn in (("sdpo", sdpo_loss), ("opd_topk", opd_topk_loss)):
    _fn.needs_distributions = True
    register_policy_loss(_name)(_fn)

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "LOSS_AGG_MODES",
    "aggregate_loss",
    "global_denominator",
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
    "rollout_rs_masks",
    "normalize_is_weights",
    "rollout_correction_metrics",
    "overlong_penalty",
    "filter_groups",
    "rlsd_advantages",
    "rlsd_lambda",
    "rlsd_weight_stats",
    "topk_with_tail",
    "generalized_jsd",
    "sdpo_loss",
    "opd_token_rewards",
    "opd_topk_loss",
    "opd_diagnostics",
    "opd_hybrid_advantages",
]
