"""Name -> function registries for advantage estimators and policy losses (verl core_algos style)."""

from __future__ import annotations

import difflib
from typing import Callable

from scirl.errors import ScirlError

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}


def _register(table: dict[str, Callable], kind: str, name: str) -> Callable[[Callable], Callable]:
    def deco(fn: Callable) -> Callable:
        if name in table and table[name] is not fn:
            raise ScirlError(f"{kind} {name!r} is already registered")
        table[name] = fn
        return fn

    return deco


def unknown_name_error(kind: str, name: str, known: list[str] | tuple[str, ...]) -> ScirlError:
    """A one-line ScirlError for an unknown registry key, with the closest known name when there is one."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ScirlError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known) or '(none)'}")


def _lookup(table: dict[str, Callable], kind: str, name: str) -> Callable:
    try:
        return table[name]
    except (KeyError, TypeError):
        raise unknown_name_error(kind, name, list(table)) from None


def register_advantage(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register an advantage estimator under `name`."""
    return _register(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register a policy loss under `name`."""
    return _register(POLICY_LOSSES, "policy loss", name)


def get_advantage_estimator(name: str) -> Callable:
    """The estimator registered as `name`; ScirlError (with a suggestion) when unknown."""
    return _lookup(ADVANTAGE_ESTIMATORS, "advantage estimator", name)


def get_policy_loss(name: str) -> Callable:
    """The policy loss registered as `name`; ScirlError (with a suggestion) when unknown."""
    return _lookup(POLICY_LOSSES, "policy loss", name)
