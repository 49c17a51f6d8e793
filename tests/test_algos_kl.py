"""KL estimators (ALGORITHMS.md §4 worked numbers, verl clamps, straight-through "+") and the KL controllers."""

import math

import pytest
import torch

from scirl.algos import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    aggregate_loss,
    kl_penalty,
    make_kl_controller,
)
from scirl.errors import ScirlError


def _lp(v):
    return torch.tensor([[v]], dtype=torch.float64, requires_grad=True)


def _ref(v):
    return torch.tensor([[v]], dtype=torch.float64)


@pytest.mark.parametrize(
    "kinds,expected",
    [
        (("k1", "kl"), 0.5),
        (("abs",), 0.5),
        (("k2", "mse"), 0.125),
        (("k3", "low_var_kl"), math.exp(-0.5) - 0.5),  # 0.106531
    ],
)
def test_worked_example(kinds, expected):
    # lp = -1.0, lp_ref = -1.5, d = 0.5
    for kind in kinds:
        assert kl_penalty(_lp(-1.0), _ref(-1.5), kind).item() == pytest.approx(expected, abs=1e-12)
    assert kl_penalty(_lp(-1.0), _ref(-1.5), "k3").item() == pytest.approx(0.106531, abs=1e-6)


def test_negative_difference_and_abs():
    # d = -0.5
    assert kl_penalty(_lp(-1.5), _ref(-1.0), "k1").item() == pytest.approx(-0.5)
    assert kl_penalty(_lp(-1.5), _ref(-1.0), "abs").item() == pytest.approx(0.5)
    assert kl_penalty(_lp(-1.5), _ref(-1.0), "k2").item() == pytest.approx(0.125)
    assert kl_penalty(_lp(-1.5), _ref(-1.0), "k3").item() == pytest.approx(math.exp(0.5) - 1.5)


def test_beta_times_k3_loss_adds_0_010653_per_token():
    lp = torch.full((2, 3), -1.0)
    ref = torch.full((2, 3), -1.5)
    mask = torch.ones(2, 3)
    kl_loss = 0.1 * aggregate_loss(kl_penalty(lp, ref, "low_var_kl"), mask, "token-mean")
    assert kl_loss.item() == pytest.approx(0.010653, abs=1e-6)


def test_k3_clamps():
    # -d = 30 is clamped to 20 inside, e^20 - 20 - 1 is clamped to 10
    assert kl_penalty(_lp(-31.0), _ref(-1.0), "k3").item() == 10.0
    # -d = -30 -> -20: e^-20 + 20 - 1 = 19.000000002 -> 10
    assert kl_penalty(_lp(-1.0), _ref(-31.0), "k3").item() == 10.0
    # d = -3: e^3 - 3 - 1 = 16.09 -> 10; d = 2: e^-2 + 1 = 1.135335 unclamped
    assert kl_penalty(_lp(-4.0), _ref(-1.0), "k3").item() == 10.0
    assert kl_penalty(_lp(1.0), _ref(-1.0), "k3").item() == pytest.approx(math.exp(-2) + 1)
    # a clamped value has no gradient
    lp = _lp(-4.0)
    kl_penalty(lp, _ref(-1.0), "k3").sum().backward()
    assert lp.grad.item() == 0.0


def test_k3_gradient_unclamped():
    lp = _lp(-1.0)
    kl_penalty(lp, _ref(-1.5), "k3").sum().backward()
    # d/dlp [e^{ref-lp} - (ref-lp) - 1] = -e^{ref-lp} + 1 = 1 - e^{-0.5}
    assert lp.grad.item() == pytest.approx(1 - math.exp(-0.5))


