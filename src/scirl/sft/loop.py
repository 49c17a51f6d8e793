"""`scirl sft`: supervised fine-tuning on conversations with the RL trainer's machinery: the config system, the run
folder rules (lock, resume=auto | disable | PATH, overwrite, finished runs), checkpoints (`checkpoints/step_N/` as
`scirl train` writes them: model/ loadable by model.path, an adapter folder with LoRA), resume mid-epoch, FSDP2
over the ranks torchrun starts, LoRA, metric sinks, SIGTERM / Ctrl-C checkpointing, summary.json and the model card.

The run is sft.epochs x ceil(conversations / sft.batch_size) optimizer steps (sft.max_steps > 0 instead); the
count is recorded as trainer.total_steps in config.yaml and checkpoints (the run folder's finished / resume logic
reads it). A user-set trainer.total_steps is refused in one line: it is not an SFT key.

Validation: the loss on sft.val (when set) before training, every trainer.test_freq steps and at the end; with
sft.rollout_eval the rollout evaluation of `scirl train` (data.val, reward.name, rollout.*, rollout.agent) before
and after training (scirl.sft.rollout_eval)."""

from __future__ import annotations

import contextlib
import json
import signal
import time

import torch
from transformers.utils import logging as transformers_logging

from scirl import dist
from scirl.ckpt.checkpoint import prune_checkpoints, save_checkpoint, step_of
from scirl.ckpt.resume import init_weights_path, restore_modules
from scirl.ckpt.rng import restore_rng
from scirl.config import Config, save_config, to_dict
from scirl.config_sft import check_sft_run
from scirl.fsutil import atomic_write_json
from scirl.log.console import console
from scirl.log.metrics_writer import MetricsWriter
from scirl.log.sinks import MetricSinks
from scirl.progress import progress
from scirl.publish.card import write_card_or_warn
from scirl.sft.data import load_conversations
from scirl.sft.step import batch_indices, eval_loss, rank_share, steps_per_epoch, total_steps, train_step
from scirl.train.actor import make_optimizer, restore_optimizer
from scirl.train.fsdp import enable_gradient_checkpointing, shard_model, sum_gradients_over_ranks
from scirl.train.lora import apply_lora, lora_on, same_adapter_on_all_ranks
from scirl.train.model_loading import load_model_and_tokenizer, load_tokenizer, pick_device
from scirl.train.run_folder import RunLock, RunStart, decide_start
from scirl.train.stop import GracefulStop, RunStopped, stop_signal


def _note(text: str) -> None:
    if dist.is_main():
        console.print(text, highlight=False, soft_wrap=True)


def template_kwargs(cfg: Config) -> dict:
    return {"enable_thinking": cfg.data.enable_thinking}  # as the agent rollout renders its tool turns


def run_sft(cfg: Config) -> dict:
    """Run (one rank of) an SFT run; returns the summary (rank 0) or {}."""
    check_sft_run(cfg)
    joined = dist.init_from_env()
    try:
        return _run(cfg)
    finally:
        if joined:
            dist.destroy()


def _load_data(cfg: Config):
    """(tokenizer, train set, val set or None): the tokenizer of model.path with rollout.agent.chat_template."""
    from scirl.agent.engine import read_chat_template

    tokenizer = load_tokenizer(cfg.model.path)
    if cfg.rollout.agent.chat_template:
        tokenizer.chat_template = read_chat_template(cfg.rollout.agent.chat_template)
    kw = template_kwargs(cfg)
    train = load_conversations(cfg.sft.train, "sft.train", tokenizer, cfg.sft, **kw)
    val = load_conversations(cfg.sft.val, "sft.val", tokenizer, cfg.sft, **kw) if cfg.sft.val else None
    return tokenizer, train, val


