"""The `composite` reward: a weighted sum of other registered rewards, R = Σ_i w_i · score_i.

`info["components"]` lists the parts, each {"name": reward name, "weight": w, "info": {...} (optional, the
`info` that reward is called with), "label": str (optional, the key in the logged components; defaults to
the name and must be unique)}. There is no default recipe: missing, empty or malformed components, or an
unknown reward name, raise ScirlError.

components logged: `<label>` (the part's score), `<label>/weighted` (w · score), and `<label>/<key>` for
each component the part itself logs (e.g. `eed/rel_distance`). pred: the first part's non-None pred.

Example: the PHYBench-GRPO seed's reward, R = 0.2·1[`\\boxed{` present] + 0.3·1[≥ 6 newlines] + 0.5·EED/100
(boxed present, 10 newlines, EED 46.67 -> R = 0.2 + 0.3 + 0.2333 = 0.7333):

    reward:
      name: composite
      timeout: 10.0
      kwargs:
        components:
          - {name: format_boxed, weight: 0.2}
          - {name: trace_steps, weight: 0.3, info: {min_steps: 6}}
          - {name: eed, weight: 0.5, info: {correctness_mode: eed_official}}   # or repo_compat
"""

from __future__ import annotations

import math

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, get_reward, register_reward
from scirl.rewards.user import to_result

_KEYS = {"name", "weight", "info", "label"}


def _parts(info: dict) -> list[tuple[str, str, float, dict]]:
    """(label, reward name, weight, info) for each component, validated."""
    comps = (info or {}).get("components")
    if not isinstance(comps, list) or not comps:
        raise ScirlError("composite: info['components'] must be a non-empty list of {name, weight[, info]}")
    parts, seen = [], set()
    for i, comp in enumerate(comps):
        if not isinstance(comp, dict) or "name" not in comp or "weight" not in comp:
            raise ScirlError(f"composite: component {i} must be a dict with 'name' and 'weight', got {comp!r}")
        extra = set(comp) - _KEYS
        if extra:
            raise ScirlError(f"composite: component {i} has unknown keys {sorted(extra)}; allowed: {sorted(_KEYS)}")
        name, weight, sub_info = comp["name"], comp["weight"], comp.get("info") or {}
        if not isinstance(name, str) or name == "composite":
            raise ScirlError(f"composite: component {i} name must be a reward name (not 'composite'), got {name!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ScirlError(f"composite: component {i} ({name}) weight must be a finite number, got {weight!r}")
        if not isinstance(sub_info, dict):
            raise ScirlError(f"composite: component {i} ({name}) info must be a dict, got {sub_info!r}")
        label = comp.get("label", name)
        if label in seen:
            raise ScirlError(f"composite: duplicate component {label!r}; give repeated rewards distinct 'label's")
        seen.add(label)
        get_reward(name)  # unknown name -> ScirlError naming the closest match
        parts.append((label, name, float(weight), sub_info))
    return parts


@register_reward("composite")
def composite(sample: Sample, completion: str, info: dict) -> RewardResult:
    """score = Σ weight · score of each reward in info["components"] (see the module docstring)."""
    total, logged, pred = 0.0, {}, None
    for label, name, weight, sub_info in _parts(info):
        result = to_result(get_reward(name)(sample, completion, dict(sub_info)))  # a number, or BadRewardValue
        total += weight * result.score
        logged[label] = float(result.score)
        logged[f"{label}/weighted"] = weight * result.score
        for key, value in result.components.items():
            if key != label:
                logged[f"{label}/{key}"] = float(value)
        if pred is None:
            pred = result.pred
    return RewardResult(total, logged, pred)
