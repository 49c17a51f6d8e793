"""Tests for the seeded tiny_physics generator: determinism, split disjointness, answers and solutions."""

from __future__ import annotations

import re

import pytest

from scirl.data import synthetic as syn
from scirl.data.sample import Sample
from scirl.errors import ScirlError

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _key(s: Sample) -> tuple:
    return (s.metadata["topic"], tuple(s.metadata["numbers"]))


def test_deterministic_for_a_seed():
    a = syn.make_problems("train", 50, seed=3)
    b = syn.make_problems("train", 50, seed=3)
    assert [s.prompt_id for s in a] == [s.prompt_id for s in b]
    assert [s.messages for s in a] == [s.messages for s in b]
    assert [s.answer for s in a] == [s.answer for s in b]
    c = syn.make_problems("train", 50, seed=4)
    assert [s.prompt_id for s in a] != [s.prompt_id for s in c]


def test_train_and_val_are_disjoint_and_duplicate_free():
    train = syn.make_problems("train", len(syn.all_keys("train")))
    val = syn.make_problems("val", len(syn.all_keys("val")))
    assert len(val) >= 64 and len(train) >= 500
    for split in (train, val):
        assert len({s.messages[0]["content"] for s in split}) == len(split)
        assert len({s.prompt_id for s in split}) == len(split)
    assert not {s.messages[0]["content"] for s in train} & {s.messages[0]["content"] for s in val}
    assert not {_key(s) for s in train} & {_key(s) for s in val}
    assert not {s.prompt_id for s in train} & {s.prompt_id for s in val}
    assert all(s.prompt_id.startswith("tiny_physics/val/") for s in val)
    assert all(syn.split_of(*_key(s)) == "train" for s in train)


def test_answers_are_integers_and_solutions_box_them():
    for s in syn.make_problems("val", 100) + syn.make_problems("train", 200):
        assert isinstance(s, Sample)
        assert s.answer_type == "numeric" and s.data_source == "tiny_physics"
        assert re.fullmatch(r"\d+", s.answer) and int(s.answer) > 0
        assert s.messages[0]["role"] == "user"
        assert s.messages[0]["content"].endswith("Put the final answer in \\boxed{}.")
        sol = s.metadata["solution"]
        assert sol.startswith("<think>\n") and "\n</think>\n\n" in sol
        assert BOXED.findall(sol)[-1] == s.answer
        assert sol.split("\n")[1].endswith(f"= {s.answer}")
        assert int(s.answer) == syn.answer_of(*_key(s))


def test_topics_cover_at_least_eight():
    assert len(syn.TOPICS) >= 8
    seen = {s.metadata["topic"] for s in syn.make_problems("train", 300, seed=0)}
    assert len(seen) >= 8 and seen <= set(syn.TOPICS)


def test_solution_text_example():
    assert syn.solution_text("force", (3, 4)) == "<think>\nF = m*a = 3*4 = 12\n</think>\n\n\\boxed{12}"
    assert syn.solution_text("acceleration", (12, 3)).endswith("\\boxed{4}")


def test_bad_requests_raise_scirl_error():
    with pytest.raises(ScirlError, match="unknown split"):
        syn.make_problems("test", 5)
    with pytest.raises(ScirlError, match="distinct"):
        syn.make_problems("val", len(syn.all_keys("val")) + 1)