@pytest.mark.parametrize("base", ["k1", "kl", "abs", "k3", "low_var_kl", "k2", "mse"])
def test_straight_through_forward_is_estimator_gradient_is_k2(base):
    for lp_v, ref_v in [(-1.0, -1.5), (-1.5, -1.0), (-4.0, -1.0)]:
        lp_st, lp_plain = _lp(lp_v), _lp(lp_v)
        st = kl_penalty(lp_st, _ref(ref_v), base + "+")
        plain = kl_penalty(lp_plain, _ref(ref_v), base)
        assert st.item() == pytest.approx(plain.item(), abs=1e-12)
        st.sum().backward()
        # gradient of k2 = 0.5 d^2 is d = lp - lp_ref
        assert lp_st.grad.item() == pytest.approx(lp_v - ref_v)


def test_kinds_and_unknown_kind_error():
    assert set(KL_KINDS) >= {"k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl", "k1+", "k3+", "low_var_kl+"}
    with pytest.raises(ScirlError) as e:
        kl_penalty(_lp(-1.0), _ref(-1.5), "k4")
    msg = str(e.value)
    assert "KL estimator" in msg and "low_var_kl" in msg and "k3+" in msg and "\n" not in msg
    with pytest.raises(ScirlError, match="shape"):
        kl_penalty(torch.zeros(2, 2), torch.zeros(2, 3), "k1")


# ---------------------------------------------------------------- controllers


def test_fixed_controller():
    c = FixedKLController(0.001)
    c.update(123.0, 1000)
    assert c.value == 0.001
    c2 = FixedKLController(0.5)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.001


def test_adaptive_controller_by_hand():
    c = AdaptiveKLController(init_kl_coef=0.1, target_kl=6.0, horizon=10000)
    # KL 9 vs target 6: error 0.5 clipped to 0.2; mult = 1 + 0.2 * 256 / 10000 = 1.00512
    c.update(9.0, 256)
    assert c.value == pytest.approx(0.1 * 1.00512)
    # KL 3: error -0.5 -> -0.2; mult 0.99488
    c.update(3.0, 256)
    assert c.value == pytest.approx(0.1 * 1.00512 * 0.99488)
    # KL 6.6: error 0.1 (inside the clip); mult = 1 + 0.1 * 100 / 10000 = 1.001
    c.update(6.6, 100)
    assert c.value == pytest.approx(0.1 * 1.00512 * 0.99488 * 1.001)
    # a 0-dim tensor works as the current KL too
    v = c.value
    c.update(torch.tensor(6.0), 50)
    assert c.value == pytest.approx(v)


def test_adaptive_state_round_trip():
    c = AdaptiveKLController(0.2, 1.0, 100)
    c.update(2.0, 10)  # 0.2 * (1 + 0.2 * 0.1) = 0.204
    assert c.value == pytest.approx(0.204)
    state = c.state_dict()
    assert state["kind"] == "adaptive" and state["value"] == pytest.approx(0.204)
    resumed = AdaptiveKLController(0.2, 1.0, 100)
    resumed.load_state_dict(state)
    assert resumed.value == c.value
    resumed.update(2.0, 10)
    c.update(2.0, 10)
    assert resumed.value == c.value
    with pytest.raises(ScirlError):
        resumed.load_state_dict({"value": float("nan")})


def test_make_kl_controller():
    assert isinstance(make_kl_controller("fixed", 0.01), FixedKLController)
    c = make_kl_controller("adaptive", 0.01, target_kl=0.1, horizon=1000)
    assert isinstance(c, AdaptiveKLController) and c.value == 0.01
    with pytest.raises(ScirlError, match="horizon"):
        make_kl_controller("adaptive", 0.01, target_kl=0.1, horizon=0)
    with pytest.raises(ScirlError, match="target_kl"):
        make_kl_controller("adaptive", 0.01, target_kl=0.0, horizon=10)
    with pytest.raises(ScirlError, match="target_kl and horizon"):
        make_kl_controller("adaptive", 0.01)
    with pytest.raises(ScirlError) as e:
        make_kl_controller("adaptve", 0.01)
    assert "Did you mean 'adaptive'" in str(e.value)
