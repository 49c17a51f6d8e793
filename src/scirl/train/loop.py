"""The run loop: lock and prepare the run folder (new, resumed or finished), build the run, train for
`trainer.total_steps` with validation and periodic checkpoints, stop cleanly on SIGTERM / Ctrl-C, summarise."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import time

import numpy as np
import torch
from transformers.utils import logging as transformers_logging

from scirl import dist
from scirl.ckpt.best import BestTracker, read_best
from scirl.ckpt.checkpoint import prune_checkpoints, save_checkpoint, step_of
from scirl.ckpt.resume import init_weights_path, restore_modules
from scirl.ckpt.rng import restore_rng
from scirl.config import Config, save_config, to_dict
from scirl.data.pipeline import describe
from scirl.eval.runner import evaluate, write_eval
from scirl.fsutil import atomic_write_json
from scirl.log.console import StepProgress, console, summary_footer, summary_table
from scirl.log.metrics_writer import MetricsWriter
from scirl.log.sinks import MetricSinks
from scirl.publish.card import write_card_or_warn
from scirl.publish.report import ReportRefresher
from scirl.rollout.base import SamplingParams
from scirl.train.actor import restore_optimizer
from scirl.train.build import build_run
from scirl.train.lora import lora_on
from scirl.train.rank_metrics import reduce_step_metrics
from scirl.train.run_folder import RunLock, RunStart, decide_start
from scirl.train.step import StepContext, train_step
from scirl.train.sync_guard import SyncGuard
from scirl.train.stop import GracefulStop, RunStopped, stop_signal


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _note(text: str) -> None:
    if dist.is_main():  # rank 0 alone talks
        console.print(text, highlight=False, soft_wrap=True)


def run_training(cfg: Config) -> dict:
    """Train one run (one rank of it when started by torchrun / the Ray launcher: WORLD_SIZE > 1). Rank 0 holds
    the run folder's lock throughout and decides what to do with the folder; SIGTERM / Ctrl-C stop every rank at
    the same step boundary with a checkpoint (trainer.save_on_signal) and raise RunStopped."""
    dist.check_divisible(cfg.data.train_batch_size, cfg.actor.ppo_mini_batch_size, dist.env_world_size())
    joined = dist.init_from_env()
    try:
        return _run(cfg)
    finally:
        if joined:
            dist.destroy()


def _run(cfg: Config) -> dict:
    with (RunLock(cfg.run_dir) if dist.is_main() else contextlib.nullcontext()) as lock, \
            GracefulStop(cfg.trainer.save_on_signal) as stop:
        start = decide_start(cfg, lock, _note)
        if start.finished:
            if not dist.is_main():
                return {}
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
    return {"ema_teacher": teacher.state_module} if cfg.distill.teacher == "ema" else {}


def _restore(start: RunStart, cfg: Config, parts) -> None:
    """Load a checkpoint into this rank's components (every rank calls it), then sync the rollout copy."""
    state, actor = start.state, parts.actor
    restore_modules(start.ckpt, state, actor.model, actor.optimizer, _saved_modules(cfg, parts.teacher))
    restore_optimizer(actor.optimizer, actor.scheduler, state["scheduler"], cfg.actor)
    actor.skipped_updates = state["skipped_updates"]
    parts.sampler.load_state_dict(state["sampler"])
    if parts.kl_ctrl is not None and state.get("kl_ctrl"):
        parts.kl_ctrl.load_state_dict(state["kl_ctrl"])
    note = restore_rng(state["rng"], dist.rank(), dist.world_size(), cfg.trainer.seed, start.step)
    if note:
        _note(note)
    parts.sync_rollout()  # the weights may have come from dcp/ after the rollout copy was made


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
    main = dist.is_main()
    config_dict = to_dict(cfg)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    seed_everything(t.seed + 1_000_003 * dist.rank())  # each rank samples its own responses
    parts = build_run(cfg, init_weights_path(start.ckpt, cfg.model.path))
    train_ps, val_ps, pool, actor, engine = parts.train_ps, parts.val_ps, parts.pool, parts.actor, parts.engine
    if start.state:
        _restore(start, cfg, parts)
        _note(f"resumed from {start.ckpt} (step {start.step})")
    if main:
        save_config(cfg, run_dir / "config.yaml")

    val_sampling = SamplingParams(cfg.rollout.val_n, cfg.rollout.val_temperature, cfg.rollout.val_top_p,
                                  cfg.rollout.max_new_tokens)

    val_engine = parts.validation_engine
    refresh_report = ReportRefresher(run_dir, _note)  # plots/*.png + report.html; a failure never stops the run
    sinks = MetricSinks(t.logger if main else (), run_dir, uri=t.mlflow_uri, project=t.project_name,
                        run_name=t.run_name, config=config_dict, start_step=start.step, note=_note)

    def validate(step: int) -> dict:
        if val_engine is not engine and not val_engine.shares_module:  # pushed here, only when it samples
            val_engine.update_weights(actor.rollout_weights())
        report, records = evaluate(val_engine, pool, val_ps.samples, val_ps.ids, val_sampling, f"{d.val}-val",
                                   seed=t.seed + 7919, reward_info=cfg.reward.kwargs,
                                   overlap=cfg.reward.overlap)  # sharded over ranks
        report["step"] = step
        if main:
            write_eval(run_dir, step, report, records)
            sinks.log_eval(step, report)
            if step < t.total_steps:  # the last one is refreshed once summary.json is written
                refresh_report()
        return report

    best = BestTracker(run_dir, t.best_metric, t.best_mode,  # a resume goes on from checkpoints/best/best.json
                       dist.broadcast_object(read_best(run_dir) if main and t.best_metric else None))

    def checkpoint(step: int):  # every rank takes part; rank 0 writes model/ from the rollout copy (no gather)
        path = save_checkpoint(run_dir, step, parts.model, parts.tokenizer, {
            "scheduler": actor.scheduler.state_dict(), "sampler": parts.sampler.state_dict(),
            "skipped_updates": actor.skipped_updates, "config": config_dict,
            "kl_ctrl": parts.kl_ctrl.state_dict() if parts.kl_ctrl is not None else None,
        }, optimizer=actor.optimizer, modules=_saved_modules(cfg, parts.teacher), save_hf=t.save_hf,
            hf_model=parts.rollout_model if parts.sharded and not lora_on(cfg) else None)  # LoRA: the adapter
        if main:
            prune_checkpoints(run_dir, t.keep_last, keep=best.keep())
        return path

    ctx = StepContext(cfg, actor, engine, pool, parts.next_prompts, parts.reference, parts.kl_ctrl, parts.teacher,
                      parts.tokenizer)
    r = cfg.rollout
    guard = SyncGuard(engine, actor, parts.tokenizer, train_ps.ids[0], r.sync_check_freq, r.sync_check_tol)
    _note(f"train: {describe(train_ps)}\nval: {describe(val_ps)}")
    done, saved = start.step, start.ckpt  # the last completed step, the newest checkpoint of this run
    stopped = 0  # the signal that stopped the run (on any rank), 0 while none did
    jsonl = main and "jsonl" in t.logger
    writer_cm = MetricsWriter(run_dir) if jsonl else contextlib.nullcontext()
    with pool, contextlib.closing(parts), sinks, writer_cm as writer:
        if guard.active:  # before the first step too: a mismatch (dtype, tokenizer, weights) stops the run at once
            _note(f"rollout weight sync check before step {start.step + 1}: mean |log-prob diff| "
                  f"{guard.check(0)['rollout/sync_logprob_diff']:.2e}")
        before = _read_eval(run_dir / "eval" / "step_0.json") if start.step else validate(0)
        if before is not None:
            _note(f"step 0 validation: {_fmt(before)}")
        last_eval = before if start.step == 0 else None
        with StepProgress(t.total_steps, start.step, t.progress and main, "console" in t.logger) as progress:
            for step in range(start.step + 1, t.total_steps + 1):
                stopped = stop_signal(stop)
                if stopped:
                    break
                ctx.step = step
                metrics = train_step(ctx)
                metrics.update(guard.check(step))  # after the step's weight push
                metrics = reduce_step_metrics(metrics)
                metrics["data/epoch"] = parts.sampler.epoch
                if main:
                    if jsonl:
                        writer.write(step, metrics)
                    sinks.log_train(step, metrics)
                    progress.update(step, metrics)  # the bar; the per-step line only with the console logger
                done = step
                validated = t.test_freq and step % t.test_freq == 0 or step == t.total_steps
                if validated:
                    last_eval = validate(step)
                    if main:
                        progress.note(f"step {step} validation: {_fmt(last_eval)}")
                if t.save_freq and step % t.save_freq == 0 or step == t.total_steps:
                    saved = checkpoint(step)
                if validated and dist.any_rank(best.improves(last_eval)):  # the report is all-gathered anyway
                    if saved is None or step_of(saved) != step:
                        saved = checkpoint(step)  # a validation step that is no save step: saved for the best
                    best.record(step, last_eval, saved if main else None)
        stopped = stopped or stop_signal(stop)
        if stopped and done < t.total_steps:
            path = saved if saved is not None and step_of(saved) == done else checkpoint(done)
            if main:
                _write_summary(run_dir, "interrupted", before, last_eval, done, start, t_start, actor, train_ps, val_ps)
            name = signal.Signals(stopped).name
            raise RunStopped(f"stopped by {name} after step {done}: checkpoint {path}; run the same command "
                             "again to continue (trainer.resume=auto)", stopped)
        after = last_eval if last_eval is not None else validate(t.total_steps)
    summary = _summary(run_dir, "finished", before, after, t.total_steps, start, t_start, actor, train_ps, val_ps)
    if main:
        atomic_write_json(run_dir / "summary.json", summary)
        refresh_report()
        if before is not None:
            console.print(summary_table(summary))
        _note(summary_footer(summary, str(run_dir)))
        write_card_or_warn(run_dir, _note)
    return summary


def _write_summary(run_dir, status: str, before, after, steps: int, start: RunStart, t_start: float, actor,
                   train_ps, val_ps) -> dict:
    summary = _summary(run_dir, status, before, after, steps, start, t_start, actor, train_ps, val_ps)
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _summary(run_dir, status: str, before, after, steps: int, start: RunStart, t_start: float, actor,
             train_ps, val_ps) -> dict:
    summary = {
        "status": status, "before": before, "after": after, "steps": steps,
        "resumed_from_step": start.step, "wall_seconds": time.perf_counter() - t_start,
        "skipped_updates": actor.skipped_updates, "data": {"train": train_ps.stats, "val": val_ps.stats},
    }
    return summary


def _fmt(report: dict) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in report["metrics"].items() if k.split("@")[0] in ("mean", "pass", "maj")
                     and k.endswith(f"@{report['n']}") or k == "pass@1")
