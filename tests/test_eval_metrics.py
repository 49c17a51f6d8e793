"""Validation metrics: unbiased pass@k, verl-identical bootstrap best@N / maj@N, and the eval JSON."""

from collections import defaultdict
from functools import partial

import numpy as np
import pytest

from scirl.errors import ScirlError
from scirl.eval.metrics import bootstrap_best_maj, bootstrap_ns, compute_eval_metrics, pass_at_k, pass_ks


# --- a literal transcription of verl's procedure, as the reference -------------------------------------
def _verl_bootstrap_metric(data, subset_size, reduce_fns, n_bootstrap=1000, seed=42):
    np.random.seed(seed)
    lsts = [[] for _ in reduce_fns]
    for _ in range(n_bootstrap):
        idxs = np.random.choice(len(data), size=subset_size, replace=True)
        sub = [data[i] for i in idxs]
        for i, fn in enumerate(reduce_fns):
            lsts[i].append(fn(sub))
    return [(np.mean(lst), np.std(lst)) for lst in lsts]


def _verl_calc_maj_val(data, vote_key, val_key):
    vote2vals = defaultdict(list)
    for d in data:
        vote2vals[d[vote_key]].append(d[val_key])
    vote2cnt = {k: len(v) for k, v in vote2vals.items()}
    return vote2vals[max(vote2cnt, key=vote2cnt.get)][0]


def test_pass_at_k_worked_numbers():
    assert pass_at_k(16, 1, 1) == pytest.approx(0.0625)
    assert pass_at_k(16, 1, 8) == pytest.approx(0.5)
    assert pass_at_k(16, 1, 16) == 1.0
    assert round(pass_at_k(16, 4, 4), 5) == 0.72802
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 16, 1) == 1.0


def test_pass_at_k_matches_binomial_form():
    from math import comb

    for n in (1, 5, 16, 33):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_rejects_bad_args():
    with pytest.raises(ScirlError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ScirlError):
        pass_at_k(4, 1, 5)


def test_best_at_16_one_correct_seed_42():
    values = [1.0] + [0.0] * 15
    out = bootstrap_best_maj(values, None, [16])
    assert round(out["best@16/mean"], 3) == 0.656
    assert out["worst@16/mean"] == 0.0
    assert "maj@16/mean" not in out
    # not the unbiased pass@16
    assert pass_at_k(16, 1, 16) == 1.0


def test_identical_to_verl_procedure():
    rng = np.random.RandomState(7)
    for n in (3, 5, 16):
        values = [float(x) for x in rng.rand(n).round(2)]
        preds = [str(x) for x in rng.randint(0, 3, size=n)]
        preds[0] = None  # a None pred is just another vote
        ns = bootstrap_ns(n)
        out = bootstrap_best_maj(values, preds, ns)
        for size in ns:
            (bm, bs), (wm, ws) = _verl_bootstrap_metric(values, size, [np.max, np.min])
            vote = [{"val": v, "pred": p} for v, p in zip(values, preds)]
            [(mm, ms)] = _verl_bootstrap_metric(vote, size, [partial(_verl_calc_maj_val, vote_key="pred", val_key="val")])
            assert out[f"best@{size}/mean"] == pytest.approx(bm, abs=1e-12)
            assert out[f"best@{size}/std"] == pytest.approx(bs, abs=1e-12)
            assert out[f"worst@{size}/mean"] == pytest.approx(wm, abs=1e-12)
            assert out[f"worst@{size}/std"] == pytest.approx(ws, abs=1e-12)
            assert out[f"maj@{size}/mean"] == pytest.approx(mm, abs=1e-12)
            assert out[f"maj@{size}/std"] == pytest.approx(ms, abs=1e-12)


def test_global_rng_state_untouched():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    bootstrap_best_maj([1.0, 0.0], ["a", "b"], [2])
    assert np.random.rand() == expected


def test_majority_vote_hand_built():
    # preds a, a, b with values 1, 1, 0: a draw of 3 elects "a" unless it holds 2 or 3 b's
    out = bootstrap_best_maj([1.0, 1.0, 0.0], ["a", "a", "b"], [3], n_bootstrap=20000)
    p_b = 1 / 3
    p_a_wins = 1 - (3 * p_b**2 * (1 - p_b) + p_b**3)  # = 20/27
    assert out["maj@3/mean"] == pytest.approx(p_a_wins, abs=0.01)
    # all preds equal: the majority is always that pred, its value is the first drawn item's value
    out = bootstrap_best_maj([1.0, 1.0, 1.0, 1.0], ["x"] * 4, [2, 4])
    assert out["maj@2/mean"] == 1.0 and out["maj@4/mean"] == 1.0 and out["maj@4/std"] == 0.0