def _run(cfg: Config) -> dict:
    transformers_logging.disable_progress_bar()
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    tokenizer, train, val = _load_data(cfg)
    cfg.trainer.total_steps = total_steps(len(train.conversations), cfg.sft)  # recorded: see the module docstring
    with (RunLock(cfg.run_dir) if dist.is_main() else contextlib.nullcontext()) as lock, \
            GracefulStop(cfg.trainer.save_on_signal) as stop:
        start = decide_start(cfg, lock, _note)
        if start.finished:
            if dist.is_main():
                _note(f"run {cfg.run_dir} already finished at step {start.step} (summary.json): nothing to do; "
                      "raise sft.epochs or sft.max_steps to train on, trainer.overwrite=true to start over, or "
                      "choose another trainer.run_name")
                return json.loads((cfg.run_dir / "summary.json").read_text())
            return {}
        return _train(cfg, start, stop, tokenizer, train, val)


def _build_model(cfg: Config, start: RunStart, device: str):
    model, _ = load_model_and_tokenizer(init_weights_path(start.ckpt, cfg.model.path), cfg.model.dtype, device,
                                        cfg.model.attn_implementation, quantization=cfg.model.quantization)
    if lora_on(cfg):
        model = apply_lora(model, cfg.model.lora)
        same_adapter_on_all_ranks(model)
    if cfg.actor.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if dist.world_size() > 1:
        shard_model(model, cfg.actor.fsdp, device)
        sum_gradients_over_ranks(model)  # the loss is normalised by the global token count already
    return model


def _restore(start: RunStart, cfg: Config, model, optimizer, scheduler) -> int:
    state = start.state
    restore_modules(start.ckpt, state, model, optimizer)
    restore_optimizer(optimizer, scheduler, state["scheduler"], cfg.actor)
    note = restore_rng(state["rng"], dist.rank(), dist.world_size(), cfg.trainer.seed, start.step)
    if note:
        _note(note)
    return int(state.get("skipped_updates", 0))


