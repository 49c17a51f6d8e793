"""GSPO and CISPO policy losses (values, per-sequence clipping, gradients) and the rollout IS weight on the loss."""

import math

import pytest
import torch

from scirl.algos import POLICY_LOSSES, aggregate_loss, get_policy_loss, rollout_is_weights
from scirl.algos.policy_loss import cispo, gspo, vanilla

SMTM = "seq-mean-token-mean"


def test_registered():
    assert POLICY_LOSSES["gspo"] is gspo and POLICY_LOSSES["cispo"] is cispo
    assert get_policy_loss("gspo") is gspo


# ---------------------------------------------------------------- GSPO


def _two_sequences():
    lp_old = torch.tensor([[-1.0, -1.0, -2.0], [-1.0, -1.5, 0.0]], dtype=torch.float64)
    # seq0: log-ratios [0.5, 0.5, 0.5] -> mean 0.5 -> s = e^0.5 = 1.6487 > 1.2 (outside the band)
    # seq1: log-ratios [0.3, -0.1] (+ a padded token) -> mean 0.1 -> s = e^0.1 = 1.10517 (inside)
    lp = lp_old + torch.tensor([[0.5, 0.5, 0.5], [0.3, -0.1, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    adv = torch.ones(2, 3, dtype=torch.float64) * mask
    return lp.requires_grad_(True), lp_old, adv, mask


def test_gspo_values_and_per_sequence_clipping():
    lp, lp_old, adv, mask = _two_sequences()
    loss, m = gspo(lp, lp_old, adv, mask)
    s1 = math.exp(0.1)
    # seq0 clipped at 1 + 0.2 -> -1.2 on every token; seq1 -s1 on every token (the padded +5.0 is ignored)
    assert torch.allclose(loss[0], torch.full((3,), -1.2, dtype=torch.float64))
    assert torch.allclose(loss[1, :2], torch.full((2,), -s1, dtype=torch.float64))
    # token-level PPO would clip seq1's first token (rho = e^0.3 = 1.35); GSPO does not
    van, _ = vanilla(lp, lp_old, adv, mask)
    assert van[1, 0].item() == pytest.approx(-1.2)
    assert m["pg_clipfrac"].item() == pytest.approx(3 / 5)
    assert m["pg_clipfrac_lower"].item() == 0.0
    # ppo_kl = masked mean of lp_old - lp = -(0.5*3 + 0.3 - 0.1)/5
    assert m["ppo_kl"].item() == pytest.approx(-1.7 / 5)


def test_gspo_gradient_zero_outside_band_sequence_ratio_inside():
    lp, lp_old, adv, mask = _two_sequences()
    loss, _ = gspo(lp, lp_old, adv, mask)
    aggregate_loss(loss, mask, SMTM).backward()
    # seq0 clipped -> no gradient at all
    assert torch.equal(lp.grad[0], torch.zeros(3, dtype=torch.float64))
    # seq1: d/dlp_t of (1/B)(1/L) sum_t -A * s = -A * s / (B * L) on each valid token, s = e^0.1
    g = -math.exp(0.1) / (2 * 2)  # -0.276293
    assert torch.allclose(lp.grad[1], torch.tensor([g, g, 0.0], dtype=torch.float64))
    assert g == pytest.approx(-0.276293, abs=1e-6)


def test_gspo_negative_advantage_low_clip_and_no_dual_clip():
    lp_old = torch.zeros(2, 2, dtype=torch.float64)
    # seq0: s = 0.5 < 0.8 with A = -1 -> clipped at 0.8, zero gradient
    # seq1: s = 4 with A = -1 -> -A*s = 4 (vanilla's dual-clip would cap at c = 3; GSPO has none)
    lp = torch.tensor([[math.log(0.5)] * 2, [math.log(4.0)] * 2], dtype=torch.float64, requires_grad=True)
    adv = -torch.ones(2, 2, dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    loss, m = gspo(lp, lp_old, adv, mask)
    assert torch.allclose(loss, torch.tensor([[0.8, 0.8], [4.0, 4.0]], dtype=torch.float64))
    assert m["pg_clipfrac"].item() == pytest.approx(0.5)
    van, _ = vanilla(lp, lp_old, adv, mask)
    assert van[1, 0].item() == pytest.approx(3.0)
    aggregate_loss(loss, mask, SMTM).backward()
    assert torch.equal(lp.grad[0], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(lp.grad[1], torch.full((2,), 4.0 / 4, dtype=torch.float64))


def test_gspo_equals_vanilla_when_all_ratios_are_one():
    torch.manual_seed(0)
    B, T = 5, 6
    mask = torch.zeros(B, T)
    for i, n in enumerate([6, 2, 4, 1, 5]):
        mask[i, :n] = 1
    adv = torch.randn(B, 1) * mask  # one advantage per sequence, as GRPO gives
    base = torch.randn(B, T) - 1.0
    grads, values = [], []
    for fn in (gspo, vanilla):
        lp = base.clone().requires_grad_(True)
        loss, _ = fn(lp, base, adv, mask)
        agg = aggregate_loss(loss, mask, SMTM)
        agg.backward()
        values.append(agg.detach())
        grads.append(lp.grad)
    assert torch.allclose(values[0], values[1], atol=1e-7)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_gspo_ratio_uses_only_valid_tokens_even_with_nan_padding():
    lp_old = torch.tensor([[-1.0, float("nan")]])
    lp = torch.tensor([[-0.9, -3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0]])
    loss, m = gspo(lp, lp_old, torch.tensor([[1.0, 0.0]]), mask)
    assert loss[0, 0].item() == pytest.approx(-math.exp(0.1))
    assert torch.isfinite(aggregate_loss(loss, mask, SMTM))
    assert math.isfinite(m["ppo_kl"].item())


# ---------------------------------------------------------------- CISPO


def _one(fn, adv, lp, lp_old, **kw):
    lp_t = torch.tensor([[lp]], dtype=torch.float64, requires_grad=True)
    loss, metrics = fn(
        lp_t, torch.tensor([[lp_old]], dtype=torch.float64), torch.tensor([[adv]], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64), **kw,
    )
    loss.sum().backward()
    return loss.item(), lp_t.grad.item(), metrics


def test_cispo_gradient_flows_where_ppo_clips():
    # A = +1, lp_old = -1.0, lp = -0.7: rho = e^0.3 = 1.3499 -> clipped IS weight 1.2
    value, grad, m = _one(cispo, 1.0, -0.7, -1.0)
    assert value == pytest.approx(-1.2 * 1.0 * -0.7)  # -sg(w) * A * lp = 0.84
    assert grad == pytest.approx(-1.2)  # -sg(w) * A: not zero
    assert m["pg_clipfrac"].item() == 1.0 and m["pg_clipfrac_lower"].item() == 0.0
    assert m["ppo_kl"].item() == pytest.approx(-0.3)
    # the same token under PPO-clip has zero gradient
    _, van_grad, _ = _one(vanilla, 1.0, -0.7, -1.0)
    assert van_grad == 0.0
    # clip-higher widens the weight: 1.28
    value, grad, _ = _one(cispo, 1.0, -0.7, -1.0, clip_ratio_high=0.28)
    assert grad == pytest.approx(-1.28)


def test_cispo_inside_band_and_lower_clip():
    value, grad, m = _one(cispo, 1.0, -0.9, -1.0)
    assert value == pytest.approx(-math.exp(0.1) * -0.9)  # 0.994654
    assert grad == pytest.approx(-math.exp(0.1))
    assert m["pg_clipfrac"].item() == 0.0
    # A = -1, rho = 0.5 -> weight clipped up to 0.8: loss = 0.8 * log 0.5, gradient +0.8
    value, grad, _ = _one(cispo, -1.0, math.log(0.5), 0.0)
    assert value == pytest.approx(0.8 * math.log(0.5))  # -0.554518
    assert grad == pytest.approx(0.8)
    # MiniMax-M1 style: no lower bound (clip_ratio_low >= 1) keeps the weight 0.5
    _, grad, m = _one(cispo, -1.0, math.log(0.5), 0.0, clip_ratio_low=1.0)
    assert grad == pytest.approx(0.5) and m["pg_clipfrac"].item() == 0.0


def test_cispo_gradient_matches_weighted_reinforce():
    torch.manual_seed(4)
    B, T = 3, 4
    lp_old = torch.randn(B, T) - 1
    lp = (lp_old + 0.4 * torch.randn(B, T)).requires_grad_(True)
    adv = torch.randn(B, T)
    mask = (torch.rand(B, T) > 0.3).float()
    loss, _ = cispo(lp, lp_old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    aggregate_loss(loss, mask, "token-mean").backward()
    w = torch.exp(lp.detach() - lp_old).clamp(0.8, 1.28)
    assert torch.allclose(lp.grad, -w * adv * mask / mask.sum(), atol=1e-6)


# ---------------------------------------------------------------- rollout IS weights on the loss


@pytest.mark.parametrize("fn", [vanilla, gspo, cispo])
def test_rollout_is_weight_multiplies_the_loss(fn):
    # §5: token loss 0.8 (vanilla: A = -1, rho = 0.5) x w 2.0 (lp_old -1.0, lp_roll -1.9) = 1.6
    old = torch.tensor([[-1.0]], dtype=torch.float64)
    w = rollout_is_weights(old, torch.tensor([[-1.9]], dtype=torch.float64), torch.ones(1, 1))
    assert w.item() == pytest.approx(2.0)
    lp = torch.tensor([[-1.0 + math.log(0.5)]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[-1.0]], dtype=torch.float64)
    plain, _ = fn(lp, old, adv, torch.ones(1, 1))
    weighted, _ = fn(lp, old, adv, torch.ones(1, 1), rollout_is_weights=w)
    assert weighted.item() == pytest.approx(2.0 * plain.item())
    if fn is vanilla:
        assert plain.item() == pytest.approx(0.8) and weighted.item() == pytest.approx(1.6)


@pytest.mark.parametrize("fn", [gspo, cispo])
def test_metrics_are_detached_scalars_and_shapes_checked(fn):
    lp = torch.zeros(2, 3, requires_grad=True)
    loss, m = fn(lp, torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3))
    assert loss.shape == (2, 3)
    assert set(m) == {"pg_clipfrac", "pg_clipfrac_lower", "ppo_kl"}
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    from scirl.errors import ScirlError

    with pytest.raises(ScirlError, match="one shape"):
        fn(lp, torch.zeros(2, 2), torch.ones(2, 3), torch.ones(2, 3))
