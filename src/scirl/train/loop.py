"""The run loop: set up (or resume) a run folder, validate, train for `trainer.total_steps`, checkpoint, summarise."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from scirl.algos import make_kl_controller
from scirl.ckpt.checkpoint import find_resume_checkpoint, load_trainer_state, save_checkpoint, set_rng_state
from scirl.config import Config, save_config
from scirl.data.pipeline import describe, load_prompt_set, make_sampler, require_rewards, tokenize_prompt_set
from scirl.eval.runner import evaluate, write_eval
from scirl.log.console import StepProgress, console, summary_footer, summary_table
from scirl.log.metrics_writer import MetricsWriter
from scirl.rewards import RewardPool
from scirl.rollout.base import SamplingParams
from scirl.rollout.hf_engine import HFRolloutEngine
from scirl.train.actor import Actor
from scirl.train.distill import make_teacher
from scirl.train.model_loading import load_model_and_tokenizer, pick_device, resolve_model_path
from scirl.train.step import StepContext, train_step
from scirl.train.teachers import FrozenReference


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_training(cfg: Config) -> dict:
    t_start = time.perf_counter()
    transformers_logging.disable_progress_bar()  # our own progress bar is the one that matters
    d, t = cfg.data, cfg.trainer
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed)
    ckpt = find_resume_checkpoint(t.resume, run_dir)
    resolve_model_path(str(ckpt) if ckpt else cfg.model.path)  # fail fast on a bad model.path
    train_ps, val_ps = load_prompt_set(d, "train"), load_prompt_set(d, "val")
    require_rewards(train_ps.samples, cfg.reward.name, "data.train")
    require_rewards(val_ps.samples, cfg.reward.name, "data.val")
    # reward workers are forked before the model and tokenizer spin up their threads
    pool = RewardPool(cfg.reward.name, workers=cfg.reward.workers, timeout=cfg.reward.timeout)
    model, tokenizer = load_model_and_tokenizer(str(ckpt) if ckpt else cfg.model.path, cfg.model.dtype,
                                                pick_device(t.device), cfg.model.attn_implementation)
    train_ps, val_ps = tokenize_prompt_set(train_ps, tokenizer, d, "data.train"), tokenize_prompt_set(val_ps, tokenizer, d, "data.val")
    train_set, train_ids, val_set, val_ids = train_ps.samples, train_ps.ids, val_ps.samples, val_ps.ids
    actor = Actor(model, cfg)
    reference = None
    if cfg.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward or cfg.distill.teacher == "reference":
        # a frozen copy of the *initial* policy
        reference = FrozenReference(cfg.model.path, cfg.model.dtype, pick_device(t.device),
                                    cfg.model.attn_implementation, cfg.actor.ppo_micro_batch_size, cfg.rollout.temperature)
    kc = cfg.algorithm.kl_ctrl
    kl_ctrl = make_kl_controller(kc.type, kc.kl_coef, kc.target_kl, kc.horizon) if cfg.algorithm.use_kl_in_reward else None
    teacher = make_teacher(cfg, model, tokenizer, reference, pick_device(t.device))  # RLSD / SDPO / OPD
    engine = HFRolloutEngine(model, tokenizer)
    sampler = make_sampler(train_ps, d.train_batch_size, d.seed, d.shuffle)
    start = 0
    if ckpt:
        state = load_trainer_state(ckpt)
        actor.optimizer.load_state_dict(state["optimizer"])
        actor.scheduler.load_state_dict(state["scheduler"])
        actor.skipped_updates = state["skipped_updates"]
        sampler.load_state_dict(state["sampler"])
        if kl_ctrl is not None and state.get("kl_ctrl"):
            kl_ctrl.load_state_dict(state["kl_ctrl"])
        if cfg.distill.teacher == "ema":
            teacher.load_state_dict(state["ema_teacher"])
        set_rng_state(state["rng"])
        start = state["step"]
        console.print(f"resumed from {ckpt} (step {start})")
    save_config(cfg, run_dir / "config.yaml")

    val_sampling = SamplingParams(cfg.rollout.val_n, cfg.rollout.val_temperature, cfg.rollout.val_top_p,
                                  cfg.rollout.max_new_tokens)

    def validate(step: int) -> dict:
        report, records = evaluate(engine, pool, val_set, val_ids, val_sampling, f"{d.val}-val",
                                   seed=t.seed + 7919, reward_info=cfg.reward.kwargs)
        report["step"] = step
        write_eval(run_dir, step, report, records)
        return report

    def checkpoint(step: int) -> None:
        save_checkpoint(run_dir, step, model, tokenizer, {
            "optimizer": actor.optimizer.state_dict(), "scheduler": actor.scheduler.state_dict(),
            "sampler": sampler.state_dict(), "skipped_updates": actor.skipped_updates,
            "kl_ctrl": kl_ctrl.state_dict() if kl_ctrl is not None else None,
            "ema_teacher": teacher.state_dict() if cfg.distill.teacher == "ema" else None,
        })

    def next_prompts():
        idx = sampler.next_batch()
        return [train_set[i] for i in idx], [train_ids[i] for i in idx]

    ctx = StepContext(cfg, actor, engine, pool, next_prompts, reference, kl_ctrl, teacher, tokenizer)
    before_path = run_dir / "eval" / "step_0.json"
    console.print(f"train: {describe(train_ps)}\nval: {describe(val_ps)}", highlight=False)
    with pool, MetricsWriter(run_dir, resume_from_step=start) as writer:
        before = json.loads(before_path.read_text()) if start and before_path.exists() else validate(0)
        console.print(f"step 0 validation: {_fmt(before)}", highlight=False)
        last_eval = before if start == 0 else None
        with StepProgress(t.total_steps, start, t.progress) as progress:
            for step in range(start + 1, t.total_steps + 1):
                ctx.step = step
                metrics = train_step(ctx)
                metrics["data/epoch"] = sampler.epoch
                writer.write(step, metrics)
                progress.update(step, metrics)
                if t.test_freq and step % t.test_freq == 0 or step == t.total_steps:
                    last_eval = validate(step)
                    progress.note(f"step {step} validation: {_fmt(last_eval)}")
                if t.save_freq and step % t.save_freq == 0 or step == t.total_steps:
                    checkpoint(step)
        after = last_eval if last_eval is not None else validate(t.total_steps)
    summary = {
        "before": before, "after": after, "steps": t.total_steps,
        "resumed_from_step": start, "wall_seconds": time.perf_counter() - t_start,
        "skipped_updates": actor.skipped_updates, "data": {"train": train_ps.stats, "val": val_ps.stats},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(summary_table(summary))
    console.print(summary_footer(summary, str(run_dir)), highlight=False, soft_wrap=True)
    return summary


def _fmt(report: dict) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in report["metrics"].items() if k.split("@")[0] in ("mean", "pass", "maj")
                     and k.endswith(f"@{report['n']}") or k == "pass@1")
