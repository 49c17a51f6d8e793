"""Step-time breakdown of GRPO steps (generate / score / old-logprob / update), reward.overlap off and on, side by side
in one run.

    python bench/step_breakdown.py [--steps 4] [--models tiny,25m] [--latency 0.05] [--workers 2]

Each row is one real `scirl train` run: 8 prompts x 4 samples, 48 new tokens, 2 optimizer mini-batches per step (so
the old log-probs are recomputed, as in most recipes), the hf engine, fp32 on the CPU. Numbers are medians over the
steps after the first (warm-up), from metrics.jsonl:
  generate      timing/rollout            generation wall time
  score         timing/reward             scoring time NOT hidden behind generation (what the step waits for)
  hidden        timing/reward_overlapped  scoring time that ran while the engine was still generating
  old-lp        timing/old_ref_adv        old (and reference) log-probs, advantages
  update        timing/update             the policy update and the weight sync
  step          timing/step
The reward is `judge_reward` below: a fixed latency per call (`--latency` seconds, default 50 ms: an LLM judge or a
sandboxed verifier, the kind of reward whose cost is worth hiding; the math reward on the tiny model's short
completions costs about a millisecond and hides nothing worth measuring), scored by `--workers` reward processes.
Its score is the sum of the completion's character codes mod 7 / 7, so groups have a spread and the steps train.

Arms, per model:
  one call   rollout.hf_max_batch_size=1024 (the default: the 32 rows in one `generate` call, one chunk: nothing to
             overlap), reward.overlap on
  4 calls    rollout.hf_max_batch_size=8: four `generate` calls of 2 prompt groups each; overlap off, then on. The
             two arms sample the same rows (same calls, same seed) and train the same weights: the difference is
             only the scoring of calls 1-3 hidden behind calls 2-4.
The hf engine decodes a batch in lock step, so only separate calls give finished groups early; vLLM and a server
stream groups as they finish from one batch (rollout/base.py), where the overlap costs no extra calls.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COLUMNS = (("generate", "timing/rollout"), ("score", "timing/reward"), ("hidden", "timing/reward_overlapped"),
           ("old-lp", "timing/old_ref_adv"), ("update", "timing/update"), ("step", "timing/step"))
ARMS = (("one call, overlap", 1024, True), ("4 calls, overlap off", 8, False), ("4 calls, overlap on", 8, True))


def judge_reward(sample, completion, info):
    """A reward with a fixed latency per call (BENCH_REWARD_LATENCY seconds), as a remote judge."""
    time.sleep(float(os.environ.get("BENCH_REWARD_LATENCY", "0.05")))
    return (sum(map(ord, completion)) % 7) / 7


def run(model: str, name: str, hf_batch: int, overlap: bool, steps: int, workers: int, out: Path) -> dict:
    """One `scirl train` run; the median of each timing column over the steps after the first."""
    args = [sys.executable, "-m", "scirl", "train", f"model.path={model}", f"trainer.output_dir={out}",
            f"trainer.run_name={name}", f"trainer.total_steps={steps}", "trainer.test_freq=0", "trainer.save_freq=0",
            "trainer.progress=false", "trainer.save_hf=false", "data.train_batch_size=8",
            "actor.ppo_mini_batch_size=4", "actor.ppo_micro_batch_size=16", "rollout.n=4",
            "rollout.max_new_tokens=48", "rollout.val_n=1", "data.val_size=8", f"reward.workers={workers}",
            "reward.timeout=30", f"reward.name={Path(__file__).resolve()}:judge_reward", "actor.lr=1e-5",
            f"rollout.hf_max_batch_size={hf_batch}", f"reward.overlap={str(overlap).lower()}"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows
    result = {col: statistics.median(r.get(key, 0.0) for r in timed) for col, key in COLUMNS}
    result["reward_mean"] = statistics.mean(r["reward/mean"] for r in rows)
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--models", default="tiny,25m")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per reward call")
    ap.add_argument("--workers", type=int, default=2, help="reward worker processes")
    a = ap.parse_args()
    os.environ["BENCH_REWARD_LATENCY"] = str(a.latency)
    with tempfile.TemporaryDirectory(prefix="scirl-breakdown-") as tmp:
        tmp = Path(tmp)
        models = {}
        for name in a.models.split(","):
            if name == "tiny":
                models["tiny (0.85M)"] = "builtin:tiny-qwen3"
            else:
                from scaling import build_25m

                path, n = build_25m(tmp / "qwen3-25m")
                models[f"qwen3-shaped ({n / 1e6:.1f}M)"] = str(path)
        print(f"reward: {a.latency * 1000:.0f} ms per call, {a.workers} workers; 32 rows per step; seconds per step "
              f"(median of steps 2..{a.steps})")
        head = "".join(f"{c:>9}" for c, _ in COLUMNS)
        print(f"{'model':22} {'arm':22}{head} {'vs off':>7}")
        for m, (label, path) in enumerate(models.items()):
            results = {}
            for i, (arm, hf_batch, overlap) in enumerate(ARMS):
                r = results[arm] = run(path, f"arm{i}", hf_batch, overlap, a.steps, a.workers, tmp / f"runs-{m}")
                off = results.get("4 calls, overlap off")
                ratio = f"{r['step'] / off['step']:>6.2f}x" if off and overlap and hf_batch == 8 else f"{'':>7}"
                print(f"{label:22} {arm:22}" + "".join(f"{r[c]:>9.2f}" for c, _ in COLUMNS) + f" {ratio}",
                      flush=True)
            on, off, one = (results[arm] for arm, _, _ in (ARMS[2], ARMS[1], ARMS[0]))
            same = "same" if abs(on["reward_mean"] - off["reward_mean"]) < 1e-9 else "DIFFERENT"
            print(f"{label}: overlap on/off step time {on['step'] / off['step']:.2f}x (score waited for: "
                  f"{off['score']:.2f} s -> {on['score']:.2f} s; rewards {same}); 4 calls + overlap vs one call: "
                  f"{on['step'] / one['step']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
