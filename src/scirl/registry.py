"""Name -> function registries shared by every pluggable part (advantages, losses, rewards, datasets)."""

from __future__ import annotations

import difflib
from typing import Callable

from scirl.errors import ScirlError


def unknown_name_error(kind: str, name: str, known: list[str] | tuple[str, ...]) -> ScirlError:
    """A one-line ScirlError for an unknown registry key, with the closest known name when there is one."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ScirlError(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known) or '(none)'}")


def register_in(table: dict[str, Callable], kind: str, name: str) -> Callable[[Callable], Callable]:
    """Decorator factory: put the function into `table` under `name` (a different function twice is an error)."""

    def deco(fn: Callable) -> Callable:
        if name in table and table[name] is not fn:
            raise ScirlError(f"{kind} {name!r} is already registered")
        table[name] = fn
        return fn

    return deco


def lookup(table: dict[str, Callable], kind: str, name: str) -> Callable:
    try:
        return table[name]
    except (KeyError, TypeError):
        raise unknown_name_error(kind, name, list(table)) from None
