"""SDPO: top-k + tail bucket, generalized JSD (hand-computed KLs on a 3-token vocab), the masked, IS-capped loss."""

import math

import pytest
import torch

from scirl.algos import generalized_jsd, sdpo_loss, topk_with_tail
from scirl.errors import ScirlError

F64 = torch.float64

# p = student, q = teacher on a 3-token vocabulary (k >= V below, so top-k keeps everything)
P = [0.6, 0.3, 0.1]
Q = [0.2, 0.5, 0.3]
# KL(q||p) = 0.2 ln(0.2/0.6) + 0.5 ln(0.5/0.3) + 0.3 ln(0.3/0.1) = 0.1 ln 3 + 0.5 ln(5/3)
KL_QP = 0.1 * 1.0986123 + 0.5 * 0.5108256  # = 0.3652740
# KL(p||q) = 0.6 ln 3 + 0.3 ln 0.6 + 0.1 ln(1/3) = 0.5 ln 3 + 0.3 ln 0.6
KL_PQ = 0.5 * 1.0986123 + 0.3 * -0.5108256  # = 0.3960585
# alpha = 0.5: M = [0.4, 0.4, 0.2]; KL(p||M) = 0.6 ln 1.5 + 0.3 ln 0.75 + 0.1 ln 0.5 = 0.0876597,
# KL(q||M) = 0.2 ln 0.5 + 0.5 ln 1.25 + 0.3 ln 1.5 = 0.0945819; JSD = (0.0876597 + 0.0945819) / 2
JSD_HALF = 0.0911208


def lp(probs):
    return torch.tensor(probs, dtype=F64).log().view(1, 1, -1)


def rand_logp(shape, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(*shape, generator=g, dtype=F64), dim=-1)


def test_tail_bucket_rows_sum_to_one():
    s, t = rand_logp((2, 3, 50), 0), rand_logp((2, 3, 50), 1)
    s_k, t_k = topk_with_tail(s, t, 5)
    assert s_k.shape == t_k.shape == (2, 3, 6)
    assert torch.allclose(s_k.exp().sum(-1), torch.ones(2, 3, dtype=F64), atol=1e-12)
    assert torch.allclose(t_k.exp().sum(-1), torch.ones(2, 3, dtype=F64), atol=1e-12)
    # the top-k entries are the student's largest, and the teacher is read at the student's indices
    top = torch.topk(s, 5, dim=-1)
    assert torch.equal(s_k[..., :5], top.values)
    assert torch.equal(t_k[..., :5], torch.gather(t, -1, top.indices))


def test_k_at_least_vocab_keeps_a_negligible_tail():
    s_k, t_k = topk_with_tail(lp(P), lp(Q), 100)
    assert s_k.shape == (1, 1, 4)
    assert s_k[..., -1].exp().item() < 2e-7 and t_k[..., -1].exp().item() < 2e-7
    assert torch.allclose(s_k.exp().sum(-1), torch.ones(1, 1, dtype=F64), atol=1e-6)


def test_endpoint_kls_match_hand_computed():
    s_k, t_k = topk_with_tail(lp(P), lp(Q), 3)
    assert generalized_jsd(s_k, t_k, 0.0).item() == pytest.approx(KL_QP, abs=1e-6)
    assert generalized_jsd(s_k, t_k, 1.0).item() == pytest.approx(KL_PQ, abs=1e-6)
    assert generalized_jsd(s_k, t_k, 0.5).item() == pytest.approx(JSD_HALF, abs=1e-6)
    # without the tail (full distributions) the same
    assert generalized_jsd(lp(P), lp(Q), 0.0).item() == pytest.approx(KL_QP, abs=1e-6)
    assert generalized_jsd(lp(P), lp(Q), 1.0).item() == pytest.approx(KL_PQ, abs=1e-6)


def test_zero_divergence_when_teacher_equals_student():
    s = rand_logp((2, 4, 30), 2)
    s_k, t_k = topk_with_tail(s, s.clone(), 8)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        assert torch.allclose(generalized_jsd(s_k, t_k, alpha), torch.zeros(2, 4, dtype=F64), atol=1e-12)


def test_jsd_half_symmetric_and_bounded():
    p, q = rand_logp((3, 5, 20), 3, scale=4.0), rand_logp((3, 5, 20), 4, scale=4.0)
    a, b = generalized_jsd(p, q, 0.5), generalized_jsd(q, p, 0.5)
    assert torch.allclose(a, b, atol=1e-12)
    assert (a >= -1e-12).all() and (a <= math.log(2) + 1e-12).all()
    # disjoint supports reach ln 2
    disjoint = generalized_jsd(lp([1.0, 0.0]), lp([0.0, 1.0]), 0.5)
    assert disjoint.item() == pytest.approx(math.log(2), abs=1e-9)
    with pytest.raises(ScirlError):
        generalized_jsd(p, q, 1.5)


