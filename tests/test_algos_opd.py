"""On-policy distillation: token rewards through PPO, the top-k loss (weights, gradient), diagnostics, hybrid."""

import pytest
import torch

from scirl.algos import opd_diagnostics, opd_hybrid_advantages, opd_token_rewards, opd_topk_loss
from scirl.algos.policy_loss import vanilla
from scirl.errors import ScirlError

F64 = torch.float64


def t(x):
    return torch.tensor(x, dtype=F64)


def test_token_reward_worked_example_through_vanilla():
    s, tau = t([[-2.0, -0.5]]), t([[-1.0, 9.0]])
    mask = t([[1.0, 0.0]])
    r = opd_token_rewards(tau, s, mask)
    assert torch.equal(r, t([[1.0, 0.0]]))  # tau - s = +1; masked token -> 0
    lp = s.clone().requires_grad_(True)  # rho = 1
    loss, _ = vanilla(lp, s, r, mask)
    assert loss[0, 0].item() == pytest.approx(-1.0)
    assert not r.requires_grad


def _kl_rev(s_logits, t_lp):
    s_lp = torch.log_softmax(s_logits, -1)
    return (s_lp.exp() * (s_lp - t_lp)).sum(-1)


def test_full_vocab_student_p_gradient_is_reverse_kl_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, generator=g, dtype=F64, requires_grad=True)
    t_lp = torch.log_softmax(torch.randn(2, 3, 6, generator=g, dtype=F64), -1)
    mask = torch.ones(2, 3, dtype=F64)
    loss, _ = opd_topk_loss(torch.log_softmax(logits, -1), t_lp, mask, k=6, weight="student_p")
    (g1,) = torch.autograd.grad(loss.sum(), logits)
    (g2,) = torch.autograd.grad(_kl_rev(logits, t_lp).sum(), logits)
    assert torch.allclose(g1, g2, atol=1e-12)
    # the loss value is the (negated) summed top-k reward = KL(p_S || p_T) here
    assert torch.allclose(loss, _kl_rev(logits, t_lp).detach())


@pytest.mark.parametrize("k", [3, 8])
def test_sgd_step_moves_student_toward_teacher(k):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 8, generator=g, dtype=F64, requires_grad=True)
    t_lp = torch.log_softmax(2.0 * torch.randn(1, 4, 8, generator=g, dtype=F64), -1)
    mask = torch.ones(1, 4, dtype=F64)
    before = _kl_rev(logits, t_lp).sum().item()
    loss, _ = opd_topk_loss(torch.log_softmax(logits, -1), t_lp, mask, k=k)
    (loss * mask).sum().backward()
    with torch.no_grad():
        stepped = logits - 0.1 * logits.grad
    assert _kl_rev(stepped, t_lp).sum().item() < before
    assert logits.grad.abs().sum() > 0


def test_weight_modes():
    # V = 3, k = 2: student top-2 = tokens {0, 1}
    s_lp = t([[[0.6, 0.3, 0.1]]]).log()
    t_lp = t([[[0.2, 0.5, 0.3]]]).log()
    mask = t([[1.0]])
    d = s_lp[0, 0, :2] - t_lp[0, 0, :2]  # [ln 3, ln 0.6]
    w_s = torch.softmax(s_lp[0, 0, :2], -1)  # [2/3, 1/3]
    w_t = torch.softmax(t_lp[0, 0, :2], -1)  # [2/7, 5/7]
    expected = {"student_p": (w_s * d).sum(), "teacher_p": (w_t * d).sum(), "none": d.sum()}
    assert torch.allclose(w_s, t([2 / 3, 1 / 3])) and torch.allclose(w_t, t([2 / 7, 5 / 7]))
    values = {}
    for mode, want in expected.items():
        loss, m = opd_topk_loss(s_lp, t_lp, mask, k=2, weight=mode)
        values[mode] = loss.item()
        assert loss.item() == pytest.approx(want.item())
        assert m["opd/topk_reward_mean"].item() == pytest.approx(-want.item())
    assert len({round(v, 9) for v in values.values()}) == 3
    with pytest.raises(ScirlError, match="student_p, teacher_p, none"):
        opd_topk_loss(s_lp, t_lp, mask, k=2, weight="uniform")


