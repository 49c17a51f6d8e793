"""Rewards of your own: `reward.name=my_rewards:score` or `reward.name=path/to/file.py:score`, and the coercion
of whatever a reward returns into a trustworthy RewardResult.

A spec is `MODULE:FUNCTION` (an importable module; the working directory is appended to sys.path, so a
`my_rewards.py` next to where you run `scirl` is found) or `PATH.py:FUNCTION` (a file, relative to the working
directory or absolute). FUNCTION may be dotted (`Class.method`). A file is loaded once per process and kept in
sys.modules under a name derived from its absolute path; spawned reward workers load it again from
`canonical_spec()` (the absolute path), forked ones inherit it. Any failure is a one-line ScirlError naming the
spec: no such file or module, the import raised, no such attribute, not callable.

`to_result(out)` accepts a RewardResult, or anything `float()` accepts (TRL-style: int, float, bool, numpy
scalars, "1.0"), and makes score a finite float, component values floats and pred a str or None. Anything else
(None, "abc", NaN, inf) raises BadRewardValue, which RewardPool counts as a per-row error (score 0).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult


class BadRewardValue(ValueError):
    """A reward returned something that is not a score (None, "abc", NaN, a non-numeric component)."""


def is_spec(name: object) -> bool:
    """Whether `name` names a user reward (`module:function` or `file.py:function`) rather than a registered one."""
    return isinstance(name, str) and ":" in name


def _split(spec: str) -> tuple[str, str]:
    target, _, attr = spec.rpartition(":")
    if not target.strip() or not attr.strip():
        raise ScirlError(f"reward {spec!r}: expected module:function or path/to/file.py:function")
    return target.strip(), attr.strip()


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def canonical_spec(spec: str) -> str:
    """The spec with a file path made absolute (what a spawned worker, whose sys.path may differ, is given)."""
    target, attr = _split(spec)
    if _is_file_target(target):
        return f"{Path(target).expanduser().resolve()}:{attr}"
    return f"{target}:{attr}"


def _load_file(spec: str, target: str) -> Any:
    path = Path(target).expanduser().resolve()
    if not path.is_file():
        raise ScirlError(f"reward {spec!r}: file {target!r} not found (relative to {os.getcwd()})")
    name = "scirl_user_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ScirlError(f"reward {spec!r}: cannot load {target!r} as Python source")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # before exec: dataclasses and pickling look the module up by name
    try:
        loader_spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001 - the user's file raised while loading: one line, not a traceback
        del sys.modules[name]
        raise ScirlError(f"reward {spec!r}: loading {target} raised {type(e).__name__}: {_one_line(e)}") from None
    return module


def _import_module(spec: str, target: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # `scirl` is a console script: the working directory is not on sys.path by itself
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise ScirlError(f"reward {spec!r}: no module named {e.name!r} (looked in the working directory "
                             f"{cwd} and sys.path)") from None
        raise ScirlError(f"reward {spec!r}: importing {target} raised ModuleNotFoundError: {_one_line(e)}") from None
    except BaseException as e:  # noqa: BLE001
        raise ScirlError(f"reward {spec!r}: importing {target} raised {type(e).__name__}: {_one_line(e)}") from None


def load_reward(spec: str) -> Callable:
    """The function a `module:function` / `file.py:function` spec names (see the module docstring)."""
    target, attr = _split(spec)
    module = _load_file(spec, target) if _is_file_target(target) else _import_module(spec, target)
    obj: Any = module
    where = target
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ScirlError(f"reward {spec!r}: {where} has no attribute {part!r}")
        obj, where = getattr(obj, part), part
    if not callable(obj):
        raise ScirlError(f"reward {spec!r}: {attr} is a {type(obj).__name__}, not a function")
    return obj


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] or "(no message)"


def _number(value: Any, what: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise BadRewardValue(f"reward returned {what} {value!r:.80}, not a number") from None
    if not math.isfinite(x):
        raise BadRewardValue(f"reward returned {what} {x}, not a finite number")
    return x


def to_result(out: Any) -> RewardResult:
    """A RewardResult whose score is a finite float (see the module docstring); BadRewardValue otherwise."""
    if not isinstance(out, RewardResult):
        return RewardResult(_number(out, "score"))
    components = out.components
    if components is None:
        components = {}
    if not isinstance(components, dict):
        raise BadRewardValue(f"reward returned components of type {type(components).__name__}, expected a dict")
    pred = out.pred
    return RewardResult(_number(out.score, "score"),
                        {str(k): _number(v, f"component {k!r} =") for k, v in components.items()},
                        None if pred is None else str(pred))
