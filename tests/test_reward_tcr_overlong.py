"""GRPO-TCR's tool-call reward (spec §10 (e)) and the DAPO overlong wrapper (spec §6.4) at the card's numbers."""

import pytest

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards import REWARDS, RewardPool
from scirl.rewards.overlong import overlong, overlong_penalty_scalar
from scirl.rewards.tcr import tcr, tcr_score


def _s(answer="42"):
    return Sample("p", [{"role": "user", "content": "q"}], answer)


RIGHT = "so the result is \\boxed{42}"
WRONG = "so the result is \\boxed{41}"


def test_registered():
    assert REWARDS["tcr"] is tcr and REWARDS["overlong"] is overlong


@pytest.mark.parametrize(
    "completion, num_turns, score, acc",
    [
        (WRONG, 2, -1.0, 0.0),  # wrong, 0 tool calls
        (WRONG, 4, -0.9, 0.0),
        (WRONG, 8, -0.7, 0.0),  # 3 calls
        (WRONG, 10, -0.6, 0.0),  # 4 calls: the cap
        (WRONG, 32, -0.6, 0.0),
        ("no box at all", 2, -1.0, 0.0),  # strict box: a missing box is wrong
        (RIGHT, 2, 1.0, 1.0),  # correct: no tool bonus
        (RIGHT, 10, 1.0, 1.0),
    ],
)
def test_tcr_values(completion, num_turns, score, acc):
    r = tcr(_s(), completion, {"num_turns": num_turns})
    assert r.score == pytest.approx(score, abs=1e-9)
    assert r.components["acc"] == acc and r.components["num_turns"] == num_turns
    assert r.components["base"] == (1.0 if acc else -1.0)


def test_tcr_formula():
    assert tcr_score(-1.0, 2) == -1.0
    assert tcr_score(-1.0, 8) == pytest.approx(-0.7)
    assert tcr_score(-1.0, 100) == -0.6
    assert tcr_score(1.0, 2) == 1.0


@pytest.mark.parametrize("info", [{}, None, {"other": 1}])
def test_tcr_missing_num_turns_is_an_error_not_minus_1_1(info):
    with pytest.raises(ScirlError, match="num_turns"):
        tcr(_s(), WRONG, info)


@pytest.mark.parametrize("bad", [0, 1, -3, "8", 2.5, True, None])
def test_tcr_invalid_num_turns(bad):
    with pytest.raises(ScirlError, match="num_turns"):
        tcr(_s(), WRONG, {"num_turns": bad})


def test_tcr_alias_and_float_turns():
    assert tcr(_s(), WRONG, {"__num_turns__": 8}).score == pytest.approx(-0.7)
    assert tcr(_s(), WRONG, {"num_turns": 8.0}).score == pytest.approx(-0.7)


def test_tcr_in_pool_missing_num_turns_scores_error():
    with RewardPool("tcr", workers=0) as pool:
        results, stats = pool.score([(_s(), WRONG, {}), (_s(), WRONG, {"num_turns": 8})])
    assert stats["errors"] == 1 and "num_turns" in pool.last_error
    assert results[0].components == {"error": 1.0} and results[1].score == pytest.approx(-0.7)


# --- overlong -------------------------------------------------------------------------------------------------
CARD = {"max_len": 20480, "buffer_len": 3000, "penalty_factor": 1.0}


@pytest.mark.parametrize("length, penalty", [(100, 0.0), (17480, 0.0), (18980, -0.5), (20480, -1.0)])
def test_overlong_penalty_card_values(length, penalty):
    assert overlong_penalty_scalar(length, 20480, 3000, 1.0) == pytest.approx(penalty)


def test_overlong_penalty_matches_torch_version():
    torch = pytest.importorskip("torch")
    from scirl.algos.overlong import overlong_penalty

    lengths = [0, 17000, 17480, 17481, 18980, 20000, 20480, 21000]
    for factor in (1.0, 0.5):
        ref = overlong_penalty(torch.tensor(lengths), 20480, 3000, factor).tolist()
        ours = [overlong_penalty_scalar(n, 20480, 3000, factor) for n in lengths]
        assert ours == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("length, penalty", [(17480, 0.0), (18980, -0.5), (20480, -1.0)])
def test_overlong_wraps_boxed_numeric(length, penalty):
    info = {"inner": "boxed_numeric", "inner_info": {}, **CARD, "length": length}
    r = overlong(_s(), RIGHT, info)
    assert r.score == pytest.approx(1.0 + penalty)
    assert r.components["overlong_penalty"] == pytest.approx(penalty)
    assert r.components["acc"] == 1.0 and r.components["has_box"] == 1.0 and r.pred == "42"


def test_overlong_wraps_tcr_with_num_turns_in_inner_info_or_top_level():
    r = overlong(_s(), WRONG, {"inner": "tcr", "inner_info": {"num_turns": 8}, **CARD, "length": 18980})
    assert r.score == pytest.approx(-0.7 - 0.5) and r.components["base"] == -1.0
    r = overlong(_s(), WRONG, {"inner": "tcr", "num_turns": 2, **CARD, "length": 20480})
    assert r.score == pytest.approx(-2.0)
    with pytest.raises(ScirlError, match="num_turns"):
        overlong(_s(), WRONG, {"inner": "tcr", **CARD, "length": 100})


@pytest.mark.parametrize(
    "info, match",
    [
        ({**CARD, "length": 10}, "inner"),
        ({"inner": "no_such_reward", **CARD, "length": 10}, "unknown reward"),
        ({"inner": "overlong", **CARD, "length": 10}, "itself"),
        ({"inner": "boxed_numeric", **CARD}, "length"),
        ({"inner": "boxed_numeric", "max_len": 100, "length": 10}, "buffer_len"),
        ({"inner": "boxed_numeric", "max_len": 100, "buffer_len": 200, "length": 10}, "buffer_len"),
        ({"inner": "boxed_numeric", **CARD, "length": "long"}, "length"),
    ],
)
def test_overlong_bad_info(info, match):
    with pytest.raises(ScirlError, match=match):
        overlong(_s(), RIGHT, info)
