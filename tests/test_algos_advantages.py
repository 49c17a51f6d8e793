"""Advantage estimators beyond GRPO (rloo, REINFORCE++, REINFORCE++-baseline, opd_token): hand-computed values,
the uniform call every estimator accepts, and verl's reference loops."""

import math
from collections import defaultdict

import pytest
import torch
from conftest import outcome_rewards

from scirl.algos import ADVANTAGE_ESTIMATORS, aggregate_loss, get_advantage_estimator, get_policy_loss
from scirl.algos.advantages import opd_token, reinforce_plus_plus, reinforce_plus_plus_baseline, rloo


_outcome = outcome_rewards


# ---------------------------------------------------------------- rloo


def test_rloo_1001_leave_one_out():
    tlr, mask = _outcome([1, 0, 0, 1], [4, 3, 2, 1])
    adv = rloo(tlr, mask, ["u"] * 4)
    # A_i = R_i - mean_{j != i} R_j: 1 - (0+0+1)/3 = 2/3 ; 0 - (1+0+1)/3 = -2/3
    # (verl writes it as n/(n-1) * (R_i - mean) = 4/3 * (+-0.5): the same numbers)
    expected = torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert torch.allclose(adv[:, 0], expected, atol=1e-6)
    assert torch.allclose(adv, expected[:, None] * mask, atol=1e-6)


def test_rloo_1000():
    tlr, mask = _outcome([1, 0, 0, 0], [2, 2, 2, 2])
    adv = rloo(tlr, mask, ["u"] * 4)[:, 0]
    # 1 - 0 = 1 ; 0 - 1/3
    assert torch.allclose(adv, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]), atol=1e-6)


def test_rloo_singleton_keeps_raw_score_like_verl():
    # verl compute_rloo_outcome_advantage leaves a group of one untouched (its raw score)
    tlr, mask = _outcome([0.7, 1.0, 0.0], [2, 2, 2])
    adv = rloo(tlr, mask, ["solo", "pair", "pair"])[:, 0]
    assert torch.allclose(adv, torch.tensor([0.7, 1.0, -1.0]), atol=1e-6)


def _verl_rloo(scores, index):
    """verl compute_rloo_outcome_advantage, loop form (scalar per row)."""
    id2score = defaultdict(list)
    for s, k in zip(scores, index):
        id2score[k].append(s)
    out = []
    for s, k in zip(scores, index):
        n = len(id2score[k])
        mean = sum(id2score[k]) / n
        out.append(s * n / (n - 1) - mean * n / (n - 1) if n > 1 else s)
    return torch.tensor(out)


def test_rloo_matches_verl_loop():
    torch.manual_seed(1)
    B, T = 11, 5
    tlr = torch.randn(B, T)
    mask = (torch.rand(B, T) > 0.2).float()
    index = ["a", "b", "a", "c", "b", "a", "d", "b", "a", "c", "b"]
    adv = rloo(tlr, mask, index)
    ref = _verl_rloo(tlr.sum(-1).tolist(), index)
    assert torch.allclose(adv, ref[:, None] * mask, atol=1e-5)


# ---------------------------------------------------------------- REINFORCE++


def test_reinforce_plus_plus_gamma_1_by_hand():
    # seq0: rewards [0,0,1] all valid -> returns [1,1,1]; seq1: [0,2,pad] -> returns [2,2]
    tlr = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = reinforce_plus_plus(tlr, mask, ["x", "y"], gamma=1.0)
    # valid values [1,1,1,2,2]: mean 1.4, unbiased var (3*0.16 + 2*0.36)/4 = 0.3
    std = math.sqrt(0.3)
    lo, hi = (1 - 1.4) / std, (2 - 1.4) / std  # -0.730297, 1.095445
    assert torch.allclose(adv, torch.tensor([[lo, lo, lo], [hi, hi, 0.0]]), atol=1e-5)
    assert lo == pytest.approx(-0.730297, abs=1e-6) and hi == pytest.approx(1.095445, abs=1e-6)


