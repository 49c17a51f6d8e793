"""The rollout evaluation of an SFT run (sft.rollout_eval=true): `scirl train`'s validation (eval/runner.py
evaluate) on data.val with reward.name, rollout.val_n / val_temperature / val_top_p / max_new_tokens, before and
after training, written to eval/step_<N>.json and the metric sinks, reported in summary.json as before / after.
rollout.agent.enable makes it the multi-turn tool-use evaluation (AgentEngine over the configured tools, the sandbox
behind code_interpreter), as in `scirl train`.

The engine samples from the trained module itself in one process (hf); under FSDP each rank samples from a plain
full-weight copy loaded from model.path that gets the gathered (LoRA: merged) weights before each evaluation, as
the RL trainer's rollout copy; an engine with weights of its own (vllm) gets them the same way."""

from __future__ import annotations

import json
from pathlib import Path

from scirl import dist
from scirl.log.console import console, summary_table
from scirl.rollout.base import SamplingParams


class RolloutEval:
    def __init__(self, cfg, tokenizer, run_dir: Path, sinks, note):
        self.cfg, self.tokenizer, self.run_dir, self.sinks, self.note = cfg, tokenizer, Path(run_dir), sinks, note
        self.on = cfg.sft.rollout_eval
        self.engine = self.pool = self.sandbox = self.copy = None
        if not self.on:
            return
        from scirl.agent.engine import setup_agent
        from scirl.data.pipeline import load_prompt_set, require_rewards, tokenize_prompt_set
        from scirl.rewards import RewardPool, code_tests

        d = cfg.data
        val_ps = load_prompt_set(d, "val")
        require_rewards(val_ps.samples, cfg.reward.name, "data.val")
        code_tests.configure(cfg.sandbox)  # the sandbox limits a code reward's workers run candidates under
        self.pool = RewardPool(cfg.reward.name, workers=cfg.reward.workers, timeout=cfg.reward.timeout)
        self.pool.__enter__()
        self.tools, schemas = [], None
        if cfg.rollout.agent.enable:
            self.tools, self.sandbox = setup_agent(cfg, tokenizer)
            schemas = [tool.schema for tool in self.tools]
        self.val_ps = tokenize_prompt_set(val_ps, tokenizer, d, "data.val", schemas)

    def _engine(self, model, sharded: bool):
        from scirl.agent.engine import wrap_engine
        from scirl.rollout import make_engine
        from scirl.train.model_loading import load_model_and_tokenizer, pick_device, resolve_model_path

        if self.engine is None:
            cfg = self.cfg
            module = model
            if sharded:  # a plain full-weight copy per rank (generating on shards would gather every layer)
                module, _ = load_model_and_tokenizer(cfg.model.path, cfg.model.dtype, pick_device(cfg.trainer.device),
                                                     cfg.model.attn_implementation)
                self.copy = module.eval().requires_grad_(False)
            kind = cfg.rollout.val_engine or cfg.rollout.engine
            self.engine = make_engine(kind, cfg, module, self.tokenizer, resolve_model_path(cfg.model.path),
                                      not sharded)
            if cfg.rollout.agent.enable:
                self.engine = wrap_engine(cfg, self.engine, self.tokenizer, self.tools)
        return self.engine

    def _weights(self, model, engine, sharded: bool):
        """The full (LoRA: merged) weights the engine must load, or None when it samples from `model` itself."""
        from scirl.train.fsdp import full_state_dict
        from scirl.train.lora import lora_on, merged_state_dict

        if not sharded and engine.shares_module:
            return None
        state = full_state_dict(model) if sharded else {k: v.detach() for k, v in model.state_dict().items()}
        return merged_state_dict(state, self.cfg.model.lora) if lora_on(self.cfg) else state

    def run(self, model, step: int) -> dict | None:
        """Evaluate the current weights (every rank calls it); the report on rank 0, None when off."""
        if not self.on:
            return None
        from scirl.eval.runner import evaluate, write_eval
        from scirl.train.fsdp import is_sharded

        cfg, r = self.cfg, self.cfg.rollout
        sharded = is_sharded(model)
        engine = self._engine(model, sharded)
        engine.update_weights(self._weights(model, engine, sharded))
        model.eval()
        sampling = SamplingParams(r.val_n, r.val_temperature, r.val_top_p, r.max_new_tokens)
        report, records = evaluate(engine, self.pool, self.val_ps.samples, self.val_ps.ids, sampling,
                                   f"{cfg.data.val}-val", seed=cfg.trainer.seed + 7919, reward_info=cfg.reward.kwargs,
                                   overlap=cfg.reward.overlap)
        report["step"] = step
        if dist.is_main():
            write_eval(self.run_dir, step, report, records)
            self.sinks.log_eval(step, report)
            shown = {k: v for k, v in report["metrics"].items() if k.split("@")[0] in ("mean", "pass")}
            self.note(f"step {step} rollout eval: " + "  ".join(f"{k} {v:.3f}" for k, v in shown.items()))
        return report

    def read(self, step: int) -> dict | None:
        """The report a resumed run wrote at `step` (eval/step_<N>.json), None when off or absent."""
        if not self.on:
            return None
        try:
            return json.loads((self.run_dir / "eval" / f"step_{step}.json").read_text())
        except (OSError, ValueError):
            return None

    def print_table(self, summary: dict) -> None:
        if summary.get("before") and summary.get("after"):
            console.print(summary_table(summary))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        if self.sandbox is not None:
            from scirl.agent.tools import set_code_runner

            set_code_runner(None)
        if self.pool is not None:
            self.pool.__exit__(None, None, None)
