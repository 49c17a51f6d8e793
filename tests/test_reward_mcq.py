"""The `mcq` reward: answer extraction from every SciKnowEval-style format, sets, true/false, and real rows."""

import json

import pytest

from conftest import SHARED_DATA
from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards import REWARDS
from scirl.rewards.mcq import mcq, parse_choices

CHOICES = ["50 pC", "56 pC", "60 pC", "64 pC"]


def _score(completion, answer="B", choices=CHOICES, where="info"):
    info = {"choices": choices} if where == "info" else {}
    meta = {"choices": choices} if where == "metadata" else {}
    return mcq(Sample("p", [], answer, answer_type="mcq", metadata=meta), completion, info)


def test_registered():
    assert REWARDS["mcq"] is mcq


@pytest.mark.parametrize(
    "completion, pred, fmt",
    [
        ("<answer>B</answer>", "B", 1.0),
        ("<reasoning>A looks right, but</reasoning>\n<answer> b </answer>", "B", 1.0),
        ("<answer>A</answer> hmm, no: <answer>B</answer>", "B", 1.0),  # the LAST <answer>
        ("<answer>B", "B", 1.0),  # unclosed: to the end
        ("<answer>B. 56 pC</answer>", "B", 1.0),
        ("<answer>\\boxed{B}</answer>", "B", 1.0),
        ("so the charge is \\boxed{B}", "B", 1.0),
        ("$\\boxed{\\text{(B)}}$", "B", 1.0),
        ("\\boxed{b}", "B", 1.0),
        ("Answer: B", "B", 1.0),
        ("**Answer:** **B**", "B", 1.0),
        ("The answer is B because 56 = 2*28.", "B", 1.0),
        ("the answer is (b)", "B", 1.0),
        ("Final answer: B", "B", 1.0),
        ("The correct option is B.", "B", 1.0),
        ("The answer is 56 pC.", "B", 1.0),
        ("B", "B", 1.0),
        ("b.", "B", 1.0),
        ("(B)", "B", 1.0),
        ("56 pC", "B", 1.0),  # the option's text itself
        ("B. 56 pC", "B", 1.0),
        ("Comparing the options, (B) fits.", "B", 0.0),  # free-text fallbacks: format_ok 0
        ("I first got 64 pC, but redoing it gives 56 pC", "B", 0.0),
    ],
)
def test_formats_right(completion, pred, fmt):
    r = _score(completion)
    assert (r.score, r.pred, r.components) == (1.0, pred, {"acc": 1.0, "format_ok": fmt})


@pytest.mark.parametrize(
    "completion, pred",
    [
        ("<answer>C</answer>", "C"),
        ("<answer>B</answer> on reflection <answer>D</answer>", "D"),
        ("\\boxed{A}", "A"),
        ("Answer: d", "D"),
        ("the answer is (C)", "C"),
        ("60 pC", "C"),
        ("c", "C"),
        ("<answer>B, C</answer>", "BC"),  # one correct letter is not enough
        ("<answer>Yes</answer>", "True"),
    ],
)
def test_formats_wrong(completion, pred):
    r = _score(completion)
    assert (r.score, r.pred, r.components["acc"]) == (0.0, pred, 0.0)


@pytest.mark.parametrize(
    "completion", ["", "I am not sure.", "the answer is a bit tricky", "{" * 1000, "<answer></answer>"]
)
def test_no_answer(completion):
    r = _score(completion)
    assert (r.score, r.pred, r.components) == (0.0, None, {"acc": 0.0, "format_ok": 0.0})


@pytest.mark.parametrize("gold", ["AC", "A, C", "C,A", "a and c", "A and C"])
@pytest.mark.parametrize(
    "completion, ok",
    [
        ("<answer>A, C</answer>", 1.0),
        ("<answer>AC</answer>", 1.0),
        ("<answer>CA</answer>", 1.0),
        ("<answer>A and C</answer>", 1.0),
        ("\\boxed{A,C}", 1.0),
        ("The answers are (A) and (C).", 1.0),
        ("Answer: a, c", 1.0),
        ("A; C", 1.0),
        ("<answer>A</answer>", 0.0),
        ("<answer>A, B, C</answer>", 0.0),
    ],
)
def test_multiple_correct_are_sets(gold, completion, ok):
    r = _score(completion, answer=gold)
    assert r.score == ok
    if ok:
        assert r.pred == "AC"