def test_majority_tie_goes_to_first_in_draw():
    # with size 2 and distinct preds every draw of two different items is a tie: first drawn wins
    values = [1.0, 0.0]
    out = bootstrap_best_maj(values, ["a", "b"], [2], n_bootstrap=1000)
    idx = np.random.RandomState(42).choice(2, size=(1000, 2), replace=True)
    assert out["maj@2/mean"] == pytest.approx(np.mean(np.array(values)[idx[:, 0]]))


def test_ns_and_ks():
    assert bootstrap_ns(16) == [2, 4, 8, 16]
    assert bootstrap_ns(10) == [2, 4, 8, 10]
    assert pass_ks(16) == [1, 2, 4, 8, 16]
    assert pass_ks(6) == [1, 2, 4, 6]
    assert pass_ks(1) == [1]


def _records(pid, src, scores, preds):
    return [
        {"prompt_id": pid, "data_source": src, "sample": i, "score": s, "pred": p}
        for i, (s, p) in enumerate(zip(scores, preds))
    ]


def test_compute_eval_metrics_two_prompts():
    recs = _records("p1", "math", [1.0, 0.0, 0.0, 1.0], ["4", "5", "5", "4"])
    recs += _records("p2", "phys", [0.0, 0.0, 0.0, 0.0], ["1", None, "2", "1"])
    recs = recs[::-1]  # order of records must not matter
    out = compute_eval_metrics(recs, "toy")
    assert out["dataset"] == "toy" and out["num_prompts"] == 2 and out["n"] == 4
    assert "note" not in out
    m = out["metrics"]
    assert list(m) == ["mean@4", "std@4", "pass@1", "pass@2", "pass@4", "best@4", "maj@4"]
    assert m["mean@4"] == pytest.approx(0.25)
    assert m["std@4"] == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert m["pass@1"] == pytest.approx(0.25)
    assert m["pass@2"] == pytest.approx((1 - 1 / 6) / 2)
    assert m["pass@4"] == pytest.approx(0.5)
    p1 = bootstrap_best_maj([1.0, 0.0, 0.0, 1.0], ["4", "5", "5", "4"], [4])
    assert m["best@4"] == pytest.approx(p1["best@4/mean"] / 2)
    assert m["maj@4"] == pytest.approx(p1["maj@4/mean"] / 2)
    assert set(out["by_source"]) == {"math", "phys"}
    assert out["by_source"]["math"]["mean@4"] == 0.5
    assert out["by_source"]["math"]["pass@4"] == 1.0
    assert out["by_source"]["phys"]["best@4"] == 0.0
    assert set(out["by_source"]["phys"]) == set(m)


def test_threshold_and_no_preds():
    recs = [{k: v for k, v in r.items() if k != "pred"} for r in _records("p", "s", [0.4, 0.6], [None, None])]
    out = compute_eval_metrics(recs, "d")
    assert out["metrics"]["pass@1"] == 0.5
    assert "maj@2" not in out["metrics"]
    assert compute_eval_metrics(recs, "d", threshold=0.3)["metrics"]["pass@1"] == 1.0


def test_score_on_the_threshold_is_correct():
    # no "correct" key: score >= threshold decides, and a score sitting exactly on it counts as correct
    recs = [{k: v for k, v in r.items() if k != "pred"} for r in _records("p", "s", [0.5, 0.25, 0.5, 0.0], [None] * 4)]
    m = compute_eval_metrics(recs, "d")["metrics"]
    assert m["pass@1"] == 0.5  # c = 2 of 4 (the two 0.5s)
    assert m["pass@2"] == pytest.approx(1 - 1 / 6)  # 1 - C(2, 2) / C(4, 2)
    assert compute_eval_metrics(recs, "d", threshold=0.25)["metrics"]["pass@1"] == 0.75  # 0.25 on it too
    # an explicit "correct" wins over the score
    flagged = [{**r, "correct": r["score"] == 0.0} for r in recs]
    assert compute_eval_metrics(flagged, "d")["metrics"]["pass@1"] == 0.25


def test_uneven_sample_counts_truncate_with_note():
    recs = _records("p1", "s", [1.0, 0.0, 1.0], ["a", "b", "a"])
    recs += _records("p2", "s", [0.0, 1.0], ["a", "b"])
    recs[0], recs[2] = recs[2], recs[0]  # sample order in the list must not matter
    out = compute_eval_metrics(recs, "d")
    assert out["n"] == 2 and "note" in out
    assert out["metrics"]["mean@2"] == pytest.approx(0.5)  # p1 uses samples 0, 1 -> 0.5; p2 -> 0.5


def test_bad_input():
    with pytest.raises(ScirlError):
        compute_eval_metrics([], "d")
    with pytest.raises(ScirlError):
        compute_eval_metrics([{"prompt_id": "p", "score": 1.0}], "d")
    dup = _records("p", "s", [1.0], ["a"]) * 2
    with pytest.raises(ScirlError):
        compute_eval_metrics(dup, "d")
