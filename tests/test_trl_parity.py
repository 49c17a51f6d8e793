"""Parity with TRL's GRPO loss: TRL's own `GRPOTrainer._compute_loss` (trl/trainer/grpo_trainer.py, TRL 1.16,
`def _compute_loss` at line ~3020) is called on a bare GRPOTrainer instance (no __init__) whose
`_get_per_token_logps_and_entropies` is monkeypatched (raising=True: a renamed TRL method fails the test) to
return fixed per-token log-probs; our policy loss + aggregation must give the same loss and the same gradient.

Mapping (beta = 0 unless stated):
  TRL loss_type="grpo"     == vanilla + "seq-mean-token-mean"
  TRL loss_type="dapo"     == vanilla + "token-mean"      (normaliser num_items_in_batch = number of mask tokens)
  TRL loss_type="dr_grpo"  == vanilla + "seq-mean-token-sum-norm", max_len = max_completion_length
                              (TRL and current verl divide by B * max_completion_length; verl before Feb 2026,
                              scirl's "seq-mean-token-sum-norm-legacy", omits B)
  TRL importance_sampling_level="sequence", loss_type="grpo"  == gspo + "seq-mean-token-mean"
  TRL loss_type="cispo" (weight clamp(rho, max=epsilon_high)) == cispo with clip_ratio_high = epsilon_high - 1,
                              clip_ratio_low = 1 (no lower bound), "token-mean"
  TRL beta > 0 (k3 in the loss)  == the above + beta * aggregate(kl_penalty(lp, ref, "k3"))
TRL has no dual-clip: ratios here stay below clip_ratio_c = 3, and one test shows the difference beyond it.
"""

import types

import pytest
import torch

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")

from scirl.algos import aggregate_loss, get_policy_loss, kl_penalty  # noqa: E402

B, T, MAX_COMPLETION_LENGTH = 4, 6, 8


