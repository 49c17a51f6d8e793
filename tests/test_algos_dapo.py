"""DAPO pieces: overlong reward shaping (§6 card (e) numbers) and dynamic-sampling group filtering."""

import numpy as np
import pytest
import torch

from scirl.algos import filter_groups, overlong_penalty
from scirl.errors import ScirlError


def test_overlong_card_e_numbers():
    # L_max 20480, buffer 3000 -> L_exp 17480
    out = overlong_penalty(torch.tensor([100, 17480, 18980, 20480]), max_len=20480, buffer_len=3000, factor=1.0)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, -0.5, -1.0]))
    assert out.dtype.is_floating_point


def test_overlong_factor_paper_buffer_and_beyond_max():
    # paper: L_max 20480, L_buf 4096 -> L_exp 16384; halfway into the buffer with factor 0.5 -> -0.25
    assert overlong_penalty(torch.tensor(16384 + 2048), 20480, 4096, factor=0.5).item() == pytest.approx(-0.25)
    # like verl, longer than max_len is not clipped at -factor
    assert overlong_penalty(torch.tensor([20480 + 3000]), 20480, 3000).item() == pytest.approx(-2.0)
    # python ints / lists are accepted
    assert overlong_penalty([17481], 20480, 3000).item() == pytest.approx(-1 / 3000)


@pytest.mark.parametrize("buffer_len", [0, -5, 20481, 2.5])
def test_overlong_buffer_validation(buffer_len):
    with pytest.raises(ScirlError, match="buffer_len"):
        overlong_penalty(torch.tensor([1]), 20480, buffer_len, 1.0)


def test_overlong_buffer_equal_to_max_len_is_valid():
    assert overlong_penalty(torch.tensor([0, 10, 20]), 20, 20, 1.0).tolist() == pytest.approx([0.0, -0.5, -1.0])


def test_filter_groups_keeps_mixed_and_singletons_in_first_appearance_order():
    index = ["b", "a", "b", "c", "a", "d", "d", "e", "e"]
    metric = [1.0, 0.0, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 1.0]
    # b all-equal -> dropped; a mixed -> kept; c singleton -> kept; d all-equal -> dropped; e mixed -> kept
    assert filter_groups(index, metric) == ["a", "c", "e"]


def test_filter_groups_matches_verl_np_std_and_accepts_bools_and_arrays():
    index = np.array(["u1", "u1", "u1", "u2", "u2"])
    acc = np.array([True, True, True, False, True])
    assert filter_groups(index, acc) == ["u2"]
    # all groups uniform -> nothing kept
    assert filter_groups(["x", "x", "y", "y"], [0, 0, -1, -1]) == []


def test_filter_groups_length_check():
    with pytest.raises(ScirlError, match="uids"):
        filter_groups(["a", "b"], [1.0])