def test_reinforce_plus_plus_discounted_by_hand():
    tlr = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = reinforce_plus_plus(tlr, mask, None, gamma=0.5)
    # returns: seq0 [0.25, 0.5, 1], seq1 [1, 2]; mean 0.95; squares sum 1.8 -> var 0.45
    std = math.sqrt(0.45)
    exp = torch.tensor([[0.25, 0.5, 1.0], [1.0, 2.0, 0.95]])
    exp = (exp - 0.95) / std * mask
    assert torch.allclose(adv, exp, atol=1e-5)
    assert adv[0, 0].item() == pytest.approx(-1.043498, abs=1e-5)
    assert adv[1, 1].item() == pytest.approx(1.565248, abs=1e-5)


def _verl_rpp(tlr, mask, gamma):
    """verl compute_reinforce_plus_plus_outcome_advantage + masked_whiten, literally."""
    returns = torch.zeros_like(tlr)
    running = 0
    for t in reversed(range(tlr.shape[1])):
        running = tlr[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]
    mean = (returns * mask).sum() / mask.sum()
    var = (((returns - mean) ** 2) * mask).sum() / mask.sum()
    var = var * mask.sum() / (mask.sum() - 1)
    return (returns - mean) * torch.rsqrt(var + 1e-8) * mask


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_plus_plus_matches_verl_on_prefix_masks(gamma):
    torch.manual_seed(2)
    B, T = 6, 7
    lengths = [7, 3, 1, 5, 6, 2]
    mask = torch.zeros(B, T)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    tlr = torch.randn(B, T)  # rewards on padding too: verl drops them for valid tokens, so do we
    assert torch.allclose(reinforce_plus_plus(tlr, mask, None, gamma=gamma), _verl_rpp(tlr, mask, gamma), atol=1e-5)


def test_reinforce_plus_plus_mask_holes_carry_the_return():
    # multi-turn: token 1 is a tool output (mask 0); the outcome at the end must reach token 0
    tlr = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    adv = reinforce_plus_plus(tlr, mask, None, gamma=1.0)
    assert adv[0, 0] == adv[0, 2] > 0 and adv[0, 1] == 0
    assert (adv[1] < 0).all()


# ---------------------------------------------------------------- REINFORCE++-baseline


def test_rpp_baseline_1001_equal_lengths():
    tlr, mask = _outcome([1, 0, 0, 1], [2, 2, 1, 1], T=2)
    adv = reinforce_plus_plus_baseline(tlr, mask, ["u"] * 4)
    # R - mean = +-0.5 on 6 valid tokens (3 of each sign): mean 0, unbiased var 1.5/5 = 0.3
    a = 0.5 / math.sqrt(0.3)  # 0.912871
    assert a == pytest.approx(0.912871, abs=1e-6)
    assert torch.allclose(adv, torch.tensor([[a, a], [-a, -a], [-a, 0.0], [a, 0.0]]), atol=1e-5)


def test_rpp_baseline_whitening_is_token_weighted():
    tlr, mask = _outcome([1, 0, 0, 1], [3, 1, 1, 1], T=3)
    adv = reinforce_plus_plus_baseline(tlr, mask, ["u"] * 4)
    # tokens: +0.5 x 4 (3 from row 0, 1 from row 3), -0.5 x 2 -> mean 1/6
    # deviations +1/3 (x4), -2/3 (x2): sum sq 4/3, unbiased var 4/15
    std = math.sqrt(4 / 15)
    pos, neg = (1 / 3) / std, (-2 / 3) / std  # 0.645497, -1.290994
    assert torch.allclose(adv[0], torch.tensor([pos, pos, pos]), atol=1e-5)
    assert adv[1, 0].item() == pytest.approx(neg, abs=1e-5) and adv[2, 0].item() == pytest.approx(neg, abs=1e-5)
    assert adv[3, 0].item() == pytest.approx(pos, abs=1e-5)
    assert pos == pytest.approx(0.645497, abs=1e-6) and neg == pytest.approx(-1.290994, abs=1e-6)


def test_rpp_baseline_singleton_uses_mean_zero():
    tlr, mask = _outcome([2.0, 1.0, 0.0], [1, 1, 1], T=1)
    adv = reinforce_plus_plus_baseline(tlr, mask, ["solo", "p", "p"])[:, 0]
    # pre-whitening: [2, 0.5, -0.5]; mean 2/3, unbiased var ((4/3)^2 + (1/6)^2 + (7/6)^2)/2 = 19/12
    pre = torch.tensor([2.0, 0.5, -0.5])
    assert torch.allclose(adv, (pre - 2 / 3) / math.sqrt(19 / 12), atol=1e-5)