@pytest.mark.parametrize("gold", ["True", "true", "Yes", "YES"])
@pytest.mark.parametrize(
    "completion, ok",
    [("Yes", 1.0), ("yes.", 1.0), ("True", 1.0), ("<answer>Yes</answer>", 1.0), ("\\boxed{True}", 1.0),
     ("Answer: yes", 1.0), ("Yes, the statement holds.", 1.0), ("No", 0.0), ("<answer>False</answer>", 0.0),
     ("maybe", 0.0)],
)
def test_true_false(gold, completion, ok):
    r = _score(completion, answer=gold, choices={"text": [], "label": []})
    assert r.score == ok
    assert r.pred in ("True", "False", None)


def test_false_gold_and_pred_normalised():
    r = _score("<answer>No</answer>", answer="No", choices=None)
    assert (r.score, r.pred) == (1.0, "False")


def test_choices_forms_and_metadata():
    d = {"text": CHOICES, "label": ["A", "B", "C", "D"]}
    assert parse_choices(d) == (["A", "B", "C", "D"], CHOICES)
    assert parse_choices(CHOICES) == (["A", "B", "C", "D"], CHOICES)
    assert parse_choices({"a": "x", "b": "y"}) == (["A", "B"], ["x", "y"])
    assert parse_choices(None) == ([], [])
    for choices in (d, CHOICES, {"A": "50 pC", "B": "56 pC", "C": "60 pC", "D": "64 pC"}):
        assert _score("56 pC", choices=choices).score == 1.0
        assert _score("56 pC", choices=choices, where="metadata").score == 1.0
    # info wins over metadata
    s = Sample("p", [], "B", metadata={"choices": ["x", "y"]})
    assert mcq(s, "56 pC", {"choices": CHOICES}).score == 1.0
    # labels restrict the valid letters: E is not an option of a 4-choice item
    assert _score("<answer>E</answer>").pred is None


def test_option_text_edge_cases():
    ch = ["direct ionization", "indirect ionization", "none", "both"]
    assert _score("indirect ionization", answer="B", choices=ch).score == 1.0
    assert _score("Direct Ionization.", answer="A", choices=ch).score == 1.0
    assert _score("I would say it is indirect ionization", answer="B", choices=ch).score == 1.0
    dup = ["1 m", "1 m", "2 m", "3 m"]  # duplicated option texts are ambiguous: no pred from the text
    assert _score("1 m", answer="A", choices=dup).pred is None
    assert _score("3 m", answer="D", choices=dup).score == 1.0


def test_gold_as_option_text_and_bad_gold():
    assert _score("<answer>B</answer>", answer="56 pC").score == 1.0
    with pytest.raises(ScirlError, match="mcq: reference answer"):
        _score("B", answer="")
    with pytest.raises(ScirlError):
        _score("B", answer="forty two")


# --- real SciKnowEval rows ------------------------------------------------------------------------------------
V2 = SHARED_DATA / "sciknoweval_physics" / "v2"


@pytest.mark.skipif(not V2.is_dir(), reason="shared SciKnowEval data not present")
@pytest.mark.parametrize("fname", ["physics_laboratory_safety_test.jsonl", "physics_detailed_understanding.jsonl"])
def test_sciknoweval_rows(fname):
    rows = [json.loads(line) for line in (V2 / fname).read_text(encoding="utf-8").split("\n") if line.strip()]
    assert rows
    n_tf = 0
    for i, row in enumerate(rows):
        tf = row["type"] == "true_or_false"
        gold = row["answer"] if tf else row["answerKey"]
        s = Sample(f"{fname}:{i}", [], gold, answer_type="mcq", metadata={"choices": row["choices"]})
        if tf:
            n_tf += 1
            right, wrong = gold, ("No" if gold.strip().lower() == "yes" else "Yes")
        else:
            right = gold
            wrong = next(lb for lb in row["choices"]["label"] if lb != gold)
        for completion in (f"<reasoning>...</reasoning><answer>{right}</answer>", f"so \\boxed{{{right}}}"):
            r = mcq(s, completion, {})
            assert (r.score, r.components["format_ok"]) == (1.0, 1.0), (i, completion, r)
        if not tf:
            text = row["choices"]["text"][row["choices"]["label"].index(gold)]
            r = mcq(s, text, {})
            assert r.score == 1.0 and r.pred == gold, (i, text, r)
        for completion in (f"<answer>{wrong}</answer>", f"\\boxed{{{wrong}}}", wrong):
            assert mcq(s, completion, {}).score == 0.0, (i, completion)
    if fname == "physics_laboratory_safety_test.jsonl":
        assert n_tf > 0  # the file mixes MCQ and true/false rows