def _data(seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    lengths = [6, 2, 4, 5]
    mask = torch.zeros(B, T, dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3 - 0.1
    lp = old + (torch.randn(B, T, generator=g, dtype=torch.float64) * spread).clamp(-1.0, 1.0)
    ref = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.2
    adv = torch.tensor([1.2, -0.7, 0.4, -1.5], dtype=torch.float64)
    return lp, old, ref, adv, mask


def _trl_loss(monkeypatch, loss_type, lp, old, adv, mask, eps_low, eps_high, beta=0.0, ref=None, level="token"):
    """Run TRL's real _compute_loss; returns (loss, d loss / d lp)."""
    lp = lp.clone().requires_grad_(True)
    trainer = object.__new__(trl_grpo.GRPOTrainer)  # the real class, none of its __init__
    vars(trainer).update(
        loss_type=loss_type,
        importance_sampling_level=level,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        beta=beta,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        aux_loss_enabled=False,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        _entropy_bonus_enabled=False,
        max_completion_length=MAX_COMPLETION_LENGTH,
        current_gradient_accumulation_steps=1,
        model=types.SimpleNamespace(training=True),
        args=types.SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        accelerator=types.SimpleNamespace(
            num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction: x
        ),
        _metrics={"train": __import__("collections").defaultdict(list)},
    )
    monkeypatch.setattr(trl_grpo.GRPOTrainer, "_get_per_token_logps_and_entropies",
                        lambda self, *a, **k: (lp, torch.zeros_like(lp), None), raising=True)
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,  # (B,): TRL unsqueezes it
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    if beta:
        inputs["ref_per_token_logps"] = ref
    loss = trainer._compute_loss(None, inputs)
    loss.backward()
    return loss.detach(), lp.grad


def _ours(loss_name, agg_mode, lp, old, adv, mask, low, high, c=3.0, beta=0.0, ref=None):
    lp = lp.clone().requires_grad_(True)
    per_token, _ = get_policy_loss(loss_name)(lp, old, adv[:, None] * mask, mask, low, high, c)
    loss = aggregate_loss(per_token, mask, agg_mode, max_len=MAX_COMPLETION_LENGTH)
    if beta:
        loss = loss + beta * aggregate_loss(kl_penalty(lp, ref, "k3"), mask, agg_mode, max_len=MAX_COMPLETION_LENGTH)
    loss.backward()
    return loss.detach(), lp.grad


CASES = [
    ("grpo", "seq-mean-token-mean"),
    ("dapo", "token-mean"),
    ("dr_grpo", "seq-mean-token-sum-norm"),
]


@pytest.mark.parametrize("eps_low,eps_high", [(0.2, 0.2), (0.2, 0.28)])  # symmetric and clip-higher
@pytest.mark.parametrize("loss_type,agg_mode", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vanilla_parity(monkeypatch, loss_type, agg_mode, eps_low, eps_high, seed):
    lp, old, _, adv, mask = _data(seed)
    trl_loss, trl_grad = _trl_loss(monkeypatch, loss_type, lp, old, adv, mask, eps_low, eps_high)
    our_loss, our_grad = _ours("vanilla", agg_mode, lp, old, adv, mask, eps_low, eps_high)
    assert abs(trl_loss.item() - our_loss.item()) < 1e-6
    assert torch.allclose(trl_grad, our_grad, atol=1e-6)


def test_the_data_exercises_both_clip_sides():
    lp, old, _, adv, mask = _data(0)
    rho = torch.exp(lp - old)[mask.bool()]
    assert (rho > 1.28).any() and (rho < 0.8).any() and ((rho > 1.2) & (rho < 1.28)).any()
    assert (rho < 3.0).all()


def test_dr_grpo_legacy_verl_normaliser_omits_the_batch_size(monkeypatch):
    lp, old, _, adv, mask = _data(0)
    trl_loss, _ = _trl_loss(monkeypatch, "dr_grpo", lp, old, adv, mask, 0.2, 0.2)
    legacy, _ = _ours("vanilla", "seq-mean-token-sum-norm-legacy", lp, old, adv, mask, 0.2, 0.2)
    assert legacy.item() == pytest.approx(B * trl_loss.item(), abs=1e-9)


@pytest.mark.parametrize("loss_type,agg_mode", CASES)
def test_beta_k3_parity(monkeypatch, loss_type, agg_mode):
    lp, old, ref, adv, mask = _data(3)
    trl_loss, trl_grad = _trl_loss(monkeypatch, loss_type, lp, old, adv, mask, 0.2, 0.28, beta=0.04, ref=ref)
    our_loss, our_grad = _ours("vanilla", agg_mode, lp, old, adv, mask, 0.2, 0.28, beta=0.04, ref=ref)
    assert abs(trl_loss.item() - our_loss.item()) < 1e-6
    assert torch.allclose(trl_grad, our_grad, atol=1e-6)


@pytest.mark.parametrize("eps_high", [0.2, 0.28])
def test_gspo_parity_with_trl_sequence_level(monkeypatch, eps_high):
    lp, old, _, adv, mask = _data(4, spread=0.6)
    lp[0] += 0.3  # sequence ratio ~1.43 with A > 0: clipped high
    lp[3] -= 0.4  # sequence ratio ~0.78 with A < 0: clipped low
    seq_ratio = torch.exp(((lp - old) * mask).sum(-1) / mask.sum(-1))
    assert seq_ratio[0] > 1 + eps_high and seq_ratio[3] < 0.8 and 0.8 < seq_ratio[1] < 1.2
    trl_loss, trl_grad = _trl_loss(monkeypatch, "grpo", lp, old, adv, mask, 0.2, eps_high, level="sequence")
    our_loss, our_grad = _ours("gspo", "seq-mean-token-mean", lp, old, adv, mask, 0.2, eps_high)
    assert abs(trl_loss.item() - our_loss.item()) < 1e-6
    assert torch.allclose(trl_grad, our_grad, atol=1e-6)


def test_cispo_parity(monkeypatch):
    lp, old, _, adv, mask = _data(5, spread=0.5)
    trl_loss, trl_grad = _trl_loss(monkeypatch, "cispo", lp, old, adv, mask, 0.2, 1.3)  # TRL: weight = min(rho, 1.3)
    our_loss, our_grad = _ours("cispo", "token-mean", lp, old, adv, mask, 1.0, 0.3)
    assert abs(trl_loss.item() - our_loss.item()) < 1e-6
    assert torch.allclose(trl_grad, our_grad, atol=1e-6)


def test_dual_clip_is_the_one_difference(monkeypatch):
    # A < 0 and rho = 4 > c: TRL has no dual-clip, ours caps the loss at -A * c
    lp, old, _, adv, mask = _data(0)
    lp = lp.clone()
    lp[1, 0] = old[1, 0] + torch.log(torch.tensor(4.0, dtype=torch.float64))  # adv[1] = -0.7
    trl_loss, trl_grad = _trl_loss(monkeypatch, "dapo", lp, old, adv, mask, 0.2, 0.2)
    capped, _ = _ours("vanilla", "token-mean", lp, old, adv, mask, 0.2, 0.2)
    assert capped.item() < trl_loss.item() - 1e-3
    uncapped, our_grad = _ours("vanilla", "token-mean", lp, old, adv, mask, 0.2, 0.2, c=1e9)
    assert abs(trl_loss.item() - uncapped.item()) < 1e-6
    assert torch.allclose(trl_grad, our_grad, atol=1e-6)
