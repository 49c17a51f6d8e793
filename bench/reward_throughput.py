"""Reward throughput, side by side: plain math-verify in one process vs `scirl grade --reward math`; or, with
`--reward code_tests`, the code reward sequential vs the RewardPool's workers.

    python bench/reward_throughput.py [--n 2000] [--seed 0] [--data DIR] [--workers N] [--keep DIR]
    python bench/reward_throughput.py --reward code_tests [--n 32] [--tests 8] [--workers N]

code_tests: n completions x `--tests` tests, for both test styles: stdin (a TACO row, one sandbox run per test)
and function-call (a TACO fn_name row, one harness run per completion). A quarter of the completions are wrong
from the first test on, a quarter pass half the tests, the rest pass all (mode fraction, so every test runs).
Timed: RewardPool(workers=0) (inline, one process, one sandbox) and RewardPool(workers=N) (N processes, a
sandbox uid each); printed as completions/s and tests/s side by side.

Rows: the same seeded sample of DAPO-Math-17k gold answers as scripts/math_equivalence_report.py (2,000 by
default). Each row gets a generated response text ending in \\boxed{<form>}: even rows an equivalent form of the
gold (025, 25.0, \\frac{50}{2}, x = 25, 25\\text{ cm}, 2.5\\times10^{1}, ...), odd rows a wrong one (26, 24,
\\frac{51}{2}, x = 26, ...). They are written to a temp JSONL with fields `response`, `answer`.

(a) math-verify: `verify(parse(answer), parse(response))` per row, sequentially, in this process (its default
    extraction and signal-based timeouts). Timed over the loop only (the import is done before).
(b) scirl: `python -m scirl.cli grade --reward math IN -o OUT` as a subprocess; it grades with the RewardPool over
    all cores (or --workers). Its own printed `throughput: X rows/s` (pool time, excluding process start and
    imports) is the number compared; the wall time of the whole subprocess is printed too.
    If the `grade` command is missing, the bench times RewardPool("math", workers=os.cpu_count()) in-process
    instead and says so.

Verdicts (math-verify True vs scirl score 1.0) are compared row by row; both are also checked against how each
row was built. The last line is `scirl grade / math-verify throughput: <x.xx>x`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "scripts" / "math_equivalence_report.py"


def _report():
    spec = importlib.util.spec_from_file_location("math_equivalence_report", REPORT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_rows(data: Path, n: int, seed: int) -> tuple[list[dict], list[bool]]:
    """(rows {"response", "answer"}, expected verdicts) for n seeded DAPO gold answers."""
    rep = _report()
    golds = rep.dapo_sample(data, n, seed)
    rows, expected = [], []
    for i, gold in enumerate(golds):
        want = i % 2 == 0
        forms = rep.equivalent_forms(gold) if want else rep.wrong_forms(gold)
        form = forms[(i // 2) % len(forms)]
        rows.append({"response": rep.response_text(form, i), "answer": gold})
        expected.append(want)
    return rows, expected


def run_math_verify(rows: list[dict]) -> tuple[list[bool], float]:
    from math_verify import parse, verify

    parse("$1$"), verify(parse("1"), parse("\\boxed{1}"))  # load the grammar outside the timed loop
    verdicts = []
    t0 = time.perf_counter()
    for row in rows:
        verdicts.append(bool(verify(parse(row["answer"]), parse(row["response"]))))
    return verdicts, time.perf_counter() - t0


def grade_available() -> bool:
    try:
        from scirl import cli
    except Exception:  # noqa: BLE001
        return False
    return "grade" in getattr(cli, "COMMANDS", {})


def run_scirl_grade(inp: Path, out: Path, workers: int | None) -> tuple[list[bool], float, float, str]:
    """(verdicts, rows/s printed by grade, subprocess wall seconds, grade's stdout)."""
    cmd = [sys.executable, "-m", "scirl.cli", "grade", "--reward", "math", str(inp), "-o", str(out)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"scirl grade failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}")
    m = re.search(r"throughput:\s*([0-9.]+)\s*rows/s", proc.stdout)
    if not m:
        raise RuntimeError(f"scirl grade printed no throughput line:\n{proc.stdout}")
    with open(out, encoding="utf-8") as f:
        verdicts = [json.loads(line)["score"] == 1.0 for line in f if line.strip()]
    return verdicts, float(m.group(1)), wall, proc.stdout


def run_pool_inprocess(rows: list[dict], workers: int) -> tuple[list[bool], float]:
    from scirl.data.sample import Sample
    from scirl.rewards import RewardPool
    from scirl.rewards import math_reward  # noqa: F401  (registers `math`)

    items = [(Sample(prompt_id=f"r{i}", messages=[], answer=r["answer"]), r["response"], {})
             for i, r in enumerate(rows)]
    t0 = time.perf_counter()
    with RewardPool("math", workers=workers, timeout=10.0) as pool:
        results, _ = pool.score(items)
    return [r.score == 1.0 for r in results], time.perf_counter() - t0


CODE_STDIN = "xs = list(map(int, input().split()))\nprint(sum(xs){bug})"
CODE_CALL = "class Solution:\n    def total(self, xs):\n        return sum(xs){bug}"


def code_items(n: int, m: int) -> dict[str, list]:
    """{style: [(sample, completion, info)]}: n completions of one m-test row per style."""
    from scirl.data.sample import Sample

    lists = [[i, i + 1, 2 * i] for i in range(m)]
    stdin = Sample("bench/stdin", [], None, metadata={"input_output": {
        "inputs": [" ".join(map(str, xs)) + "\n" for xs in lists], "outputs": [f"{sum(xs)}\n" for xs in lists]}})
    call = Sample("bench/call", [], None, metadata={"input_output": {
        "fn_name": "total", "inputs": [[xs] for xs in lists], "outputs": [[sum(xs)] for xs in lists]}})
    bugs = ["", "", " + 1", " if xs[0] < %d else 0" % (m // 2)]  # right, right, all wrong, half right
    out = {}
    for style, row, code in (("stdin", stdin, CODE_STDIN), ("call", call, CODE_CALL)):
        out[style] = [(row, f"```python\n{code.format(bug=bugs[i % 4])}\n```", {"mode": "fraction"})
                      for i in range(n)]
    return out


def code_bench(n: int, m: int, workers: int | None) -> int:
    from scirl.rewards import RewardPool

    workers = workers or os.cpu_count() or 1
    print(f"code_tests: {n} completions x {m} tests per style, mode fraction; {os.cpu_count()} CPU cores")
    print(f"{'style':<7}{'runner':<22}{'seconds':>9}{'completions/s':>15}{'tests/s':>10}{'mean score':>12}")
    for style, items in code_items(n, m).items():
        for label, w in (("sequential (inline)", 0), (f"RewardPool({workers} workers)", workers)):
            with RewardPool("code_tests", workers=w, timeout=60.0) as pool:
                pool.score(items[:1])  # sandbox start-up (tier probe) outside the timer
                t0 = time.perf_counter()
                results, stats = pool.score(items)
                dt = time.perf_counter() - t0
            mean = sum(r.score for r in results) / len(results)
            print(f"{style:<7}{label:<22}{dt:>9.2f}{n / dt:>15.1f}{n * m / dt:>10.1f}{mean:>12.3f}"
                  + (f"  errors/timeouts {stats}" if stats["errors"] or stats["timeouts"] else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--reward" in argv:
        ap = argparse.ArgumentParser(description="code_tests reward throughput")
        ap.add_argument("--reward", choices=["code_tests"], required=True)
        ap.add_argument("--n", type=int, default=32)
        ap.add_argument("--tests", type=int, default=8)
        ap.add_argument("--workers", type=int, default=None)
        a = ap.parse_args(argv)
        return code_bench(a.n, a.tests, a.workers)
    rep = _report()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=rep.DATA)
    ap.add_argument("--workers", type=int, default=None, help="scirl grade --workers (default: all cores)")
    ap.add_argument("--keep", type=Path, default=None, help="write IN/OUT jsonl here instead of a temp dir")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder {args.data} not found", file=sys.stderr)
        return 2

    rows, expected = build_rows(args.data, args.n, args.seed)
    n = len(rows)
    cores = os.cpu_count() or 1
    print(f"rows: {n} seeded DAPO-Math-17k gold answers (seed {args.seed}), half equivalent / half wrong forms; "
          f"{cores} CPU cores")

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        inp, out = folder / "responses.jsonl", folder / "responses.graded.jsonl"
        with open(inp, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

        mv, mv_s = run_math_verify(rows)
        mv_rate = n / mv_s
        print(f"(a) math-verify, 1 process: {mv_s:.2f} s, {mv_rate:.1f} rows/s, {mv_s / n * 1e3:.2f} ms/row")

        if grade_available():
            sc, sc_rate, wall, stdout = run_scirl_grade(inp, out, args.workers)
            print(f"(b) scirl grade --reward math ({args.workers or cores} workers): {sc_rate:.1f} rows/s "
                  f"(its own timer, pool only); subprocess wall {wall:.2f} s incl. start-up = {n / wall:.1f} rows/s")
            print("    grade said: " + " | ".join(ln.strip() for ln in stdout.splitlines() if ln.strip()
                                                 and not ln.startswith("output")))
        else:
            workers = args.workers or cores
            sc, sc_s = run_pool_inprocess(rows, workers)
            sc_rate = n / sc_s
            print(f"(b) FALLBACK: `scirl grade` is not available; timed RewardPool('math', workers={workers}) "
                  f"in-process instead: {sc_s:.2f} s, {sc_rate:.1f} rows/s")

    if len(sc) != n:
        print(f"scirl graded {len(sc)} rows, expected {n}", file=sys.stderr)
        return 1
    diff = [i for i in range(n) if mv[i] != sc[i]]
    print(f"verdict disagreements (math-verify vs scirl): {len(diff)}/{n}")
    for i in diff[:10]:
        box = rep_box(rows[i]["response"])
        print(f"  row {i}: gold={rows[i]['answer']!r} box={box!r} math-verify={mv[i]} scirl={sc[i]} "
              f"built-as={'equivalent' if expected[i] else 'wrong'}")
    shapes: dict[str, int] = {}
    for i in diff:
        shape = re.sub(r"\d+", "N", rep_box(rows[i]["response"]) or "<no box>")
        key = f"{shape} (math-verify={mv[i]}, scirl={sc[i]})"
        shapes[key] = shapes.get(key, 0) + 1
    if shapes:
        print("  by answer shape: " + "; ".join(f"{k}: {v}" for k, v in sorted(shapes.items(), key=lambda kv: -kv[1])))
    print(f"agreement with how rows were built: math-verify {sum(a == b for a, b in zip(mv, expected))}/{n}, "
          f"scirl {sum(a == b for a, b in zip(sc, expected))}/{n}")
    print(f"scirl grade / math-verify throughput: {sc_rate / mv_rate:.2f}x")
    return 0


def rep_box(text: str) -> str | None:
    from scirl.rewards.math_reward import extract_boxed

    return extract_boxed(text)


if __name__ == "__main__":
    sys.exit(main())
