"""How well the `math` reward (scirl.rewards.math_reward) judges equivalence, measured on real gold answers.

    python scripts/math_equivalence_report.py [--data DIR] [--dapo-n 2000] [--seed 0]

1. Agreement with the 36 human (GT, candidate, equal) judgements of OlympiadBench's scoring_examples.json
   (with their `precision` when given).
2. For every gold answer of AIME24 (Qwen copy, and OPD's zero-padded copy), AIME25, AMC23 (float strings "27.0"),
   GSM8K (after "####", some with thousands separators) and a seeded sample of DAPO-Math-17k: full response texts
   ending in \\boxed{<form>} are graded with compute_math(response, gold) (mode "binary"), for
     - equivalent forms of the gold (025 / 25 / 25.0 / \\frac{50}{2} / x = 25 / 25\\text{ cm} / 2.5\\times10^{1} /
       24+1 / 1,000 ...) -> the rate scored 1 ("equivalent rate"), and
     - deliberately wrong forms (value +- 1, another fraction, x = value+1, 10x, -value, value+0.5, \\sqrt{value}
       ...) -> the rate scored 0 ("wrong-form rate").
3. Time per compute_math call (mean, median, p99, max) over all those calls, in this one process.

The data folder defaults to the repository's sibling `../shared/data`. The helpers here (loaders and form
generators) are also used by tests/test_reward_math.py and bench/reward_throughput.py.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"

if str(REPO / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO / "src"))


# --------------------------------------------------------------------------------------------- data
def load_golds(data: Path = DATA, dapo_n: int = 2000, seed: int = 0) -> dict[str, list[str]]:
    """Gold answer strings per source, as stored (GSM8K: the text after the last ####)."""

    def jsonl(path: Path) -> list[dict]:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    golds = {
        "aime24": [str(r["answer"]) for r in jsonl(data / "aime24" / "test.jsonl")],
        "aime24_padded": [str(r["answer"]) for r in json.loads((data / "aime24" / "opd_aime24.json").read_text())],
        "aime25": [str(r["answer"]) for r in json.loads((data / "aime25" / "test.json").read_text())],
        "amc23": [str(r["answer"]) for r in jsonl(data / "amc23" / "test.jsonl")],
        "gsm8k": [str(r["answer"]).rsplit("####", 1)[1].strip() for r in jsonl(data / "gsm8k" / "test.jsonl")],
    }
    if dapo_n:
        golds["dapo_math"] = dapo_sample(data, dapo_n, seed)
    return golds


def dapo_sample(data: Path = DATA, n: int = 2000, seed: int = 0) -> list[str]:
    """Ground truths of a seeded sample of `n` DAPO-Math-17k rows (pyarrow)."""
    import pyarrow.parquet as pq

    table = pq.read_table(data / "dapo_math_17k" / "dapo-math-17k.parquet", columns=["reward_model"])
    gts = [str(r["ground_truth"]) for r in table.column("reward_model").to_pylist()]
    idx = random.Random(seed).sample(range(len(gts)), min(n, len(gts)))
    return [gts[i] for i in idx]


def load_scoring_examples(data: Path = DATA) -> list[tuple[str, str, bool, object]]:
    """The 36 OlympiadBench (gold, candidate, equal, precision) judgements."""
    items = json.loads((data / "olympiadbench_scoring_examples" / "scoring_examples.json").read_text())
    return [(it["GT"], a["answer"], bool(a["equal"]), a.get("precision")) for it in items for a in it["Ans"]]


# --------------------------------------------------------------------------------------------- forms
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?$")


def gold_value(gold: str) -> tuple[Fraction, bool]:
    """(numeric value, is_degrees) of a numeric gold string: '025', '27.0', '1,450,000', '336^\\circ'."""
    s = gold.strip()
    deg = bool(_DEGREE.search(s))
    s = _DEGREE.sub("", s).replace(",", "")
    return Fraction(s), deg


def _num(v: Fraction) -> str:
    """A plain decimal string of v (an integer, or a terminating decimal)."""
    if v.denominator == 1:
        return str(v.numerator)
    return format(Decimal(v.numerator) / Decimal(v.denominator), "f")


def _sci(v: Fraction) -> str:
    """v as m\\times10^{k} with 1 <= |m| < 10 (exact)."""
    if v == 0:
        return "0\\times10^{0}"
    d = Decimal(v.numerator) / Decimal(v.denominator)
    k = d.copy_abs().adjusted()
    mant = (d.scaleb(-k)).normalize()
    return f"{format(mant, 'f')}\\times10^{{{k}}}"


def equivalent_forms(gold: str) -> list[str]:
    """Boxed-answer strings that must all grade as equal to `gold` (a numeric gold)."""
    v, deg = gold_value(gold)
    n = _num(v)
    forms = [gold, n, f"{n}.0" if v.denominator == 1 else n + "0", f"\\frac{{{_num(2 * v)}}}{{2}}",
             f"\\dfrac{{{_num(3 * v)}}}{{3}}", f"x = {n}", f"{n}\\text{{ cm}}", f"{n} \\mbox{{units}}",
             f"{_num(v - 1)}+1", _sci(v), f"${n}$", f"\\mathbf{{{n}}}", f"{n}.", f"{n} \\, \\text{{m/s}}",
             f"\\left( {n} \\right)", f"{{{n}}}"]
    if v.denominator == 1 and v >= 0:
        forms += ["0" + n, f"{int(v):03d}", f"\\sqrt{{{int(v) ** 2}}}"]
    if abs(v) >= 1000 and v.denominator == 1:
        forms.append(f"{int(v):,}")
    if deg:
        forms += [f"{n}^\\circ", f"{n}^{{\\circ}}", f"{n}\u00b0"]
    return list(dict.fromkeys(forms))


def wrong_forms(gold: str) -> list[str]:
    """Boxed-answer strings that must all grade as NOT equal to `gold` (a numeric gold)."""
    v, deg = gold_value(gold)
    n = _num(v)
    forms = [_num(v + 1), _num(v - 1), f"\\frac{{{_num(2 * v + 1)}}}{{2}}", _num(v + Fraction(1, 2)),
             f"x = {_num(v + 1)}", f"{_num(v + 1)}\\text{{ cm}}", f"{n}+1", f"0{_num(v + 1)}" if v >= 0 else
             f"{_num(v - 2)}.0", _sci(v + 1)]
    if v != 0:
        forms += [_num(-v), _num(10 * v), f"\\frac{{{n}}}{{2}}"]
    if v not in (0, 1) and v > 0:
        forms += [f"\\sqrt{{{n}}}", f"{n}^2"]
    if deg:
        forms.append(f"{_num(v + 1)}^\\circ")
    return list(dict.fromkeys(forms))


_TEMPLATES = [
    "Let me work through this carefully.\nAfter simplifying, the result follows.\nThe answer is \\boxed{%s}.",
    "We compute step by step and check the cases.\n\nTherefore, the final answer is $\\boxed{%s}$",
    "So the value is \\(\\boxed{%s}\\).",
    "First, note the symmetry. Then count. Final answer: \\boxed{%s}",
]


def response_text(form: str, i: int = 0) -> str:
    """A generated response text whose last box is `form`."""
    return _TEMPLATES[i % len(_TEMPLATES)] % form


# --------------------------------------------------------------------------------------------- measurement
def scoring_agreement(examples) -> tuple[int, list[tuple]]:
    """(number agreeing, the disagreeing examples) for math_equal on the human judgements."""
    from scirl.rewards.math_reward import math_equal

    bad = [ex for ex in examples if math_equal(ex[1], ex[0], ex[3]) != ex[2]]
    return len(examples) - len(bad), bad


def grade_forms(golds: list[str], timings: list[float] | None = None) -> dict:
    """Counts of equivalent forms scored 1 and wrong forms scored 0 over `golds` (binary compute_math)."""
    from scirl.rewards.math_reward import compute_math

    eq_ok = eq_n = wr_ok = wr_n = 0
    eq_fail: list[tuple[str, str]] = []
    wr_fail: list[tuple[str, str]] = []
    for gi, gold in enumerate(golds):
        for expect, forms in ((True, equivalent_forms(gold)), (False, wrong_forms(gold))):
            for fi, form in enumerate(forms):
                text = response_text(form, gi + fi)
                t0 = time.perf_counter()
                res = compute_math(text, gold)
                if timings is not None:
                    timings.append(time.perf_counter() - t0)
                correct = res.score == 1.0
                if expect:
                    eq_n += 1
                    eq_ok += correct
                    if not correct:
                        eq_fail.append((gold, form))
                else:
                    wr_n += 1
                    wr_ok += not correct
                    if correct:
                        wr_fail.append((gold, form))
    return {"golds": len(golds), "eq_ok": eq_ok, "eq_n": eq_n, "wrong_ok": wr_ok, "wrong_n": wr_n,
            "eq_fail": eq_fail, "wrong_fail": wr_fail}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--dapo-n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} not found", file=sys.stderr)
        return 2

    examples = load_scoring_examples(args.data)
    t0 = time.perf_counter()
    agree, bad = scoring_agreement(examples)
    t_ob = time.perf_counter() - t0
    print(f"OlympiadBench scoring examples: {agree}/{len(examples)} agree with the human judgement "
          f"({t_ob / len(examples) * 1e3:.1f} ms/pair)")
    for gt, ans, equal, prec in bad:
        print(f"  disagree: GT={gt!r} answer={ans!r} human={equal} precision={prec}")

    golds = load_golds(args.data, args.dapo_n, args.seed)
    timings: list[float] = []
    print(f"\n{'source':<15}{'golds':>6}{'equiv ok':>14}{'rate':>9}{'wrong ok':>14}{'rate':>9}")
    tot = {"eq_ok": 0, "eq_n": 0, "wrong_ok": 0, "wrong_n": 0}
    fails = []
    for src, gs in golds.items():
        r = grade_forms(gs, timings)
        for k in tot:
            tot[k] += r[k]
        fails += [(src, "equivalent scored wrong", g, f) for g, f in r["eq_fail"]]
        fails += [(src, "wrong scored equivalent", g, f) for g, f in r["wrong_fail"]]
        print(f"{src:<15}{r['golds']:>6}{r['eq_ok']:>8}/{r['eq_n']:<5}{r['eq_ok'] / r['eq_n']:>9.2%}"
              f"{r['wrong_ok']:>8}/{r['wrong_n']:<5}{r['wrong_ok'] / r['wrong_n']:>9.2%}")
    print(f"{'all':<15}{sum(map(len, golds.values())):>6}{tot['eq_ok']:>8}/{tot['eq_n']:<5}"
          f"{tot['eq_ok'] / tot['eq_n']:>9.2%}{tot['wrong_ok']:>8}/{tot['wrong_n']:<5}"
          f"{tot['wrong_ok'] / tot['wrong_n']:>9.2%}")
    for src, what, g, f in fails[:30]:
        print(f"  {src}: {what}: gold={g!r} form={f!r}")
    if len(fails) > 30:
        print(f"  ... and {len(fails) - 30} more")

    ms = sorted(t * 1e3 for t in timings)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(f"\ntime per compute_math call over {len(ms)} calls: mean {statistics.fmean(ms):.3f} ms, "
          f"median {statistics.median(ms):.3f} ms, p99 {p99:.3f} ms, max {ms[-1]:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
