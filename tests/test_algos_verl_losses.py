"""The policy losses of current verl's registry that scirl added (SAPO, GMPO, GPG, DRO, DPPO-TV/KL, Clip-Cov,
KL-Cov), and GSPO's fixed aggregation: every expected number is worked by hand from verl's formula
(verl-project/verl `trainer/ppo/core_algos.py`, the `compute_policy_loss_<name>` functions)."""

import math

import pytest
import torch

from scirl.algos import POLICY_LOSSES, aggregate_loss, get_policy_loss
from scirl.algos.cov_losses import clip_cov, kl_cov
from scirl.algos.dppo import dppo_kl, dppo_tv
from scirl.algos.pg_losses import dro, gpg
from scirl.algos.policy_loss import geo_mean, gspo, sapo
from scirl.errors import ScirlError

F64 = torch.float64
SMTM = "seq-mean-token-mean"


def t(x):
    return torch.tensor(x, dtype=F64)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_registered_under_verls_names_with_their_metadata():
    for name, fn in [("sapo", sapo), ("geo_mean", geo_mean), ("gpg", gpg), ("dro", dro), ("dppo_tv", dppo_tv),
                     ("dppo_kl", dppo_kl), ("clip_cov", clip_cov), ("kl_cov", kl_cov)]:
        assert POLICY_LOSSES[name] is fn and get_policy_loss(name) is fn
    # verl aggregates these three with seq-mean-token-mean whatever loss_agg_mode says
    assert {n for n, f in POLICY_LOSSES.items() if f.agg_mode} == {"gspo", "sapo", "geo_mean"}
    assert sapo.config_kwargs == ("tau_pos", "tau_neg") and dro.config_kwargs == ("dro_beta",)
    assert clip_cov.config_kwargs == ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub")
    assert kl_cov.config_kwargs == ("kl_cov_ratio", "ppo_kl_coef")


# ---------------------------------------------------------------- GSPO's aggregation (the witness)


def test_gspo_witness_seq_mean_token_mean_not_token_mean():
    # log_prob = old, A = [[1, .], [2, 2]], mask = [[1, 0], [1, 1]]: the ratio is 1, so the token losses are -A
    lp = t([[-1.0, -2.0], [-0.5, -0.7]])
    adv, mask = t([[1.0, 9.0], [2.0, 2.0]]), t([[1.0, 0.0], [1.0, 1.0]])
    loss, _ = gspo(lp, lp.clone(), adv, mask)
    assert aggregate_loss(loss, mask, gspo.agg_mode).item() == pytest.approx(-1.5)  # verl: (-1 + -2) / 2
    assert aggregate_loss(loss, mask, "token-mean").item() == pytest.approx(-5 / 3)  # what token-mean would give


# ---------------------------------------------------------------- SAPO


def test_sapo_gate_values_off_policy():
    # ratios 1.5 (A = +1, tau_pos = 1) and 0.5 (A = -1, tau_neg = 1.05)
    lp = t([[math.log(1.5), math.log(0.5)]]).requires_grad_(True)
    loss, m = sapo(lp, t([[0.0, 0.0]]), t([[1.0, -1.0]]), t([[1.0, 1.0]]))
    gate_pos = 4.0 * sigmoid(0.5)  # sigmoid(1 * (1.5 - 1)) * 4 / 1 = 2.489837
    gate_neg = sigmoid(1.05 * -0.5) * 4.0 / 1.05  # = 1.415938
    assert gate_pos == pytest.approx(2.489837, abs=1e-6) and gate_neg == pytest.approx(1.415938, abs=1e-6)
    assert torch.allclose(loss, t([[-gate_pos, gate_neg]]))
    assert m["pg_clipfrac"].item() == 0.0 and m["pg_clipfrac_lower"].item() == 0.0
    assert m["ppo_kl"].item() == pytest.approx(-(math.log(1.5) + math.log(0.5)) / 2)
    loss.sum().backward()
    # d/dlp of -A * gate(rho): -A * 4 sigma (1 - sigma) * rho
    s_pos, s_neg = sigmoid(0.5), sigmoid(-0.525)
    assert torch.allclose(lp.grad, t([[-4 * s_pos * (1 - s_pos) * 1.5, 4 * s_neg * (1 - s_neg) * 0.5]]))


