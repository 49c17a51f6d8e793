"""Name -> function registries for advantage estimators and policy losses (verl core_algos style)."""

from __future__ import annotations

from typing import Callable

from scirl.registry import lookup, register_in, unknown_name_error  # noqa: F401 (re-exported)

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}


def register_advantage(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register an advantage estimator under `name`."""
    return register_in(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register a policy loss under `name`."""
    return register_in(POLICY_LOSSES, "policy loss", name)


def get_advantage_estimator(name: str) -> Callable:
    """The estimator registered as `name`; ScirlError (with a suggestion) when unknown."""
    return lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable:
    """The policy loss registered as `name`; ScirlError (with a suggestion) when unknown."""
    return lookup(POLICY_LOSSES, "policy loss", name)
