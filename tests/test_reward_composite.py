"""The `format_boxed`, `trace_steps` and `composite` rewards, including the PHYBench seed's recipe."""

import pytest

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards import REWARDS, RewardResult, get_reward, register_reward
from scirl.rewards.composite import composite
from scirl.rewards.format_trace import format_boxed, trace_steps

PHYBENCH_RECIPE = [
    {"name": "format_boxed", "weight": 0.2},
    {"name": "trace_steps", "weight": 0.3, "info": {"min_steps": 6}},
    {"name": "eed", "weight": 0.5},
]


@register_reward("test_fixed_pred")
def _fixed_pred(sample, completion, info):
    return RewardResult(1.0, {"x": 2.0}, "P")


def _s(answer: str = "x") -> Sample:
    return Sample(prompt_id="p", messages=[{"role": "user", "content": "q"}], answer=answer)


def test_registered():
    for name in ("format_boxed", "trace_steps", "composite", "eed"):
        assert name in REWARDS and get_reward(name)


def test_format_boxed():
    assert format_boxed(_s(), r"answer \boxed{3}", {}).score == 1.0
    assert format_boxed(_s(), r"answer \boxed{3", {}).score == 1.0  # presence of `\boxed{` only
    r = format_boxed(_s(), r"answer \fbox{3} or boxed{3}", {})
    assert (r.score, r.components, r.pred) == (0.0, {"format_boxed": 0.0}, None)


def test_trace_steps():
    assert trace_steps(_s(), "a\n" * 6, {}).score == 1.0  # default N = 6, >= counts
    assert trace_steps(_s(), "a\n" * 5, {}).score == 0.0
    assert trace_steps(_s(), "a\n" * 2, {"min_steps": 2}).components == {"trace_steps": 1.0, "newlines": 2.0}
    with pytest.raises(ScirlError, match="min_steps"):
        trace_steps(_s(), "a", {"min_steps": "six"})


def test_phybench_worked_example():
    """Boxed present, 10 newlines, EED 46.67 -> R = 0.2 + 0.3 + 0.5 * 0.4667 = 0.7333."""
    completion = "step\n" * 10 + r"so \boxed{2mg+2\frac{mv_0^2}{l}}"
    r = composite(_s(r"2mg+4\frac{mv_0^2}{l}"), completion, {"components": PHYBENCH_RECIPE})
    assert r.score == pytest.approx(0.7333, abs=5e-5)
    assert r.components["format_boxed"] == 1.0 and r.components["format_boxed/weighted"] == pytest.approx(0.2)
    assert r.components["trace_steps"] == 1.0 and r.components["trace_steps/weighted"] == pytest.approx(0.3)
    assert r.components["eed"] == pytest.approx(0.4667, abs=5e-5)
    assert r.components["eed/weighted"] == pytest.approx(0.2333, abs=5e-5)
    assert r.components["eed/rel_distance"] == pytest.approx(2 / 15)
    assert r.components["trace_steps/newlines"] == 10.0
    assert r.pred == r"2mg+2\frac{mv_0^2}{l}"  # the first part with a pred (format rewards give None)


def test_composite_repo_compat_and_no_box():
    comps = PHYBENCH_RECIPE[:2] + [{"name": "eed", "weight": 0.5, "info": {"correctness_mode": "repo_compat"}}]
    r = composite(_s("2*m*g"), "a\n" * 3 + r"\boxed{2*g*m}", {"components": comps})
    assert r.score == pytest.approx(0.2 + 0.5)  # 3 newlines < 6
    r = composite(_s("x"), "no box", {"components": PHYBENCH_RECIPE})
    assert (r.score, r.pred) == (0.0, None)


def test_composite_labels_and_pred_order():
    comps = [{"name": "format_boxed", "weight": 1.0}, {"name": "test_fixed_pred", "weight": -0.5, "label": "fp"}]
    r = composite(_s(), "x", {"components": comps})
    assert r.score == pytest.approx(-0.5)
    assert r.components == {"format_boxed": 0.0, "format_boxed/weighted": 0.0, "fp": 1.0, "fp/weighted": -0.5,
                            "fp/x": 2.0}  # fmt: skip
    assert r.pred == "P"


@pytest.mark.parametrize(
    "info, match",
    [
        ({}, "non-empty list"),
        ({"components": []}, "non-empty list"),
        ({"components": [{"name": "format_boxed"}]}, "'name' and 'weight'"),
        ({"components": [{"name": "format_boxd", "weight": 1}]}, "format_boxed"),  # unknown: closest match named
        ({"components": [{"name": "eed", "weight": "half"}]}, "finite number"),
        ({"components": [{"name": "eed", "weight": 1, "inf": {}}]}, "unknown keys"),
        ({"components": [{"name": "eed", "weight": 1}, {"name": "eed", "weight": 1}]}, "duplicate"),
        ({"components": [{"name": "composite", "weight": 1}]}, "not 'composite'"),
    ],
)
def test_composite_rejects_bad_components(info, match):
    with pytest.raises(ScirlError, match=match):
        composite(_s(), r"\boxed{x}", info)