def test_sapo_on_policy_matches_ppo_gradient_and_taus_scale_the_value():
    lp = t([[-1.0, -2.0]]).requires_grad_(True)
    adv = t([[2.0, -1.0]])
    loss, _ = sapo(lp, lp.detach(), adv, t([[1.0, 1.0]]), tau_pos=2.0, tau_neg=4.0)
    assert torch.allclose(loss, t([[-2.0 * 2 / 2.0, 1.0 * 2 / 4.0]]))  # gate(1) = 2 / tau
    loss.sum().backward()
    assert torch.allclose(lp.grad, -adv)  # the gate's slope at rho = 1 is 1, whatever tau
    with pytest.raises(ScirlError, match="tau_pos"):
        sapo(lp, lp.detach(), adv, t([[1.0, 1.0]]), tau_pos=0.0)


# ---------------------------------------------------------------- GMPO (geo_mean)


def _gmpo_case():
    old = t([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    d = t([[0.1, 0.5, -0.5], [0.5, -0.5, 9.0]])  # lp - lp_old; row 1's last token is padding
    adv = t([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    return (old + d).requires_grad_(True), old, adv, mask


def test_gmpo_sequence_values_gradient_and_metrics():
    lp, old, adv, mask = _gmpo_case()
    loss, m = geo_mean(lp, old, adv, mask)
    # row 0 (A > 0): min(d, clip(d, -0.2, 0.2)) = [0.1, 0.2, -0.5] -> r = e^(-0.2/3); L0 = -r
    # row 1 (A < 0): -min(-d, -clip(d)) = [0.5, -0.2] -> r = e^0.15; L1 = +r
    l0, l1 = -math.exp(-0.2 / 3), math.exp(0.15)
    assert l0 == pytest.approx(-0.935507, abs=1e-6) and l1 == pytest.approx(1.161834, abs=1e-6)
    assert torch.allclose(loss, t([[l0, l0, l0], [l1, l1, 0.0]]))
    agg = aggregate_loss(loss, mask, geo_mean.agg_mode)
    assert agg.item() == pytest.approx((l0 + l1) / 2)  # verl: torch.mean over the sequences
    agg.backward()
    # only unclipped d_t carry gradient: L_i / L_tokens / B on them
    assert torch.allclose(lp.grad, t([[l0 / 6, 0.0, l0 / 6], [l1 / 4, 0.0, 0.0]]))
    # clipped d_t: row 0 tokens 1, 2 (A > 0); row 1 tokens 0, 1 (A < 0); 5 valid tokens
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 5) and m["pg_clipfrac_lower"].item() == pytest.approx(2 / 5)
    assert m["ppo_kl"].item() == pytest.approx(-(0.1 + 0.5 - 0.5 + 0.5 - 0.5) / 5)


def test_gmpo_rollout_weights_enter_as_a_geometric_mean_per_sequence():
    lp, old, adv, mask = _gmpo_case()
    plain, _ = geo_mean(lp, old, adv, mask)
    w = t([[2.0, 0.5, 1.0], [4.0, 1.0, 0.0]])  # geometric means 1 and 2
    weighted, _ = geo_mean(lp, old, adv, mask, rollout_is_weights=w)
    assert torch.allclose(weighted[0], plain[0], atol=1e-8)
    assert torch.allclose(weighted[1], 2.0 * plain[1], atol=1e-8)


# ---------------------------------------------------------------- GPG and DRO


def test_gpg_is_reinforce():
    lp = t([[-1.0, -0.5]]).requires_grad_(True)
    adv = t([[0.5, -2.0]])
    loss, m = gpg(lp, t([[5.0, 5.0]]), adv, t([[1.0, 1.0]]))  # lp_old is not read
    assert torch.allclose(loss, t([[0.5, -1.0]])) and m == {}
    loss.sum().backward()
    assert torch.allclose(lp.grad, -adv)
    weighted, _ = gpg(lp, lp.detach(), adv, t([[1.0, 1.0]]), rollout_is_weights=t([[2.0, 0.5]]))
    assert torch.allclose(weighted, t([[1.0, -0.5]]))


def test_dro_quadratic_penalty():
    lp = t([[-1.0]]).requires_grad_(True)
    loss, m = dro(lp, t([[-1.2]]), t([[1.0]]), t([[1.0]]), dro_beta=0.5)
    assert loss.item() == pytest.approx(1.01)  # -(1 * -1 - 0.5/2 * 0.2^2)
    loss.sum().backward()
    assert lp.grad.item() == pytest.approx(-1.0 + 0.5 * 0.2)  # -A + beta * (lp - lp_old)
    assert m["ppo_kl"].item() == pytest.approx(-0.2)
    with pytest.raises(ScirlError, match="dro_beta"):
        dro(lp, t([[-1.2]]), t([[1.0]]), t([[1.0]]))


# ---------------------------------------------------------------- DPPO


def _probs(p_old, p):
    return t([[math.log(x) for x in p]]).requires_grad_(True), t([[math.log(x) for x in p_old]])


def test_dppo_tv_trust_region_on_probabilities():
    # A: +1 (p 0.5 -> 0.6, inside), +1 (0.3 -> 0.6, +0.3 > 0.2: out), -1 (0.5 -> 0.2, -0.3 < -0.2: out),
    # -1 (0.1 -> 0.5, inside; rho = 5 truncated at c = 3)
    lp, old = _probs([0.5, 0.3, 0.5, 0.1], [0.6, 0.6, 0.2, 0.5])
    adv, mask = t([[1.0, 1.0, -1.0, -1.0]]), torch.ones(1, 4, dtype=F64)
    loss, m = dppo_tv(lp, old, adv, mask, clip_ratio_c=3.0)
    assert torch.allclose(loss, t([[-1.2 * math.log(0.6), 0.0, 0.0, 3.0 * math.log(0.5)]]))
    loss.sum().backward()
    assert torch.allclose(lp.grad, t([[-1.2, 0.0, 0.0, 3.0]]))  # -A * sg(min(rho, c)) where kept
    assert m["pg_clipfrac"].item() == pytest.approx(0.5) and m["pg_clipfrac_lower"].item() == pytest.approx(0.25)
    kl = [math.log(a / b) for a, b in zip([0.5, 0.3, 0.5, 0.1], [0.6, 0.6, 0.2, 0.5])]
    assert m["ppo_kl"].item() == pytest.approx(sum(kl) / 4)


def test_dppo_kl_trust_region_on_binary_kl():
    # binary KL(0.5 || 0.6) = 0.5 log(5/6) + 0.5 log(5/4) = 0.020411 (inside); KL(0.1 || 0.9) = 0.8 log 9 = 1.757780
    assert 0.5 * math.log(5 / 6) + 0.5 * math.log(5 / 4) == pytest.approx(0.020411, abs=1e-6)
    # A: +1 (0.5 -> 0.6 kept), +1 (0.1 -> 0.9: kl too big and p rose: out), +1 (0.9 -> 0.1: p fell, kept),
    # -1 (0.9 -> 0.1: kl too big and p fell: out)
    lp, old = _probs([0.5, 0.1, 0.9, 0.9], [0.6, 0.9, 0.1, 0.1])
    adv = t([[1.0, 1.0, 1.0, -1.0]])
    loss, m = dppo_kl(lp, old, adv, torch.ones(1, 4, dtype=F64), clip_ratio_c=3.0)
    expected = [-1.2 * math.log(0.6), 0.0, -(1 / 9) * math.log(0.1), 0.0]
    assert torch.allclose(loss, t([expected]))
    assert m["pg_clipfrac"].item() == pytest.approx(0.5) and m["pg_clipfrac_lower"].item() == 0.0


# ---------------------------------------------------------------- Clip-Cov and KL-Cov


def _cov_case():
    # A has mean 0, lp mean -4/3; cov_t = (A_t - 0) * (lp_t + 4/3):
    # [[1.6667, 0.0417, 0], [0, -0.0417, 3.3333]]: tokens (0,0) and (1,2) covary most
    adv = t([[2.0, 0.5, 0.0], [0.0, -0.5, -2.0]])
    lp = t([[-0.5, -1.25, -1.0], [-1.0, -1.25, -3.0]])
    return lp, adv, torch.ones(2, 3, dtype=F64)


def test_clip_cov_detaches_the_high_covariance_tokens():
    lp, adv, mask = _cov_case()
    lp = lp.requires_grad_(True)
    # ratio 1: clip_num = max(int(0.5 * 6), 1) = 3 >= the 2 candidates inside (1, 5): both lose their gradient
    loss, m = clip_cov(lp, lp.detach(), adv, mask, clip_cov_ratio=0.5)
    assert torch.allclose(loss, t([[0.0, -0.5, 0.0], [0.0, 0.5, 0.0]]))
    loss.sum().backward()
    assert torch.allclose(lp.grad, t([[0.0, -0.5, 0.0], [0.0, 0.5, -0.0]]))
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 6) and m["ppo_kl"].item() == 0.0
    # the window (lb, ub) = (1, 2) leaves only token (0, 0)
    loss, m = clip_cov(lp, lp.detach(), adv, mask, clip_cov_ratio=0.5, clip_cov_ub=2.0)
    assert loss[1, 2].item() == pytest.approx(2.0) and loss[0, 0].item() == 0.0
    assert m["pg_clipfrac"].item() == pytest.approx(1 / 6)


def test_clip_cov_skips_tokens_ppo_already_clipped_and_caps_the_count():
    lp, adv, mask = _cov_case()
    old = lp.clone()
    old[0, 0] -= math.log(1.5)  # token (0, 0): rho = 1.5 > 1.2 with A > 0, clipped by PPO itself -> not a candidate
    loss, m = clip_cov(lp, old, adv, mask, clip_cov_ratio=0.5)
    assert loss[0, 0].item() == pytest.approx(-2.0 * 1.2) and loss[1, 2].item() == 0.0
    assert m["pg_clipfrac"].item() == pytest.approx(1 / 6)
    # clip_num = max(int(0.0002 * 6), 1) = 1: one of the two candidates, drawn at random
    torch.manual_seed(0)
    loss, m = clip_cov(lp, lp.clone(), adv, mask)
    assert m["pg_clipfrac"].item() == pytest.approx(1 / 6)
    assert (loss[0, 0].item() == 0.0) != (loss[1, 2].item() == 0.0)


def test_kl_cov_penalises_the_top_covariance_tokens():
    lp, adv, mask = _cov_case()
    lp = lp.requires_grad_(True)
    old = lp.detach() - 0.1  # rho = e^0.1 everywhere
    # k = max(1, int(6 * 0.34)) = 2 tokens of largest covariance: (1, 2) and (0, 0) get + coef * |0.1|
    loss, m = kl_cov(lp, old, adv, mask, kl_cov_ratio=0.34, ppo_kl_coef=1.0)
    r = math.exp(0.1)
    expected = t([[-2 * r + 0.1, -0.5 * r, 0.0], [0.0, 0.5 * r, 2 * r + 0.1]])
    assert torch.allclose(loss, expected)
    assert m["ppo_kl"].item() == pytest.approx(0.1)  # verl logs mean |lp - lp_old| under this name
    loss.sum().backward()
    # the penalty's gradient coef * sign(lp - lp_old) = +1 on the two tokens, on top of -A * rho
    assert torch.allclose(lp.grad, t([[-2 * r + 1, -0.5 * r, 0.0], [0.0, 0.5 * r, 2 * r + 1]]))
    # the default ratio selects max(1, int(6 * 0.0002)) = 1 token: only (1, 2)
    loss, _ = kl_cov(lp, old, adv, mask)
    assert loss[1, 2].item() == pytest.approx(2 * r + 0.1 * 0.1) and loss[0, 0].item() == pytest.approx(-2 * r)


@pytest.mark.parametrize("name", ["sapo", "geo_mean", "gpg", "dppo_tv", "dppo_kl", "clip_cov", "kl_cov"])
def test_shapes_checked_and_masked_tokens_do_not_count(name):
    fn = get_policy_loss(name)
    lp = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ScirlError, match="one shape"):
        fn(lp, torch.zeros(2, 2), torch.ones(2, 3), torch.ones(2, 3))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.0, 0.0]])
    old = torch.tensor([[-0.1, 0.1, float("nan")], [0.05, 0.0, 0.0]])
    loss, m = fn(lp - 0.5, old - 0.5, adv, mask)
    assert torch.isfinite(aggregate_loss(loss, mask, fn.agg_mode or "token-mean"))
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in m.values())
