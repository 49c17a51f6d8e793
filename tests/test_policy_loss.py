"""PPO-clip policy loss: the worked numbers of ALGORITHMS.md §2, gradients in clipped regions, metrics."""

import math

import pytest
import torch

from scirl.algos import POLICY_LOSSES, get_policy_loss
from scirl.algos.policy_loss import vanilla
from scirl.errors import ScirlError


def _one(adv, lp, lp_old, **kw):
    lp_t = torch.tensor([[lp]], dtype=torch.float64, requires_grad=True)
    loss, metrics = vanilla(
        lp_t, torch.tensor([[lp_old]], dtype=torch.float64), torch.tensor([[adv]], dtype=torch.float64),
        torch.ones(1, 1), **kw,
    )
    return lp_t, loss, metrics


def test_positive_advantage_clip_high():
    _, loss, m = _one(1.0, -0.7, -1.0)
    assert loss.item() == pytest.approx(-1.2, abs=1e-9)
    assert m["pg_clipfrac"].item() == 1.0
    assert m["pg_clipfrac_lower"].item() == 0.0
    assert m["ppo_kl"].item() == pytest.approx(-0.3)
    _, loss, _ = _one(1.0, -0.7, -1.0, clip_ratio_high=0.28)
    assert loss.item() == pytest.approx(-1.28, abs=1e-9)


def test_unclipped_value_is_minus_a_rho():
    _, loss, m = _one(1.0, -0.9, -1.0)
    assert loss.item() == pytest.approx(-math.exp(0.1))
    assert m["pg_clipfrac"].item() == 0.0


def test_negative_advantage_low_ratio():
    _, loss, m = _one(-1.0, math.log(0.5), 0.0)
    assert loss.item() == pytest.approx(0.8, abs=1e-9)
    assert m["pg_clipfrac"].item() == 1.0


def test_dual_clip():
    lp, loss, m = _one(-1.0, math.log(4.0), 0.0)
    assert loss.item() == pytest.approx(3.0, abs=1e-9)
    assert m["pg_clipfrac_lower"].item() == 1.0
    loss.sum().backward()
    assert lp.grad.item() == 0.0


def test_clipped_ratio_has_zero_gradient():
    lp, loss, _ = _one(1.0, -0.7, -1.0)
    loss.sum().backward()
    assert lp.grad.item() == 0.0
    # inside the trust region the gradient is -A * rho
    lp, loss, _ = _one(1.0, -0.9, -1.0)
    loss.sum().backward()
    assert lp.grad.item() == pytest.approx(-math.exp(0.1))


def test_ratio_one_gradient_is_minus_advantage():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[0.5, -2.0]])
    loss, m = vanilla(lp, lp.detach(), adv, torch.ones(1, 2))
    loss.sum().backward()
    assert torch.allclose(lp.grad, -adv)
    assert m["ppo_kl"].item() == 0.0 and m["pg_clipfrac"].item() == 0.0


def test_metrics_ignore_masked_tokens_and_rollout_weights():
    lp = torch.tensor([[-0.7, -0.7, -0.9]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    adv = torch.ones(1, 3)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    w = torch.tensor([[0.5, 1.0, 2.0]], requires_grad=True)
    loss, m = vanilla(lp, old, adv, mask, rollout_is_weights=w)
    assert torch.allclose(loss, torch.tensor([[-0.6, -1.2, -2 * math.exp(0.1)]]))
    assert m["pg_clipfrac"].item() == pytest.approx(0.5)
    assert m["ppo_kl"].item() == pytest.approx(-0.2)
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    loss.sum().backward()
    assert w.grad is None  # weights are detached


def test_clip_ratio_c_validated():
    with pytest.raises(ScirlError, match="clip_ratio_c"):
        _one(1.0, -1.0, -1.0, clip_ratio_c=1.0)


def test_registry():
    assert POLICY_LOSSES["vanilla"] is vanilla
    assert get_policy_loss("vanilla") is vanilla
    with pytest.raises(ScirlError) as e:
        get_policy_loss("vanila")
    assert "Did you mean 'vanilla'" in str(e.value)
    assert ("Known: cispo, clip_cov, dppo_kl, dppo_tv, dro, geo_mean, gpg, gspo, kl_cov, opd_topk, rlsd, sapo, sdpo, "
            "vanilla") in str(e.value)
