"""RLSD: lambda schedule, teacher-weighted advantages (spec worked examples), weight stats, the `rlsd` policy loss."""

import math

import pytest
import torch

from scirl.algos import get_policy_loss, rlsd_advantages, rlsd_lambda, rlsd_weight_stats
from scirl.algos.policy_loss import vanilla
from scirl.algos.rlsd import rlsd
from scirl.errors import ScirlError

F64 = torch.float64


def t(x):
    return torch.tensor(x, dtype=F64)


def test_lambda_schedule():
    assert rlsd_lambda(0.5, 7, 0) == 0.5
    assert rlsd_lambda(0.5, 7, None) == 0.5
    assert rlsd_lambda(1.0, 1, 10) == 1.0
    assert rlsd_lambda(1.0, 6, 10) == pytest.approx(0.5)
    assert rlsd_lambda(1.0, 11, 10) == 0.0
    assert rlsd_lambda(1.0, 50, 10) == 0.0
    with pytest.raises(ScirlError):
        rlsd_lambda(1.0, 0, 10)


def test_fork_example_clips_both_tokens():
    # s = [-2, -2], tau = [-1, -3], A = [2, -2]: raw weights e^1 both clip to 1.2, modulator 1.1
    s, tau = t([[-2.0], [-2.0]]), t([[-1.0], [-3.0]])
    adv = t([2.0, -2.0])
    mask = torch.tensor([True, True])
    out = rlsd_advantages(adv, s, tau, mask, lam=0.5, eps_w=0.2)
    assert torch.allclose(out, t([[2.2], [-2.2]]))
    stats = rlsd_weight_stats(adv, s, tau, mask, torch.ones(2, 1), eps_w=0.2)
    assert stats["rlsd/clip_frac"].item() == pytest.approx(1.0)
    assert stats["rlsd/weight_mean"].item() == pytest.approx(1.2)
    assert stats["rlsd/context_frac"].item() == pytest.approx(1.0)


def test_positive_and_negative_advantage_example():
    # A = +0.5, delta = +0.5 -> w = 1.2 -> 0.55; A = -0.5, delta = +0.5 -> w = clip(e^-0.5) = 0.8 -> -0.45
    s, tau = t([[-1.0], [-1.0]]), t([[-0.5], [-0.5]])
    out = rlsd_advantages(t([[0.5], [-0.5]]), s, tau, t([1.0, 1.0]), lam=0.5, eps_w=0.2)
    assert torch.allclose(out, t([[0.55], [-0.45]]))


def test_decay_example():
    lam = rlsd_lambda(1.0, 6, 10)
    out = rlsd_advantages(t([[1.0]]), t([[-1.0]]), t([[0.0]]), t([1.0]), lam=lam, eps_w=10.0)
    assert out.item() == pytest.approx(0.5 + 0.5 * math.e, abs=1e-12)
    assert out.item() == pytest.approx(1.8591, abs=1e-4)


def test_rows_without_context_keep_plain_advantage():
    s = t([[-2.0, -1.0], [-2.0, -1.0]])
    tau = t([[-1.0, -3.0], [-1.0, -3.0]])
    adv = t([[1.0, 1.0], [-1.0, -1.0]])
    out = rlsd_advantages(adv, s, tau, t([0.0, 1.0]), lam=0.5, eps_w=0.2)
    assert torch.equal(out[0], adv[0])
    assert not torch.equal(out[1], adv[1])
    # a per-token [B, T] mask: only the masked tokens change
    tok_mask = torch.tensor([[True, False], [False, False]])
    out2 = rlsd_advantages(adv, s, tau, tok_mask, lam=0.5, eps_w=0.2)
    assert out2[0, 0].item() == pytest.approx(1.1)  # delta = +1, A > 0 -> w = 1.2
    assert torch.equal(out2[0, 1:], adv[0, 1:]) and torch.equal(out2[1], adv[1])
    stats = rlsd_weight_stats(adv, s, tau, t([0.0, 1.0]), torch.ones(2, 2), eps_w=0.2)
    assert stats["rlsd/context_frac"].item() == pytest.approx(0.5)


