"""GRPO advantage: the worked numbers of ALGORITHMS.md §1, masking, grouping, registry lookups."""

import pytest
import torch
from conftest import outcome_rewards

from scirl.algos import ADVANTAGE_ESTIMATORS, get_advantage_estimator
from scirl.algos.advantages import grpo
from scirl.errors import ScirlError


_outcome = outcome_rewards


def test_worked_example_1001():
    tlr, mask = _outcome([1, 0, 0, 1], [4, 3, 2, 1])
    adv = grpo(tlr, mask, ["u"] * 4)
    expected = torch.tensor([0.866024, -0.866024, -0.866024, 0.866024])
    assert torch.allclose(adv[:, 0], expected, atol=1e-5)
    # broadcast over valid tokens only
    assert torch.equal(adv != 0, mask.bool())
    assert torch.allclose(adv, expected[:, None] * mask, atol=1e-5)


def test_dr_grpo_1001():
    tlr, mask = _outcome([1, 0, 0, 1], [4, 4, 4, 4])
    adv = grpo(tlr, mask, ["u"] * 4, norm_adv_by_std_in_grpo=False)
    assert torch.allclose(adv[:, 0], torch.tensor([0.5, -0.5, -0.5, 0.5]), atol=1e-7)


def test_worked_example_1000():
    tlr, mask = _outcome([1, 0, 0, 0], [2, 2, 2, 2])
    adv = grpo(tlr, mask, ["u"] * 4)
    assert torch.allclose(adv[:, 0], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    adv = grpo(tlr, mask, ["u"] * 4, norm_adv_by_std_in_grpo=False)
    assert torch.allclose(adv[:, 0], torch.tensor([0.75, -0.25, -0.25, -0.25]), atol=1e-7)


def test_all_equal_group_is_zero():
    tlr, mask = _outcome([1, 1, 1, 1], [3, 3, 3, 3])
    for norm in (True, False):
        assert torch.equal(grpo(tlr, mask, ["u"] * 4, norm_adv_by_std_in_grpo=norm), torch.zeros(4, 4))


def test_groups_are_independent_and_interleaved():
    # two groups interleaved: a -> [1,0,0,1], b -> [1,0,0,0]
    rewards = [1, 1, 0, 0, 0, 0, 1, 0]
    index = ["a", "b", "a", "b", "a", "b", "a", "b"]
    tlr, mask = _outcome(rewards, [3] * 8)
    adv = grpo(tlr, mask, index)[:, 0]
    assert torch.allclose(adv[0::2], torch.tensor([0.866024, -0.866024, -0.866024, 0.866024]), atol=1e-5)
    assert torch.allclose(adv[1::2], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)


def test_matches_torch_std_reference_loop():
    torch.manual_seed(0)
    B, T = 12, 5
    tlr = torch.randn(B, T)
    mask = (torch.rand(B, T) > 0.3).float()
    index = [str(i % 3) for i in range(B)] + []
    adv = grpo(tlr, mask, index)
    scores = tlr.sum(-1)
    for g in set(index):
        rows = [i for i, k in enumerate(index) if k == g]
        s = scores[rows]
        ref = (s - s.mean()) / (torch.std(s) + 1e-6)
        assert torch.allclose(adv[rows], ref[:, None] * mask[rows], atol=1e-5)


def test_singleton_group_uses_mean0_std1():
    tlr, mask = _outcome([0.7, 1.0, 0.0], [2, 2, 2])
    adv = grpo(tlr, mask, ["solo", "pair", "pair"])
    assert adv[0, 0].item() == pytest.approx(0.7 / (1 + 1e-6), rel=1e-6)
    assert adv[1, 0].item() == pytest.approx(0.707106, abs=1e-5)
    adv = grpo(tlr, mask, ["solo", "pair", "pair"], norm_adv_by_std_in_grpo=False)
    assert adv[0, 0].item() == pytest.approx(0.7)


def test_all_equal_group_gives_zero_gradient():
    from scirl.algos import aggregate_loss, get_policy_loss

    tlr, mask = _outcome([1, 1, 1, 1], [3, 3, 3, 3])
    adv = grpo(tlr, mask, ["u"] * 4)
    lp = torch.full((4, 4), -1.0, requires_grad=True)
    loss, _ = get_policy_loss("vanilla")(lp, lp.detach(), adv, mask)
    aggregate_loss(loss, mask).backward()
    assert torch.equal(lp.grad, torch.zeros(4, 4))


def test_no_grad_and_index_length_check():
    tlr, mask = _outcome([1, 0], [2, 2])
    tlr.requires_grad_(True)
    assert not grpo(tlr, mask, ["u", "u"]).requires_grad
    with pytest.raises(ScirlError):
        grpo(tlr, mask, ["u"])


def test_registry():
    assert ADVANTAGE_ESTIMATORS["grpo"] is grpo
    assert get_advantage_estimator("grpo") is grpo
    with pytest.raises(ScirlError, match="grpo") as e:
        get_advantage_estimator("gpro")
    assert "Did you mean 'grpo'" in str(e.value)
    assert "\n" not in str(e.value)
