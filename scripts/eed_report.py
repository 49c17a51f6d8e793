#!/usr/bin/env python
"""EED sanity report on the 100 answered PHYBench items.

For every reference answer it scores, with `scirl.rewards.eed.eed_score`:
  * the answer against itself (identical strings: the official early exit gives 100),
  * the answer against itself plus a trailing space (not identical, so the full pipeline runs: parse, simplify,
    equivalence; this is the real self-consistency check),
  * the answer against a perturbed copy with one coefficient changed (`perturb`),
and prints how many score 100, the distribution of the perturbed scores and exits, and the time per call.

    python scripts/eed_report.py [--data PATH] [--limit N] [--time-budget SECONDS] [--show N]

Without --time-budget the official caps apply (simplify 30 s, equals 10 s), so a slow item can take ~40 s.
The "+ space" pass sees each answer first (cold); eed_score caches the simplified answer side, so the perturbed
pass runs warm, as in training where each reference is scored n times.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from scirl.rewards.eed import eed_score

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/phybench/PHYBench-fullques_v1.json"
_LEAD = re.compile(r"^(\s*(?:\$\$|\$|\\\[)?\s*(?:\\boxed\{)?\s*-?\s*)")


def perturb(answer: str) -> str:
    """Change one coefficient: bump the first digit after the last "=" (or anywhere without "="), skipping
    subscripts (`v_0`, `R_{04}`); 9 becomes 8. Without such a digit, multiply the expression by 2."""
    start = answer.rfind("=") + 1
    for i in range(start, len(answer)):
        ch = answer[i]
        if not ch.isdigit():
            continue
        before = answer[max(0, i - 8) : i]
        if before.endswith("_") or re.search(r"_\{[^{}]*$", before):
            continue
        new = "8" if ch == "9" else str(int(ch) + 1)
        return answer[:i] + new + answer[i + 1 :]
    if start:
        m = re.match(r"\s*-?\s*", answer[start:])
        cut = start + (m.end() if m else 0)
    else:
        cut = _LEAD.match(answer).end()
    return answer[:cut] + "2" + answer[cut:]


def load_answers(path: Path) -> list[str]:
    rows = json.loads(path.read_text())
    return [str(r["answer"]) for r in rows if r.get("answer")]


def _timed(answer: str, test: str, budget: float | None) -> tuple[float, dict, float]:
    t0 = time.perf_counter()
    score, details = eed_score(answer, test, time_budget=budget)
    return score, details, time.perf_counter() - t0


def _times(label: str, ts: list[float]) -> str:
    return (f"{label}: mean {statistics.mean(ts):.3f} s, median {statistics.median(ts):.3f} s, "
            f"max {max(ts):.3f} s, total {sum(ts):.1f} s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=0, help="only the first N answers (0: all)")
    ap.add_argument("--time-budget", type=float, default=None, help="overall seconds per call (default: none)")
    ap.add_argument("--show", type=int, default=10, help="print this many perturbed examples")
    args = ap.parse_args(argv)
    if not args.data.is_file():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    answers = load_answers(args.data)[: args.limit or None]
    n = len(answers)

    same = [_timed(a, a, args.time_budget) for a in answers]
    spaced = [_timed(a, a + " ", args.time_budget) for a in answers]
    perturbed_tests = [perturb(a) for a in answers]
    pert = [_timed(a, p, args.time_budget) for a, p in zip(answers, perturbed_tests)]

    print(f"PHYBench answers: {n}  (time budget per call: {args.time_budget or 'none, official caps'})")
    print(f"self, identical string : {sum(s == 100 for s, _, _ in same)}/{n} score 100")
    print(f"self, + trailing space : {sum(s == 100 for s, _, _ in spaced)}/{n} score 100")
    for i, (s, d, _) in enumerate(spaced):
        if s != 100:
            print(f"    item {i}: {s:.2f} ({d['exit']}): {answers[i][:90]!r}")
    scores = [s for s, _, _ in pert]
    buckets = Counter()
    for s in scores:
        key = "100" if s == 100 else "0" if s == 0 else f"[{int(s // 10) * 10},{int(s // 10) * 10 + 10})"
        buckets[key] += 1
    print(f"perturbed (one coefficient changed): mean {statistics.mean(scores):.2f}, "
          f"median {statistics.median(scores):.2f}")  # fmt: skip
    order = ["0"] + [f"[{k},{k + 10})" for k in range(0, 60, 10)] + ["100"]
    print("    distribution: " + ", ".join(f"{k}: {buckets[k]}" for k in order if buckets[k]))
    print("    exits: " + ", ".join(f"{k}: {v}" for k, v in Counter(d["exit"] for _, d, _ in pert).most_common()))
    for i in range(min(args.show, n)):
        s, d, _ = pert[i]
        print(f"    {s:6.2f} d={d.get('distance', '-')} S={d.get('tree_size', '-')} {perturbed_tests[i][:80]!r}")
    print(_times("time, identical", [t for _, _, t in same]))
    print(_times("time, + space    ", [t for _, _, t in spaced]))
    print(_times("time, perturbed  ", [t for _, _, t in pert]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