def test_row_and_token_advantages_agree():
    g = torch.Generator().manual_seed(0)
    s, tau = -torch.rand(3, 4, generator=g, dtype=F64), -torch.rand(3, 4, generator=g, dtype=F64)
    a_row = t([0.7, -1.3, 0.0])
    mask = torch.tensor([1, 1, 0])
    a = rlsd_advantages(a_row, s, tau, mask, 0.5, 0.2)
    b = rlsd_advantages(a_row.unsqueeze(-1).expand(3, 4), s, tau, mask, 0.5, 0.2)
    assert a.shape == (3, 4) and torch.equal(a, b)
    # the sign of the advantage never flips; A = 0 stays 0
    assert (torch.sign(a) == torch.sign(a_row).unsqueeze(-1)).all()


def test_no_grad_wrt_log_probs():
    s = t([[-2.0, -1.0]]).requires_grad_(True)
    tau = t([[-1.0, -1.5]]).requires_grad_(True)
    out = rlsd_advantages(t([1.0]), s, tau, t([1.0]), 0.5, 0.2)
    assert not out.requires_grad


def test_bad_params():
    s = t([[-1.0]])
    with pytest.raises(ScirlError):
        rlsd_advantages(t([1.0]), s, s, t([1.0]), lam=1.5, eps_w=0.2)
    with pytest.raises(ScirlError):
        rlsd_advantages(t([1.0, 2.0]), s, s, t([1.0]), lam=0.5, eps_w=0.2)


def _batch():
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(2, 5, generator=g, dtype=F64) - 0.5
    lp = (old + 0.4 * (torch.rand(2, 5, generator=g, dtype=F64) - 0.5)).requires_grad_(True)
    tau = (old + torch.randn(2, 5, generator=g, dtype=F64)).requires_grad_(True)
    mask = t([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    adv = t([[1.0], [-1.0]]) * mask
    return lp, old, tau, adv, mask


def test_rlsd_loss_lambda_zero_equals_vanilla():
    lp, old, tau, adv, mask = _batch()
    is_w = t([[1.0, 2.0, 0.5, 1.0, 1.0], [1.0, 1.0, 1.5, 1.0, 1.0]])
    loss, m = rlsd(lp, old, adv, mask, 0.2, 0.28, 3.0, is_w, teacher_log_prob=tau, teacher_mask=t([1.0, 1.0]),
                   lam=0.0, eps_w=0.2)
    (g1,) = torch.autograd.grad((loss * mask).sum(), lp)
    ref, ref_m = vanilla(lp, old, adv, mask, 0.2, 0.28, 3.0, is_w)
    (g2,) = torch.autograd.grad((ref * mask).sum(), lp)
    assert torch.equal(loss, ref) and torch.equal(g1, g2)
    for key in ("pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"):
        assert torch.equal(m[key], ref_m[key])
    assert {"rlsd/weight_mean", "rlsd/clip_frac", "rlsd/context_frac"} <= set(m)


def test_rlsd_loss_gradient_only_through_log_prob():
    lp, old, tau, adv, mask = _batch()
    loss, _ = rlsd(lp, old, adv, mask, teacher_log_prob=tau, teacher_mask=t([1.0, 0.0]), lam=0.5, eps_w=0.2)
    (loss * mask).sum().backward()
    assert tau.grad is None
    assert lp.grad is not None and lp.grad.abs().sum() > 0
    # same gradient as vanilla on the (constant) RLSD advantages
    adv_hat = rlsd_advantages(adv, lp.detach(), tau, t([1.0, 0.0]), 0.5, 0.2)
    lp2 = lp.detach().clone().requires_grad_(True)
    ref, _ = vanilla(lp2, old, adv_hat, mask)
    (ref * mask).sum().backward()
    assert torch.allclose(lp.grad, lp2.grad)


def test_registry_lookup():
    assert get_policy_loss("rlsd") is rlsd
