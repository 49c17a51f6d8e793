"""GRPO vs RLSD from the bundled tiny model on the tiny task: same seeds, same steps, held-out mean@8 curves.

    python bench/rlsd_vs_grpo.py [--seeds 1 2 3] [--steps 30] [--test-freq 10]

Runs recipes/tiny_grpo.yaml and recipes/tiny_rlsd.yaml (identical except the RLSD policy loss, its EMA
self-teacher and token IS) once per seed, each in its own `scirl train` process, one after the other, and
prints the held-out mean@8 at every validation step plus the final mean +- std over seeds. It reports whatever
it measures; the RLSD modulator is bounded to [0.9, 1.1] at lambda 0.5, eps_w 0.2, so small differences are
expected on this task.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPES = {"grpo": REPO / "recipes" / "tiny_grpo.yaml", "rlsd": REPO / "recipes" / "tiny_rlsd.yaml"}


def run(method: str, seed: int, steps: int, test_freq: int, out: Path) -> tuple[dict[int, float], float, dict]:
    name = f"{method}_s{seed}"
    cmd = [sys.executable, "-m", "scirl.cli", "train", str(RECIPES[method]), f"trainer.seed={seed}",
           f"trainer.total_steps={steps}", f"trainer.test_freq={test_freq}", f"trainer.output_dir={out}",
           f"trainer.run_name={name}", "trainer.progress=false", "trainer.save_freq=0"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t0
    curve = {}
    for f in (out / name / "eval").glob("step_*.json"):
        report = json.loads(f.read_text())
        curve[int(f.stem.split("_")[1])] = report["metrics"][f"mean@{report['n']}"]
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    extra = {k: statistics.mean(m[k] for m in metrics if k in m) for k in
             ("actor/rlsd/weight_mean", "actor/rlsd/clip_frac", "distill/context_frac") if k in metrics[0]}
    return dict(sorted(curve.items())), seconds, extra


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--test-freq", type=int, default=10)
    args = ap.parse_args()
    results: dict[str, list] = {"grpo": [], "rlsd": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in ("grpo", "rlsd"):
                curve, seconds, extra = run(method, seed, args.steps, args.test_freq, Path(tmp))
                results[method].append(curve)
                shown = "  ".join(f"{s}:{v:.3f}" for s, v in curve.items())
                more = "  ".join(f"{k} {v:.3f}" for k, v in extra.items())
                print(f"{method} seed {seed}  mean@8 by step  {shown}  ({seconds:.0f} s)  {more}", flush=True)
    print()
    finals = {}
    for method, curves in results.items():
        steps = sorted(curves[0])
        avg = "  ".join(f"{s}:{statistics.mean(c[s] for c in curves):.3f}" for s in steps)
        last = [c[steps[-1]] for c in curves]
        finals[method] = last
        sd = statistics.stdev(last) if len(last) > 1 else 0.0
        print(f"{method}: mean over seeds by step  {avg};  final mean@8 {statistics.mean(last):.3f} +- {sd:.3f}")
    diff = statistics.mean(finals["rlsd"]) - statistics.mean(finals["grpo"])
    print(f"rlsd - grpo final mean@8: {diff:+.3f} over {len(args.seeds)} seeds")


if __name__ == "__main__":
    main()
