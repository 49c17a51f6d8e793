"""Step-time breakdown of GRPO steps (generate / score / old-logprob / update), reward.overlap off and on, side by side
in one run.

    python bench/step_breakdown.py [--reps 3] [--models tiny,25m] [--latency 0.05] [--workers 2] [--engine hf|vllm]

One training process per model (built as `scirl train` builds it: scirl.train.build.build_run, the step itself is
scirl.train.step.train_step): 8 prompts x 4 samples, 48 new tokens, 2 optimizer mini-batches per step (so the old
log-probs are recomputed, as in most recipes), the hf engine, fp32 on the CPU. The arms take turns step by step (a
warm-up step, then `--reps` rounds of every arm), so a machine shared with other work slows every arm alike; each
number is the median over an arm's steps, from the step's own metrics:
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

Arms:
  one call   rollout.hf_max_batch_size=1024 (the default: the 32 rows in one `generate` call, one chunk: nothing to
             overlap), reward.overlap on
  4 calls    rollout.hf_max_batch_size=8: four `generate` calls of 2 prompt groups each; overlap off, then on (for
             the same rows the two give the same scores: tests/test_overlap_training.py)
The hf engine decodes a batch in lock step, so only separate calls give finished groups early, and smaller calls
decode fewer rows at once; vLLM and a server stream groups as they finish from one batch (rollout/base.py), where
the overlap costs no extra calls. On this CPU the arms share 2 cores with the reward workers and with each other's
torch threads; a GPU engine leaves the CPU to the reward workers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COLUMNS = (("generate", "timing/rollout"), ("score", "timing/reward"), ("hidden", "timing/reward_overlapped"),
           ("old-lp", "timing/old_ref_adv"), ("update", "timing/update"), ("step", "timing/step"))
ARMS = (("one call, overlap", 1024, True), ("4 calls, overlap off", 8, False), ("4 calls, overlap on", 8, True))
VLLM_ARMS = (("vllm, overlap off", None, False), ("vllm, overlap on", None, True))  # vLLM streams groups as they end


def judge_reward(sample, completion, info):
    """A reward with a fixed latency per call (BENCH_REWARD_LATENCY seconds), as a remote judge."""
    time.sleep(float(os.environ.get("BENCH_REWARD_LATENCY", "0.05")))
    return (sum(map(ord, completion)) % 7) / 7


def bench_model(model: str, reps: int, workers: int, out: Path, engine: str = "hf") -> dict[str, dict]:
    """Train on `model`, the arms taking turns step by step; per arm, the median of each column over its steps."""
    from scirl.config import load_config
    from scirl.train.build import build_run
    from scirl.train.loop import seed_everything
    from scirl.train.step import StepContext, train_step

    cfg = load_config(None, [
        f"model.path={model}", f"trainer.output_dir={out}", "trainer.progress=false", "data.train_batch_size=8",
        "actor.ppo_mini_batch_size=4", "actor.ppo_micro_batch_size=16", "rollout.n=4", "rollout.max_new_tokens=48",
        "data.val_size=8", f"reward.workers={workers}", "reward.timeout=30",
        f"reward.name={Path(__file__).resolve()}:judge_reward", "actor.lr=1e-5", f"rollout.engine={engine}",
        "rollout.enforce_eager=true", "rollout.sync_check_freq=0"])
    arms = VLLM_ARMS if engine == "vllm" else ARMS
    seed_everything(cfg.trainer.seed)
    parts = build_run(cfg, cfg.model.path)
    ctx = StepContext(cfg, parts.actor, parts.engine, parts.pool, parts.next_prompts, parts.reference, parts.kl_ctrl,
                      parts.teacher, parts.tokenizer)
    rows: dict[str, list[dict]] = {arm: [] for arm, _, _ in arms}
    with parts.pool:
        for rep in range(reps + 1):
            for arm, hf_batch, overlap in arms:
                cfg.reward.overlap = overlap
                if hf_batch is not None:
                    parts.engine.max_batch_size = hf_batch
                ctx.step += 1
                metrics = train_step(ctx)
                if rep:  # round 0 warms up
                    rows[arm].append(metrics)
    return {arm: {col: statistics.median(m.get(key, 0.0) for m in ms) for col, key in COLUMNS}
            for arm, ms in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="rounds of every arm after the warm-up round")
    ap.add_argument("--models", default="tiny,25m")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per reward call")
    ap.add_argument("--workers", type=int, default=2, help="reward worker processes")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                    help="vllm (with .venv-vllm's Python): arms overlap off / on on one vLLM engine")
    a = ap.parse_args()
    os.environ["BENCH_REWARD_LATENCY"] = str(a.latency)
    with tempfile.TemporaryDirectory(prefix="scirl-breakdown-") as tmp:
        tmp = Path(tmp)
        from scaling import bench_models

        models = bench_models(a.models, tmp)
        print(f"reward: {a.latency * 1000:.0f} ms per call, {a.workers} workers; 32 rows per step; seconds per step "
              f"(median of {a.reps} steps per arm, the arms taking turns)")
        head = "".join(f"{c:>9}" for c, _ in COLUMNS)
        print(f"{'model':22} {'arm':22}{head} {'vs off':>7}")
        for m, (label, path) in enumerate(models.items()):
            results = bench_model(path, a.reps, a.workers, tmp / f"runs-{m}", a.engine)
            if a.engine == "vllm":
                off, on = (results[arm] for arm, _, _ in VLLM_ARMS)
                for arm, _, _ in VLLM_ARMS:
                    r = results[arm]
                    print(f"{label:22} {arm:22}" + "".join(f"{r[c]:>9.2f}" for c, _ in COLUMNS) +
                          f" {r['step'] / off['step']:>6.2f}x")
                print(f"{label}: overlap on/off step time {on['step'] / off['step']:.2f}x (scoring waited for "
                      f"{off['score']:.2f} s -> {on['score']:.2f} s)", flush=True)
                continue
            off = results[ARMS[1][0]]
            for arm, hf_batch, overlap in ARMS:
                r = results[arm]
                ratio = f"{r['step'] / off['step']:>6.2f}x" if hf_batch == 8 else f"{'':>7}"
                print(f"{label:22} {arm:22}" + "".join(f"{r[c]:>9.2f}" for c, _ in COLUMNS) + f" {ratio}")
            on, one = results[ARMS[2][0]], results[ARMS[0][0]]
            print(f"{label}: overlap on/off step time {on['step'] / off['step']:.2f}x (scoring waited for "
                  f"{off['score']:.2f} s -> {on['score']:.2f} s); 4 calls + overlap vs one call: "
                  f"{on['step'] / one['step']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
