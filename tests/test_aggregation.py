"""Loss aggregation modes: the table of ALGORITHMS.md §3 (current verl), fully masked rows, global denominators
for micro-batching, the renamed Dr.GRPO mode, empty masks."""

import pytest
import torch

from scirl.algos import LOSS_AGG_MODES, aggregate_loss, global_denominator
from scirl.errors import ScirlError


def _example():
    # seq1 = [1,1,1], seq2 = [-1], seq3 fully masked (e.g. rejected by rollout correction); padded to T = 3
    loss = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 7.0, 7.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    return loss, mask


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", 0.5),  # (3 - 1) / 4
        ("token-sum", 2.0),  # 3 - 1
        ("seq-mean-token-mean", 0.0),  # (1 + (-1)) / 2
        ("seq-mean-token-sum", 1.0),  # (3 - 1) / 2: the masked row does not count (2/3 if it did)
        ("seq-mean-token-sum-norm", 0.25),  # 2 / (2 * 4): current verl = Dr.GRPO paper
        ("seq-mean-token-sum-norm-legacy", 0.5),  # 2 / 4: verl before PRs #5366/#5417
    ],
)
def test_worked_table_with_a_fully_masked_row(mode, expected):
    loss, mask = _example()
    assert aggregate_loss(loss, mask, mode, max_len=4).item() == pytest.approx(expected)


def test_fully_masked_rows_do_not_count_as_sequences():
    loss, mask = _example()
    two = aggregate_loss(loss[:2], mask[:2], "seq-mean-token-sum-norm", max_len=4)
    three = aggregate_loss(loss, mask, "seq-mean-token-sum-norm", max_len=4)
    assert three.item() == pytest.approx(two.item()) and three.item() == pytest.approx(0.25)  # not 2 / (3 * 4)
    assert global_denominator("seq-mean-token-mean", mask).item() == 2


def test_seq_mean_token_sum_norm_follows_current_verl():
    # the witness: loss [[1], [1]], max_len 1 -> 1.0 (verl before Feb 2026 gave 2.0)
    loss, mask = torch.ones(2, 1), torch.ones(2, 1)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm", max_len=1).item() == pytest.approx(1.0)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm-legacy", max_len=1).item() == pytest.approx(2.0)


def test_default_is_token_mean_and_max_len_defaults_to_T():
    loss, mask = _example()
    assert aggregate_loss(loss, mask).item() == pytest.approx(0.5)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(2 / (2 * 3))
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm-legacy").item() == pytest.approx(2 / 3)


def test_global_denominators():
    loss, mask = _example()
    assert global_denominator("token-mean", mask).item() == 4
    for mode in ("seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        assert global_denominator(mode, mask).item() == 2
    assert global_denominator("token-sum", mask) is None
    assert global_denominator("seq-mean-token-sum-norm-legacy", mask) is None


@pytest.mark.parametrize("mode", list(LOSS_AGG_MODES))
def test_summed_micro_batches_equal_the_mini_batch(mode):
    torch.manual_seed(0)
    loss = torch.randn(6, 5, requires_grad=True)
    mask = (torch.rand(6, 5) > 0.4).float()
    mask[:, 0] = 1
    mask[3] = 0  # a fully masked row inside a micro-batch
    full = aggregate_loss(loss, mask, mode, max_len=8)
    (g_full,) = torch.autograd.grad(full, loss)
    den = global_denominator(mode, mask)
    parts = sum(aggregate_loss(loss[i : i + 2], mask[i : i + 2], mode, max_len=8, denominator=den) for i in (0, 2, 4))
    (g_parts,) = torch.autograd.grad(parts, loss)
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(g_parts, g_full, atol=1e-7)
    # without the global normaliser the batch-normalised modes average per micro-batch and differ
    local = sum(aggregate_loss(loss[i : i + 2], mask[i : i + 2], mode, max_len=8) for i in (0, 2, 4))
    if den is not None:
        assert abs(local.item() - full.item()) > 1e-3


def test_token_mean_gradient_is_mask_over_count_and_token_sum_is_mask():
    loss = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    aggregate_loss(loss, mask).backward()
    assert torch.allclose(loss.grad, mask / 3)
    loss.grad = None
    aggregate_loss(loss, mask, "token-sum").backward()
    assert torch.equal(loss.grad, mask)


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


def test_unknown_and_removed_modes():
    loss, mask = _example()
    with pytest.raises(ScirlError) as e:
        aggregate_loss(loss, mask, "token_mean")
    assert "Did you mean 'token-mean'" in str(e.value)
    with pytest.raises(ScirlError) as e:  # the old name of what seq-mean-token-sum-norm now is
        aggregate_loss(loss, mask, "seq-mean-token-sum-norm-paper")
    msg = str(e.value)
    assert "was removed" in msg and "use it" in msg and "\n" not in msg
    with pytest.raises(ScirlError):
        global_denominator("seq-mean-token-sum-norm-paper", mask)


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
