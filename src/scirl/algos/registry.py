"""Name -> function registries for advantage estimators and policy losses (verl core_algos style).

A policy loss may carry two pieces of metadata, set by `register_policy_loss`:
  agg_mode       the aggregation verl always applies to it whatever `loss_agg_mode` says (GSPO, SAPO, GMPO);
                 the config must name that mode (checked at load)
  config_kwargs  keyword-only parameters the actor fills from `actor.policy_loss_kwargs` (verl's key names)
"""

from __future__ import annotations

from typing import Callable

from scirl.registry import lookup, register_in, unknown_name_error  # noqa: F401 (re-exported)

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}


def register_advantage(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register an advantage estimator under `name`."""
    return register_in(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(
    name: str, agg_mode: str | None = None, config_kwargs: tuple[str, ...] = ()
) -> Callable[[Callable], Callable]:
    """Decorator: register a policy loss under `name`, with its fixed `agg_mode` and `config_kwargs` (see above)."""
    register = register_in(POLICY_LOSSES, "policy loss", name)

    def deco(fn: Callable) -> Callable:
        fn.agg_mode = agg_mode
        fn.config_kwargs = tuple(config_kwargs)
        return register(fn)

    return deco


def get_advantage_estimator(name: str) -> Callable:
    """The estimator registered as `name`; ScirlError (with a suggestion) when unknown."""
    return lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable:
    """The policy loss registered as `name`; ScirlError (with a suggestion) when unknown."""
    return lookup(POLICY_LOSSES, "policy loss", name)