def _train(cfg: Config, start: RunStart, stop: GracefulStop, tokenizer, train, val) -> dict:
    t_start = time.perf_counter()
    t, run_dir, main = cfg.trainer, cfg.run_dir, dist.is_main()
    torch.manual_seed(t.seed)
    device = pick_device(t.device)
    sinks = MetricSinks(t.logger if main else (), run_dir, uri=t.mlflow_uri, project=t.project_name,
                        run_name=t.run_name, config=to_dict(cfg), start_step=start.step, note=_note)
    from scirl.sft.rollout_eval import RolloutEval

    rollout_eval = RolloutEval(cfg, tokenizer, run_dir, sinks, _note)  # reward workers fork before the model loads
    try:
        model = _build_model(cfg, start, device)
        params, optimizer, scheduler = make_optimizer(model, cfg)
        skipped = _restore(start, cfg, model, optimizer, scheduler) if start.state else 0
    except BaseException:
        rollout_eval.close()
        raise
    if start.state:
        _note(f"resumed from {start.ckpt} (step {start.step})")
    config_dict = to_dict(cfg)
    if main:
        save_config(cfg, run_dir / "config.yaml")
    convs, total = train.conversations, t.total_steps
    per_epoch = steps_per_epoch(len(convs), cfg.sft.batch_size)
    _note(f"sft: {len(convs)} conversations ({train.stats['dropped_too_long']} longer than sft.max_length "
          f"dropped), {train.stats['assistant_tokens']} assistant tokens of {train.stats['tokens']}; "
          f"{per_epoch} steps an epoch, {total} steps")
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max(len(c) for c in convs)
    if isinstance(context, int) and longest > context:
        _note(f"warning: the longest conversation has {longest} tokens, past the model's max_position_embeddings "
              f"{context}; lower sft.max_length to leave such rows out")
    def checkpoint(step: int):
        path = save_checkpoint(run_dir, step, model, tokenizer, {
            "scheduler": scheduler.state_dict(), "skipped_updates": skipped, "config": config_dict,
            "sft": {"epoch": (step - 1) // per_epoch if step else 0, "steps_per_epoch": per_epoch},
        }, optimizer=optimizer, save_hf=t.save_hf)
        if main:
            prune_checkpoints(run_dir, t.keep_last)
        return path

    def validation(step: int) -> dict:
        out = eval_loss(model, val.conversations, cfg) if val is not None else {}
        if main and out:
            sinks.log_train(step, out)
            if writer is not None:
                writer.write(step, out)
        return out

    done, saved, stopped = start.step, start.ckpt, 0
    jsonl = main and "jsonl" in t.logger
    with sinks, (MetricsWriter(run_dir) if jsonl else contextlib.nullcontext()) as writer, \
            contextlib.closing(rollout_eval):
        before = rollout_eval.run(model, 0) if start.step == 0 else rollout_eval.read(0)
        val_before = validation(start.step) if start.step == 0 else _first_val(run_dir)
        if val_before:
            _note(f"step {start.step} val loss {val_before['val/loss']:.4f}")
        last_val = val_before
        with progress(total, "sft", "steps", initial=start.step, enabled=t.progress and main) as bar:
            for step in range(start.step + 1, total + 1):
                stopped = stop_signal(stop)
                if stopped:
                    break
                idx, epoch = batch_indices(step, len(convs), cfg.sft.batch_size, t.seed)
                mine = [convs[i] for i in rank_share(idx)]
                metrics = train_step(model, optimizer, scheduler, params, mine, convs[0], cfg)
                skipped += int(metrics["sft/skipped"])
                metrics["sft/skipped_updates"] = float(skipped)
                metrics["data/epoch"] = float(epoch)
                info = f"loss {metrics['sft/loss']:.4f}  {metrics['perf/tokens_per_s']:.0f} tok/s"
                if main:
                    if writer is not None:
                        writer.write(step, metrics)
                    sinks.log_train(step, metrics)
                    bar.update(step, info=info)
                    if "console" in t.logger and not bar.live:
                        console.print(f"step {step}/{total}  epoch {epoch + 1}  {info}", highlight=False)
                done = step
                if t.test_freq and step % t.test_freq == 0 or step == total:
                    last_val = validation(step) or last_val
                if t.save_freq and step % t.save_freq == 0 or step == total:
                    saved = checkpoint(step)
        stopped = stopped or stop_signal(stop)
        if stopped and done < total:
            path = saved if saved is not None and step_of(saved) == done else checkpoint(done)
            if main:
                atomic_write_json(run_dir / "summary.json", _summary("interrupted", before, None, val_before,
                                                                     last_val, done, start, t_start, skipped, train))
            raise RunStopped(f"stopped by {signal.Signals(stopped).name} after step {done}: checkpoint {path}; run "
                             "the same command again to continue (trainer.resume=auto)", stopped)
        after = rollout_eval.run(model, total)
    summary = _summary("finished", before, after, val_before, last_val, total, start, t_start, skipped, train)
    if main:
        atomic_write_json(run_dir / "summary.json", summary)
        if val_before and last_val:
            _note(f"val loss {val_before['val/loss']:.4f} -> {last_val['val/loss']:.4f}")
        rollout_eval.print_table(summary)
        write_card_or_warn(run_dir, _note)
        _note(f"{total} steps in {summary['wall_seconds']:.0f} s ({skipped} updates skipped) · final model: "
              f"{run_dir / 'checkpoints' / f'step_{total}' / 'model'}")
    return summary


def _first_val(run_dir) -> dict:
    """The step-0 val loss a resumed run reports as 'before' (metrics.jsonl), {} when absent."""
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row.get("step") == 0 and "val/loss" in row:
                return {k: v for k, v in row.items() if k.startswith("val/")}
    except (OSError, ValueError):
        pass
    return {}


def _summary(status, before, after, val_before, val_after, steps, start, t_start, skipped, train) -> dict:
    return {"status": status, "kind": "sft", "before": before, "after": after, "steps": steps,
            "val_loss": {"before": val_before.get("val/loss") if val_before else None,
                         "after": val_after.get("val/loss") if val_after else None},
            "resumed_from_step": start.step, "wall_seconds": time.perf_counter() - t_start,
            "skipped_updates": skipped, "data": {"train": train.stats}}
