"""Rollout correction: truncated IS weights (§5 worked numbers), rejection-sampling masks (verl semantics), metrics."""

import math

import pytest
import torch

from scirl.algos import rollout_correction_metrics, rollout_is_weights, rollout_rs_mask
from scirl.errors import ScirlError


def test_token_weights_worked_examples():
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    roll = torch.tensor([[-1.9, -0.3, -1.0]])
    w = rollout_is_weights(old, roll, torch.ones(1, 3), level="token", threshold=2.0)
    # e^0.9 = 2.4596 -> truncated to 2.0 ; e^-0.7 = 0.4966 stays ; equal -> 1
    assert w[0, 0].item() == pytest.approx(2.0)
    assert w[0, 1].item() == pytest.approx(math.exp(-0.7)) and w[0, 1].item() == pytest.approx(0.4966, abs=1e-4)
    assert w[0, 2].item() == pytest.approx(1.0)


def test_nothing_masked_no_lower_clamp_and_padding_zero():
    old = torch.tensor([[-1.0, -1.0, -1.0, 0.0]])
    roll = torch.tensor([[-1.0 + 15.0, -1.0 + 40.0, -50.0, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = rollout_is_weights(old, roll, mask)
    assert w[0, 0].item() == pytest.approx(math.exp(-15.0))  # tiny but kept
    assert w[0, 1].item() == pytest.approx(math.exp(-20.0))  # log-ratio clamped at -20, not zeroed
    assert w[0, 2].item() == 2.0  # huge ratio: truncated at C
    assert w[0, 3].item() == 0.0  # padding (even nan) -> 0
    assert (w[mask.bool()] > 0).all()


def test_weights_are_detached():
    old = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    roll = torch.tensor([[-1.5, -2.0]], requires_grad=True)
    for level in ("token", "sequence"):
        w = rollout_is_weights(old, roll, torch.ones(1, 2), level=level)
        assert not w.requires_grad and w.grad_fn is None


def test_sequence_level():
    old = torch.zeros(3, 3)
    # seq0 log-ratios [0.3, -0.1, 0.2] -> sum 0.4 -> e^0.4 = 1.4918
    # seq1 [0.5, 0.4, (pad 9.0)] -> sum 0.9 -> e^0.9 = 2.4596 -> truncated to 2.0
    # seq2 [-0.5, -0.5, -0.5] -> e^-1.5 = 0.2231
    log_ratio = torch.tensor([[0.3, -0.1, 0.2], [0.5, 0.4, 9.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    w = rollout_is_weights(old, old - log_ratio, mask, level="sequence", threshold=2.0)
    assert torch.allclose(w[0], torch.full((3,), math.exp(0.4)), atol=1e-6)
    assert torch.allclose(w[1], torch.tensor([2.0, 2.0, 0.0]))
    assert torch.allclose(w[2], torch.full((3,), math.exp(-1.5)), atol=1e-6)


def test_is_errors():
    x = torch.zeros(1, 2)
    with pytest.raises(ScirlError, match="rollout IS level") as e:
        rollout_is_weights(x, x, torch.ones(1, 2), level="tokens")
    assert "Did you mean 'token'" in str(e.value)
    with pytest.raises(ScirlError, match="threshold"):
        rollout_is_weights(x, x, torch.ones(1, 2), threshold=0.0)
    with pytest.raises(ScirlError, match="one shape"):
        rollout_is_weights(x, torch.zeros(1, 3), torch.ones(1, 2))


# ---------------------------------------------------------------- rejection sampling


def _rs_case():
    """Row 0: r = [0.1, 1.0, -1.0, 0.0]; row 1: r = [0.5, 0.5, pad, pad] (r = lp_old - lp_roll)."""
    r = torch.tensor([[0.1, 1.0, -1.0, 0.0], [0.5, 0.5, 7.0, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    old = torch.full((2, 4), -1.0)
    return old, old - r, mask


def test_token_k1_symmetric_ratio_bound():
    old, roll, mask = _rs_case()
    # threshold 2.0 -> keep |r| <= log 2 = 0.693
    out = rollout_rs_mask(old, roll, mask, "token_k1", 2.0)
    assert torch.equal(out, torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]]))
    assert out.dtype == mask.dtype


def test_token_k1_explicit_bounds():
    old, roll, mask = _rs_case()
    # verl's k1 statistic is -r = log(pi_roll / pi_old); "0.5_3.0" keeps log 0.5 <= -r <= log 3
    for thr in ("0.5_3.0", (0.5, 3.0)):
        out = rollout_rs_mask(old, roll, mask, "token_k1", thr)
        assert torch.equal(out[0], torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_token_k2_k3():
    old, roll, mask = _rs_case()
    # k2 = r^2/2: [0.005, 0.5, 0.5, 0] ; keep <= 0.1
    assert torch.equal(rollout_rs_mask(old, roll, mask, "token_k2", 0.1)[0], torch.tensor([1.0, 0.0, 0.0, 1.0]))
    # k3 = e^r - 1 - r: [0.00517, 0.71828, 0.36788, 0] ; keep <= 0.5
    assert torch.equal(rollout_rs_mask(old, roll, mask, "token_k3", 0.5)[0], torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_sequence_kinds():
    old, roll, mask = _rs_case()
    # seq_sum_k1: row0 sum(-r) = -0.1 (keep); row1 sum(-r) = -1.0 < log(1/2) (reject the whole row)
    out = rollout_rs_mask(old, roll, mask, "seq_sum_k1", 2.0)
    assert torch.equal(out, torch.tensor([[1.0] * 4, [0.0] * 4]))
    # seq_mean_k1: row1 mean -0.5 within +-log 2 -> kept; row0 mean -0.025 -> kept
    assert torch.equal(rollout_rs_mask(old, roll, mask, "seq_mean_k1", 2.0), mask)
    # ... but not within +-log 1.5 = +-0.405: the mean is over row1's 2 valid tokens (over all 4 it would be -0.25)
    assert torch.equal(rollout_rs_mask(old, roll, mask, "seq_mean_k1", 1.5), torch.tensor([[1.0] * 4, [0.0] * 4]))
    # seq_mean_k3: row0 mean (0.005171 + 0.718282 + 0.367879 + 0) / 4 = 0.272833 ; row1 e^0.5 - 1.5 = 0.148721
    k3 = lambda x: math.exp(x) - 1 - x  # noqa: E731
    row0 = (k3(0.1) + k3(1.0) + k3(-1.0) + k3(0.0)) / 4
    assert row0 == pytest.approx(0.272833, abs=1e-6)
    out = rollout_rs_mask(old, roll, mask, "seq_mean_k3", 0.2)
    assert torch.equal(out, torch.tensor([[0.0] * 4, [1.0, 1.0, 0.0, 0.0]]))
    # seq_max_k2: row0 max 0.5, row1 max 0.125 ; keep <= 0.2
    out = rollout_rs_mask(old, roll, mask, "seq_max_k2", 0.2)
    assert torch.equal(out, torch.tensor([[0.0] * 4, [1.0, 1.0, 0.0, 0.0]]))
    # seq_sum_k2: row0 1.005, row1 0.25 ; keep <= 1.0
    out = rollout_rs_mask(old, roll, mask, "seq_sum_k2", 1.0)
    assert torch.equal(out, torch.tensor([[0.0] * 4, [1.0, 1.0, 0.0, 0.0]]))
    # seq_max_k3 with a loose bound keeps everything valid
    assert torch.equal(rollout_rs_mask(old, roll, mask, "seq_max_k3", 1.0), mask)


def test_rs_errors():
    old, roll, mask = _rs_case()
    with pytest.raises(ScirlError, match="rollout RS kind") as e:
        rollout_rs_mask(old, roll, mask, "token_k4", 2.0)
    assert "token_k1" in str(e.value)
    with pytest.raises(ScirlError, match="lower"):
        rollout_rs_mask(old, roll, mask, "token_k1", "3.0_0.5")
    with pytest.raises(ScirlError, match="positive"):
        rollout_rs_mask(old, roll, mask, "seq_mean_k3", -1.0)


# ---------------------------------------------------------------- metrics


def test_metrics_values():
    old = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    roll = torch.tensor([[-1.9, -0.3, -1.0, -6.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = rollout_is_weights(old, roll, mask)  # [2.0, 0.4966, 1.0, 0]
    rs = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    m = rollout_correction_metrics(w, old - roll, mask, rs_mask=rs, threshold=2.0)
    assert m["rollout_is/mean"] == pytest.approx((2.0 + math.exp(-0.7) + 1.0) / 3)  # 1.165528
    assert m["rollout_is/mean"] == pytest.approx(1.165528, abs=1e-6)
    assert m["rollout_is/truncated_frac"] == pytest.approx(1 / 3)  # the padded e^5 does not count
    assert m["rollout_is/max"] == pytest.approx(2.0) and m["rollout_is/min"] == pytest.approx(math.exp(-0.7))
    assert m["rollout_rs/masked_frac"] == pytest.approx(1 / 3)
    assert m["rollout_rs/seq_masked_frac"] == 1.0
    assert all(isinstance(v, float) for v in m.values())
    m = rollout_correction_metrics(w, old - roll, mask)
    assert m["rollout_rs/masked_frac"] == 0.0


def test_metrics_sequence_level_and_empty_mask():
    old = torch.zeros(2, 2)
    log_ratio = torch.tensor([[0.5, 0.4], [0.1, 0.1]])  # sums 0.9 (truncated) and 0.2
    mask = torch.ones(2, 2)
    w = rollout_is_weights(old, old - log_ratio, mask, level="sequence")
    m = rollout_correction_metrics(w, log_ratio, mask, level="sequence")
    assert m["rollout_is/truncated_frac"] == pytest.approx(0.5)
    assert m["rollout_is/mean"] == pytest.approx((2.0 + math.exp(0.2)) / 2)
    empty = rollout_correction_metrics(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2))
    assert empty["rollout_is/mean"] == 0.0 and empty["rollout_is/truncated_frac"] == 0.0


# ---------------------------------------------------------------- IcePop, batch normalisation (current verl)


def _icepop_case():
    """log-ratios lp_old - lp_roll = [0.9, -0.9, 0.3, -2.0] (+ a padded token): raw weights
    [2.4596, 0.4066, 1.3499, 0.1353]."""
    old = torch.full((1, 5), -1.0)
    roll = old - torch.tensor([[0.9, -0.9, 0.3, -2.0, 5.0]])
    return old, roll, torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])


def test_icepop_zeroes_weights_outside_both_bounds_tis_truncates():
    old, roll, mask = _icepop_case()
    tis = rollout_is_weights(old, roll, mask, threshold=2.0)
    assert torch.allclose(tis, torch.tensor([[2.0, math.exp(-0.9), math.exp(0.3), math.exp(-2.0), 0.0]]))
    # verl's "lower_upper" string and the explicit threshold_lower give the same IcePop weights
    for kw in ({"threshold": "0.5_2.0"}, {"threshold": 2.0, "threshold_lower": 0.5}):
        w = rollout_is_weights(old, roll, mask, **kw)
        assert torch.allclose(w, torch.tensor([[0.0, 0.0, math.exp(0.3), 0.0, 0.0]]))  # not clamped: zeroed
    # a bound exactly at a weight keeps it (closed interval, as verl)
    w = rollout_is_weights(old, roll, mask, threshold=f"{math.exp(-0.9)}_{math.exp(0.9) + 1e-6}")
    assert torch.allclose(w, torch.tensor([[math.exp(0.9), math.exp(-0.9), math.exp(0.3), 0.0, 0.0]]))


def test_icepop_sequence_level_zeroes_whole_rows():
    old = torch.zeros(3, 2)
    log_ratio = torch.tensor([[0.3, 0.2], [0.6, 0.6], [-0.5, -0.5]])  # sums 0.5, 1.2, -1.0
    roll = old - log_ratio
    # [0.5, 3]: e^0.5 = 1.6487 kept; e^1.2 = 3.3201 above and e^-1 = 0.3679 below: whole rows zeroed
    w = rollout_is_weights(old, roll, torch.ones(3, 2), level="sequence", threshold="0.5_3.0")
    assert torch.allclose(w, torch.tensor([[math.exp(0.5)] * 2, [0.0, 0.0], [0.0, 0.0]]))
    w = rollout_is_weights(old, roll, torch.ones(3, 2), level="sequence", threshold="0.3_4.0")
    assert torch.allclose(w, torch.tensor([[math.exp(0.5)] * 2, [math.exp(1.2)] * 2, [math.exp(-1.0)] * 2]))


def test_is_threshold_errors():
    old, roll, mask = _icepop_case()
    with pytest.raises(ScirlError, match="already has a lower bound"):
        rollout_is_weights(old, roll, mask, threshold="0.5_2.0", threshold_lower=0.5)
    with pytest.raises(ScirlError, match="lower 3.0 > upper 2.0"):
        rollout_is_weights(old, roll, mask, threshold="3.0_2.0")
    with pytest.raises(ScirlError, match="threshold_lower 3.0 > threshold 2.0"):
        rollout_is_weights(old, roll, mask, threshold=2.0, threshold_lower=3.0)
    with pytest.raises(ScirlError, match="positive"):
        rollout_is_weights(old, roll, mask, threshold="abc")


def test_batch_normalisation_to_mean_one():
    from scirl.algos import normalize_is_weights

    w = torch.tensor([[2.0, 0.5, 1.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out, factor = normalize_is_weights(w, mask, "token")
    assert factor == pytest.approx(4 / 3)  # mean of the valid tokens' weights
    assert torch.allclose(out[:, :3], torch.tensor([[1.5, 0.375, 1.125]]))
    # sequence level: the mean over non-empty sequences of each sequence's weight (long rows do not count more)
    w = torch.tensor([[2.0, 2.0, 2.0], [0.5, 0.0, 0.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out, factor = normalize_is_weights(w, mask, "sequence")
    assert factor == pytest.approx(1.25) and out[0, 0].item() == pytest.approx(1.6)
    # all weights zeroed (IcePop): nothing to rescale, factor 1 (as verl)
    out, factor = normalize_is_weights(torch.zeros(1, 2), torch.ones(1, 2), "token")
    assert factor == 1.0 and torch.equal(out, torch.zeros(1, 2))


# ---------------------------------------------------------------- chained rejection sampling


def test_chained_kinds_are_each_computed_on_the_input_mask_and_anded():
    from scirl.algos import rollout_rs_masks

    old, roll, mask = _rs_case()
    masks = rollout_rs_masks(old, roll, mask, "token_k1, seq_mean_k3", "2.0,0.2")
    assert list(masks) == ["token_k1", "seq_mean_k3"]
    assert torch.equal(masks["token_k1"], torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]]))
    assert torch.equal(masks["seq_mean_k3"], torch.tensor([[0.0] * 4, [1.0, 1.0, 0.0, 0.0]]))
    out = rollout_rs_mask(old, roll, mask, "token_k1,seq_mean_k3", "2.0,0.2")
    # row 0's k3 mean is over all 4 of its tokens (0.2728 > 0.2), not over the 2 token_k1 kept (0.0026)
    assert torch.equal(out, torch.tensor([[0.0] * 4, [1.0, 1.0, 0.0, 0.0]]))


def test_chained_thresholds_shared_or_one_per_kind():
    old, roll, mask = _rs_case()
    # one shared entry: token_k1 keeps ratios in [1/2, 2]; token_k2 keeps r^2 / 2 <= 2 (everything)
    shared = rollout_rs_mask(old, roll, mask, "token_k1,token_k2", 2.0)
    assert torch.equal(shared, rollout_rs_mask(old, roll, mask, "token_k1", 2.0))
    # per kind, with a k1 "lo_hi" entry: token_k1 in [0.5, 3.0] keeps token 2 too; token_k2 <= 0.1 drops it
    per_kind = rollout_rs_mask(old, roll, mask, "token_k1,token_k2", "0.5_3.0,0.1")
    assert torch.equal(per_kind[0], torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.equal(rollout_rs_mask(old, roll, mask, "token_k1,token_k1", "0.5_3.0")[0],
                       torch.tensor([1.0, 0.0, 1.0, 1.0]))  # duplicates dropped, as verl
    with pytest.raises(ScirlError, match="3 entries for 2 kinds"):
        rollout_rs_mask(old, roll, mask, "token_k1,token_k2", "2.0,0.1,0.3")
    with pytest.raises(ScirlError, match="not 'lower_upper'"):
        rollout_rs_mask(old, roll, mask, "token_k1,token_k2", "2.0,0.1_0.3")
    with pytest.raises(ScirlError, match="rollout RS kind"):
        rollout_rs_mask(old, roll, mask, "token_k1,seq_sum_k9", 2.0)


def test_metrics_icepop_and_per_kind():
    from scirl.algos import rollout_rs_masks

    old, roll, mask = _icepop_case()
    w = rollout_is_weights(old, roll, mask, threshold="0.5_2.0")
    m = rollout_correction_metrics(w, old - roll, mask, threshold="0.5_2.0")
    assert m["rollout_is/oob_frac"] == pytest.approx(3 / 4)  # 2.46 above, 0.41 and 0.14 below
    assert m["rollout_is/truncated_frac"] == pytest.approx(1 / 4)
    assert "rollout_is/oob_frac" not in rollout_correction_metrics(w, old - roll, mask, threshold=2.0)
    old, roll, mask = _rs_case()
    masks = rollout_rs_masks(old, roll, mask, "token_k1,seq_mean_k3", "2.0,0.2")
    final = rollout_rs_mask(old, roll, mask, "token_k1,seq_mean_k3", "2.0,0.2")
    m = rollout_correction_metrics(torch.ones_like(mask), old - roll, mask, rs_mask=final, rs_masks=masks)
    assert m["rollout_rs/token_k1/masked_frac"] == pytest.approx(2 / 6)
    assert m["rollout_rs/seq_mean_k3/masked_frac"] == pytest.approx(4 / 6)
    assert m["rollout_rs/masked_frac"] == pytest.approx(4 / 6) and m["rollout_rs/seq_masked_frac"] == 0.5