def _loss_inputs(seed=5, B=2, T=3, V=12):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=F64, requires_grad=True)
    t_logits = torch.randn(B, T, V, generator=g, dtype=F64, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    return logits, t_logits, tokens


def _run(logits, t_logits, tokens, teacher_mask, old_shift=0.0, **kw):
    s_lp = torch.log_softmax(logits, -1)
    t_lp = torch.log_softmax(t_logits, -1)
    log_prob = torch.gather(s_lp, -1, tokens.unsqueeze(-1)).squeeze(-1)
    old = log_prob.detach() - old_shift
    mask = torch.ones_like(log_prob)
    return sdpo_loss(s_lp, t_lp, log_prob, old, mask, teacher_mask, **kw)


def test_gradient_reaches_student_not_teacher():
    logits, t_logits, tokens = _loss_inputs()
    loss, m = _run(logits, t_logits, tokens, torch.tensor([1.0, 1.0]), topk=4)
    loss.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert t_logits.grad is None
    assert set(m) == {"sdpo/divergence", "sdpo/context_frac", "sdpo/is_ratio_mean"}
    assert m["sdpo/is_ratio_mean"].item() == pytest.approx(1.0)  # on-policy: rho = 1
    assert m["sdpo/divergence"].item() == pytest.approx(loss.mean().item())


def test_rows_without_teacher_context_give_zero_loss_and_grad():
    logits, t_logits, tokens = _loss_inputs()
    loss, m = _run(logits, t_logits, tokens, torch.tensor([0, 1]), topk=4)
    assert torch.equal(loss[0], torch.zeros(3, dtype=F64)) and (loss[1] > 0).all()
    loss.sum().backward()
    assert torch.equal(logits.grad[0], torch.zeros_like(logits.grad[0]))
    assert logits.grad[1].abs().sum() > 0
    assert m["sdpo/context_frac"].item() == pytest.approx(0.5)
    # a per-token [B, T] mask works the same
    loss2, _ = _run(logits, t_logits, tokens, torch.tensor([[0, 0, 0], [1, 1, 1]], dtype=torch.bool), topk=4)
    assert torch.allclose(loss2, loss.detach())


def test_is_clip_caps_the_weight_and_tis_multiplies():
    logits, t_logits, tokens = _loss_inputs()
    ones = torch.tensor([1.0, 1.0])
    base, _ = _run(logits, t_logits, tokens, ones, topk=4)
    # lp - lp_old = 2 -> rho = e^2 = 7.39, capped at 2
    capped, m = _run(logits, t_logits, tokens, ones, old_shift=2.0, topk=4, is_clip=2.0)
    assert torch.allclose(capped, 2.0 * base)
    assert m["sdpo/is_ratio_mean"].item() == pytest.approx(2.0)
    # lp - lp_old = -0.5 -> rho = e^-0.5 (below the cap, kept)
    low, _ = _run(logits, t_logits, tokens, ones, old_shift=-0.5, topk=4, is_clip=2.0)
    assert torch.allclose(low, math.exp(-0.5) * base)
    tis = torch.full((2, 3), 0.5, dtype=F64)
    weighted, _ = _run(logits, t_logits, tokens, ones, topk=4, rollout_is_weights=tis)
    assert torch.allclose(weighted, 0.5 * base)
    # is_clip=None: no IS weight at all
    none, _ = _run(logits, t_logits, tokens, ones, old_shift=2.0, topk=4, is_clip=None)
    assert torch.allclose(none, base)


def test_full_vocab_mode_matches_large_k():
    logits, t_logits, tokens = _loss_inputs()
    ones = torch.tensor([1.0, 1.0])
    full, _ = _run(logits, t_logits, tokens, ones, topk=None, alpha=0.0)
    big_k, _ = _run(logits, t_logits, tokens, ones, topk=1000, alpha=0.0)
    assert torch.allclose(full, big_k, atol=1e-6)


def test_the_actor_side_passes_the_teacher_context_mask():
    """distribution_loss (the actor's SDPO call) zeroes rows without a teacher context on its own, even when the
    loss mask it gets still covers them; the per-token divergence is unchanged on rows with one."""
    from types import SimpleNamespace

    from scirl.config import Config
    from scirl.train.distill_losses import Distributions, distribution_loss

    logits, t_logits, tokens = _loss_inputs()
    s_lp, t_lp = torch.log_softmax(logits, -1), torch.log_softmax(t_logits, -1)
    log_prob = torch.gather(s_lp, -1, tokens.unsqueeze(-1)).squeeze(-1)
    cfg = Config()
    cfg.actor.policy_loss = "sdpo"
    cfg.distill = SimpleNamespace(sdpo_alpha=0.5, sdpo_topk=4, sdpo_is_clip=2.0)
    dist = Distributions(s_lp, t_lp, torch.tensor([False, True]))
    loss, m = distribution_loss(cfg, dist, log_prob, log_prob.detach(), torch.ones(2, 3, dtype=F64), None)
    both, _ = _run(logits, t_logits, tokens, torch.tensor([1.0, 1.0]), topk=4)
    assert torch.equal(loss[0], torch.zeros(3, dtype=F64))
    assert torch.allclose(loss[1], both[1]) and (loss[1] > 0).all()
    assert m["sdpo/context_frac"].item() == pytest.approx(0.5)