def test_topk_loss_masks_and_tis():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=g, dtype=F64, requires_grad=True)
    t_lp = torch.log_softmax(torch.randn(2, 3, 5, generator=g, dtype=F64), -1)
    mask = t([[1, 1, 0], [1, 0, 0]])
    loss, _ = opd_topk_loss(torch.log_softmax(logits, -1), t_lp, mask, k=3)
    assert (loss[mask == 0] == 0).all()
    tis = torch.full((2, 3), 2.0, dtype=F64)
    loss2, _ = opd_topk_loss(torch.log_softmax(logits, -1), t_lp, mask, k=3, rollout_is_weights=tis)
    assert torch.allclose(loss2, 2.0 * loss)
    loss.sum().backward()
    assert torch.equal(logits.grad[1, 1:], torch.zeros_like(logits.grad[1, 1:]))


def test_diagnostics_identical_distributions():
    lp = torch.log_softmax(torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(3), dtype=F64), -1)
    mask = torch.ones(2, 3)
    d = opd_diagnostics(lp, lp.clone(), mask, k=4)
    topk_mass = torch.topk(lp.exp(), 4, dim=-1).values.sum(-1).mean()
    assert d["opd/topk_overlap"].item() == pytest.approx(1.0)
    assert d["opd/overlap_mass_student"].item() == pytest.approx(topk_mass.item())
    assert d["opd/overlap_mass_teacher"].item() == pytest.approx(topk_mass.item())
    assert d["opd/entropy_gap"].item() == pytest.approx(0.0, abs=1e-12)


def test_diagnostics_disjoint_topk():
    s_lp = t([[[0.4, 0.4, 0.1, 0.1]]]).log()
    t_lp = t([[[0.1, 0.1, 0.4, 0.4]]]).log()
    d = opd_diagnostics(s_lp, t_lp, torch.ones(1, 1), k=2)
    assert d["opd/topk_overlap"].item() == 0.0
    assert d["opd/overlap_mass_student"].item() == 0.0 and d["opd/overlap_mass_teacher"].item() == 0.0


def test_diagnostics_hand_checked_four_tokens():
    # p_S = [.4, .3, .2, .1], p_T = [.1, .5, .3, .1], k = 2: top_S = {0, 1}, top_T = {1, 2}, shared = {1}
    s_lp = t([[[0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]]).log()
    t_lp = t([[[0.1, 0.5, 0.3, 0.1], [0.97, 0.01, 0.01, 0.01]]]).log()
    mask = torch.tensor([[1.0, 0.0]])  # the second token is masked out and must not count
    d = opd_diagnostics(s_lp, t_lp, mask, k=2)
    assert d["opd/topk_overlap"].item() == pytest.approx(0.5)
    assert d["opd/overlap_mass_student"].item() == pytest.approx(0.3)
    assert d["opd/overlap_mass_teacher"].item() == pytest.approx(0.5)
    # H_S = .4 ln 2.5 + .3 ln(10/3) + .2 ln 5 + .1 ln 10 = 1.2798542
    # H_T = .1 ln 10 + .5 ln 2 + .3 ln(10/3) + .1 ln 10 = 1.1682825
    assert d["opd/entropy_student"].item() == pytest.approx(1.2798542, abs=1e-6)
    assert d["opd/entropy_teacher"].item() == pytest.approx(1.1682825, abs=1e-6)
    assert d["opd/entropy_gap"].item() == pytest.approx(1.1682825 - 1.2798542, abs=1e-6)


def test_hybrid_adds():
    a_opd, a_grpo = t([[1.0, -0.5]]), t([[0.866, 0.866]])
    assert torch.allclose(opd_hybrid_advantages(a_opd, a_grpo, 0.5), t([[1.433, -0.067]]))
    assert torch.equal(opd_hybrid_advantages(a_opd, a_grpo, 0.0), a_opd)
    with pytest.raises(ScirlError):
        opd_hybrid_advantages(a_opd, t([1.0]), 1.0)