# ---------------------------------------------------------------- opd_token


def test_opd_token_is_reward_times_mask():
    # §9: student lp s = -2, teacher tau = -1 -> r_t = tau - s = +1 -> A_t = +1
    s, tau = torch.tensor([[-2.0, -0.5, 0.0]]), torch.tensor([[-1.0, -1.5, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv = opd_token(tau - s, mask, ["u"])
    assert torch.equal(adv, torch.tensor([[1.0, -1.0, 0.0]]))  # nan on a masked token -> 0
    # with rho = 1 the vanilla token loss is -1.0 for the first token
    lp = s.clone().requires_grad_(True)
    loss, _ = get_policy_loss("vanilla")(lp, lp.detach(), adv, mask)
    assert loss[0, 0].item() == pytest.approx(-1.0)
    assert loss[0, 1].item() == pytest.approx(1.0)


def test_opd_hybrid_weights_the_grpo_term_by_grpo_weight():
    tlr, mask = _outcome([1, 0], [2, 3], T=3)  # one group: GRPO gives +-(0.5 / std) = +-0.707107 (unbiased std)
    opd = torch.tensor([[0.3, -0.2, 9.0], [0.1, 0.4, -0.6]])
    fn = get_advantage_estimator("opd_token_plus_grpo")
    grpo = 0.5 / math.sqrt(0.5)
    assert grpo == pytest.approx(0.707107, abs=1e-6)
    for w in (1.0, 0.5, 0.0):
        adv = fn(tlr, mask, ["u", "u"], opd_rewards=opd, grpo_weight=w)
        expected = torch.tensor([[0.3 + w * grpo, -0.2 + w * grpo, 0.0],
                                 [0.1 - w * grpo, 0.4 - w * grpo, -0.6 - w * grpo]])
        assert torch.allclose(adv, expected, atol=1e-5), w


# ---------------------------------------------------------------- shared properties


def test_all_estimators_registered():
    assert {"grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "opd_token"} <= set(
        ADVANTAGE_ESTIMATORS
    )
    assert get_advantage_estimator("rloo") is rloo


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_uniform_call(name):
    torch.manual_seed(3)
    tlr, mask = _outcome([1, 0, 0.5, 1, 0, 0], [4, 3, 2, 4, 1, 2])
    tlr.requires_grad_(True)
    fn = get_advantage_estimator(name)
    needed = {k: torch.zeros_like(tlr) for k in getattr(fn, "required_kwargs", ())}  # e.g. the hybrid's opd_rewards
    adv = fn(
        tlr, mask, ["a", "a", "a", "b", "b", "b"],
        norm_adv_by_std_in_grpo=True, epsilon=1e-6, gamma=1.0, some_future_kwarg=123, **needed,
    )
    assert adv.shape == mask.shape and not adv.requires_grad
    assert torch.equal(adv[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.isfinite(adv).all()
    # the positional-only core call works too
    assert fn(tlr.detach(), mask, ["a", "a", "a", "b", "b", "b"], **needed).shape == mask.shape


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_plus_plus_baseline"])
def test_all_equal_group_is_zero(name):
    tlr, mask = _outcome([1, 1, 1, 1], [3, 2, 3, 1])
    adv = get_advantage_estimator(name)(tlr, mask, ["u"] * 4, norm_adv_by_std_in_grpo=False)
    assert torch.equal(adv, torch.zeros(4, 4))
    lp = torch.full((4, 4), -1.0, requires_grad=True)
    loss, _ = get_policy_loss("vanilla")(lp, lp.detach(), adv, mask)
    aggregate_loss(loss, mask).backward()
    assert torch.equal(lp.grad, torch.zeros(4, 4))


def test_whitening_with_one_or_no_valid_token_is_zero_not_an_error():
    tlr = torch.tensor([[3.0, 0.0]])
    for mask in (torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2)):
        assert torch.equal(reinforce_plus_plus(tlr, mask, ["u"]), torch.zeros(1, 2))
        assert torch.equal(reinforce_plus_plus_baseline(tlr, mask, ["u"]), torch.zeros(1, 2))
