"""Loss aggregation modes: the table of ALGORITHMS.md §3, global denominators, empty masks."""

import pytest
import torch

from scirl.algos import LOSS_AGG_MODES, aggregate_loss
from scirl.errors import ScirlError


def _example():
    # seq1 = [1,1,1], seq2 = [-1]; padded to T = 3
    loss = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    return loss, mask


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", 0.5),
        ("seq-mean-token-mean", 0.0),
        ("seq-mean-token-sum", 1.0),
        ("seq-mean-token-sum-norm", 0.5),
        ("seq-mean-token-sum-norm-paper", 0.25),
    ],
)
def test_worked_table(mode, expected):
    loss, mask = _example()
    assert aggregate_loss(loss, mask, mode, max_len=4).item() == pytest.approx(expected)


def test_default_is_token_mean_and_max_len_defaults_to_T():
    loss, mask = _example()
    assert aggregate_loss(loss, mask).item() == pytest.approx(0.5)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(2 / 3)


def test_global_denominator_over_micro_batches_matches_full_batch():
    torch.manual_seed(0)
    loss = torch.randn(6, 5, requires_grad=True)
    mask = (torch.rand(6, 5) > 0.4).float()
    mask[:, 0] = 1
    for mode in LOSS_AGG_MODES:
        full = aggregate_loss(loss, mask, mode, max_len=8)
        if mode == "token-mean":
            den = mask.sum()
        else:
            den = (mask.sum(-1) > 0).sum()
        parts = sum(
            aggregate_loss(loss[i : i + 2], mask[i : i + 2], mode, max_len=8, denominator=den) for i in (0, 2, 4)
        )
        assert parts.item() == pytest.approx(full.item(), abs=1e-6), mode


def test_token_mean_gradient_is_mask_over_count():
    loss = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    aggregate_loss(loss, mask).backward()
    assert torch.allclose(loss.grad, mask / 3)


def test_empty_mask_returns_zero_with_grad():
    loss = torch.ones(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3)
    for mode in LOSS_AGG_MODES:
        out = aggregate_loss(loss, mask, mode)
        assert out.item() == 0.0 and out.requires_grad
        out.backward()
    out = aggregate_loss(loss, mask, denominator=0)
    assert out.item() == 0.0 and out.requires_grad


def test_masked_nan_does_not_leak():
    loss = torch.tensor([[1.0, float("nan")]])
    mask = torch.tensor([[1.0, 0.0]])
    for mode in LOSS_AGG_MODES:
        assert torch.isfinite(aggregate_loss(loss, mask, mode))


def test_unknown_mode():
    loss, mask = _example()
    with pytest.raises(ScirlError) as e:
        aggregate_loss(loss, mask, "token_mean")
    assert "Did you mean 'token-mean'" in str(e.value)


def test_masked_mean_and_entropy_helpers():
    from scirl.algos import entropy_from_logits, masked_mean

    x = torch.tensor([[1.0, 2.0, float("inf")], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, m).item() == pytest.approx(1.5)
    assert torch.allclose(masked_mean(x, m, dim=-1), torch.tensor([1.5, 0.0]))
    logits = torch.randn(2, 3, 7)
    p = torch.softmax(logits, -1)
    ref = -(p * torch.log(p)).sum(-1)
    assert torch.allclose(entropy_from_logits(logits), ref, atol=1e-5)
    assert entropy_from_logits(torch.zeros(1, 4)).item() == pytest.approx(torch.log(torch.tensor(4.0)).item())
