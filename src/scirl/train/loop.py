"""The run loop: lock and prepare the run folder (new, resumed or finished), build the run, train for
`trainer.total_steps` with validation and periodic checkpoints, stop cleanly on SIGTERM / Ctrl-C, summarise."""

from __future__ import annotations

import json
import random
import time

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from scirl.algos import make_kl_controller
from scirl.ckpt.checkpoint import prune_checkpoints, save_checkpoint, step_of
from scirl.ckpt.resume import init_weights_path, restore_modules
from scirl.ckpt.rng import restore_rng
from scirl.config import Config, save_config, to_dict
from scirl.data.pipeline import describe, load_prompt_set, make_sampler, require_rewards, tokenize_prompt_set
from scirl.eval.runner import evaluate, write_eval
from scirl.fsutil import atomic_write_json
from scirl.log.console import StepProgress, console, summary_footer, summary_table
from scirl.log.metrics_writer import MetricsWriter
from scirl.rewards import RewardPool
from scirl.rollout.base import SamplingParams
from scirl.rollout.hf_engine import HFRolloutEngine
from scirl.train.actor import Actor
from scirl.train.distill import make_teacher
from scirl.train.model_loading import load_model_and_tokenizer, pick_device, resolve_model_path
from scirl.train.run_folder import RunLock, RunStart, prepare_run
from scirl.train.step import StepContext, train_step
from scirl.train.stop import GracefulStop, RunStopped
from scirl.train.teachers import FrozenReference


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _note(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def run_training(cfg: Config) -> dict:
    """Train one run. Holds the run folder's lock throughout; SIGTERM / Ctrl-C stop at the next step boundary
    with a checkpoint (trainer.save_on_signal) and raise RunStopped."""
    with RunLock(cfg.run_dir) as lock, GracefulStop(cfg.trainer.save_on_signal) as stop:
        if lock.stale:
            _note(f"note: stale lock of a run that did not exit cleanly ({lock.stale}); taken over")
        start = prepare_run(cfg, to_dict(cfg), _note)
        if start.finished:
            summary = json.loads((cfg.run_dir / "summary.json").read_text())
            if summary.get("before") and summary.get("after"):
                console.print(summary_table(summary))
            _note(f"run {cfg.run_dir} already finished at step {start.step} (summary.json): nothing to do; raise "
                  "trainer.total_steps to train on, trainer.overwrite=true to start over, or choose another "
                  "trainer.run_name")
            return summary
        return _train(cfg, start, stop)


def _saved_modules(cfg: Config, teacher) -> dict:
    """Modules checkpointed beside the policy in dcp/, by name."""
    return {"ema_teacher": teacher.model} if cfg.distill.teacher == "ema" else {}


def _restore(start: RunStart, cfg: Config, actor, sampler, kl_ctrl, teacher) -> None:
    state = start.state
    restore_modules(start.ckpt, state, actor.model, actor.optimizer, _saved_modules(cfg, teacher))
    actor.scheduler.load_state_dict(state["scheduler"])
    act, sched = cfg.actor, actor.scheduler  # the optimizer state carries the old hyperparameters: apply the config's
    sched.base_lrs = [act.lr for _ in sched.base_lrs]
    for group, factor in zip(actor.optimizer.param_groups, sched.lr_lambdas):
        group.update(initial_lr=act.lr, lr=act.lr * factor(sched.last_epoch), betas=tuple(act.betas),
                     weight_decay=act.weight_decay)
    actor.skipped_updates = state["skipped_updates"]
    sampler.load_state_dict(state["sampler"])
    if kl_ctrl is not None and state.get("kl_ctrl"):
        kl_ctrl.load_state_dict(state["kl_ctrl"])
    note = restore_rng(state["rng"], 0, 1, cfg.trainer.seed, start.step)
    if note:
        _note(note)


def _read_eval(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        _note(f"warning: cannot read {path} ({type(e).__name__}); the summary has no 'before' evaluation")
        return None


def _train(cfg: Config, start: RunStart, stop: GracefulStop) -> dict:
    t_start = time.perf_counter()
    transformers_logging.disable_progress_bar()  # our own progress bar is the one that matters
    d, t, run_dir = cfg.data, cfg.trainer, cfg.run_dir
    config_dict = to_dict(cfg)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed)
    init_path = init_weights_path(start.ckpt, cfg.model.path)
    resolve_model_path(init_path)  # fail fast on a bad model.path
    train_ps, val_ps = load_prompt_set(d, "train"), load_prompt_set(d, "val")
    require_rewards(train_ps.samples, cfg.reward.name, "data.train")
    require_rewards(val_ps.samples, cfg.reward.name, "data.val")
    # reward workers are forked before the model and tokenizer spin up their threads
    pool = RewardPool(cfg.reward.name, workers=cfg.reward.workers, timeout=cfg.reward.timeout)
    device = pick_device(t.device)
    model, tokenizer = load_model_and_tokenizer(init_path, cfg.model.dtype, device, cfg.model.attn_implementation)
    train_ps, val_ps = tokenize_prompt_set(train_ps, tokenizer, d, "data.train"), tokenize_prompt_set(val_ps, tokenizer, d, "data.val")
    train_set, train_ids, val_set, val_ids = train_ps.samples, train_ps.ids, val_ps.samples, val_ps.ids
    actor = Actor(model, cfg)
    reference = None
    if cfg.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward or cfg.distill.teacher == "reference":
        # a frozen copy of the *initial* policy
        reference = FrozenReference(cfg.model.path, cfg.model.dtype, device, cfg.model.attn_implementation,
                                    cfg.actor.ppo_micro_batch_size, cfg.rollout.temperature,
                                    chunk_size=cfg.actor.logprobs_chunk_size)
    kc = cfg.algorithm.kl_ctrl
    kl_ctrl = make_kl_controller(kc.type, kc.kl_coef, kc.target_kl, kc.horizon) if cfg.algorithm.use_kl_in_reward else None
    teacher = make_teacher(cfg, model, tokenizer, reference, device)  # RLSD / SDPO / OPD
    engine = HFRolloutEngine(model, tokenizer)
    sampler = make_sampler(train_ps, d.train_batch_size, d.seed, d.shuffle)
    if start.state:
        _restore(start, cfg, actor, sampler, kl_ctrl, teacher)
        _note(f"resumed from {start.ckpt} (step {start.step})")
    save_config(cfg, run_dir / "config.yaml")

    val_sampling = SamplingParams(cfg.rollout.val_n, cfg.rollout.val_temperature, cfg.rollout.val_top_p,
                                  cfg.rollout.max_new_tokens)

    def validate(step: int) -> dict:
        report, records = evaluate(engine, pool, val_set, val_ids, val_sampling, f"{d.val}-val",
                                   seed=t.seed + 7919, reward_info=cfg.reward.kwargs)
        report["step"] = step
        write_eval(run_dir, step, report, records)
        return report

    def checkpoint(step: int):
        path = save_checkpoint(run_dir, step, model, tokenizer, {
            "scheduler": actor.scheduler.state_dict(), "sampler": sampler.state_dict(),
            "skipped_updates": actor.skipped_updates, "config": config_dict,
            "kl_ctrl": kl_ctrl.state_dict() if kl_ctrl is not None else None,
        }, optimizer=actor.optimizer, modules=_saved_modules(cfg, teacher), save_hf=t.save_hf)
        prune_checkpoints(run_dir, t.keep_last)
        return path

    def next_prompts():
        idx = sampler.next_batch()
        return [train_set[i] for i in idx], [train_ids[i] for i in idx]

    ctx = StepContext(cfg, actor, engine, pool, next_prompts, reference, kl_ctrl, teacher, tokenizer)
    _note(f"train: {describe(train_ps)}\nval: {describe(val_ps)}")
    done, saved = start.step, start.ckpt  # the last completed step, the newest checkpoint of this run
    with pool, MetricsWriter(run_dir) as writer:
        before = _read_eval(run_dir / "eval" / "step_0.json") if start.step else validate(0)
        if before is not None:
            _note(f"step 0 validation: {_fmt(before)}")
        last_eval = before if start.step == 0 else None
        with StepProgress(t.total_steps, start.step, t.progress) as progress:
            for step in range(start.step + 1, t.total_steps + 1):
                if stop.requested:
                    break
                ctx.step = step
                metrics = train_step(ctx)
                metrics["data/epoch"] = sampler.epoch
                writer.write(step, metrics)
                progress.update(step, metrics)
                done = step
                if t.test_freq and step % t.test_freq == 0 or step == t.total_steps:
                    last_eval = validate(step)
                    progress.note(f"step {step} validation: {_fmt(last_eval)}")
                if t.save_freq and step % t.save_freq == 0 or step == t.total_steps:
                    saved = checkpoint(step)
        if stop.requested and done < t.total_steps:
            path = saved if saved is not None and step_of(saved) == done else checkpoint(done)
            _write_summary(run_dir, "interrupted", before, last_eval, done, start, t_start, actor, train_ps, val_ps)
            raise RunStopped(f"stopped by {stop.name} after step {done}: checkpoint {path}; run the same command "
                             "again to continue (trainer.resume=auto)", stop.signum)
        after = last_eval if last_eval is not None else validate(t.total_steps)
    summary = _write_summary(run_dir, "finished", before, after, t.total_steps, start, t_start, actor, train_ps, val_ps)
    if before is not None:
        console.print(summary_table(summary))
    _note(summary_footer(summary, str(run_dir)))
    return summary


def _write_summary(run_dir, status: str, before, after, steps: int, start: RunStart, t_start: float, actor,
                   train_ps, val_ps) -> dict:
    summary = {
        "status": status, "before": before, "after": after, "steps": steps,
        "resumed_from_step": start.step, "wall_seconds": time.perf_counter() - t_start,
        "skipped_updates": actor.skipped_updates, "data": {"train": train_ps.stats, "val": val_ps.stats},
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _fmt(report: dict) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in report["metrics"].items() if k.split("@")[0] in ("mean", "pass", "maj")
                     and k.endswith(f"@{report['n']}") or k == "pass@1")
