"""Building a run: the config turned into this rank's components — prompt sets and sampler, reward pool, the actor
(FSDP2-sharded when the world size is above 1, gradient checkpointing when asked), the rollout engine (sampling
from the actor's module in one process, from a full-weight rollout copy per rank under FSDP: for a LoRA run a plain
model that loads the merged weights), the frozen reference and the teacher (sharded like the actor), and the KL
controller. `train/loop.py` only resumes, loops, validates and checkpoints."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from scirl import dist
from scirl.agent.engine import setup_agent, wrap_engine
from scirl.algos import make_kl_controller
from scirl.config import Config
from scirl.data.pipeline import load_prompt_set, make_sampler, require_rewards, tokenize_prompt_set
from scirl.rewards import RewardPool, code_tests
from scirl.rollout import make_engine
from scirl.rollout.base import RolloutEngine
from scirl.train.actor import Actor
from scirl.train.distill import make_teacher
from scirl.train.fsdp import enable_gradient_checkpointing, shard_model
from scirl.train.lora import AdapterDisabledReference, apply_lora, lora_on, same_adapter_on_all_ranks
from scirl.train.model_loading import load_model_and_tokenizer, pick_device, resolve_model_path
from scirl.train.teachers import FrozenReference


@dataclass
class RunParts:
    """One rank's components of a run."""

    cfg: Config
    model: torch.nn.Module  # the policy (sharded when `sharded`)
    tokenizer: object
    actor: Actor
    engine: RolloutEngine
    reference: FrozenReference | AdapterDisabledReference | None
    teacher: object | None  # EMATeacher | FrozenReference | ExternalTeacher | None
    kl_ctrl: object | None
    pool: RewardPool
    sampler: object
    train_ps: object
    val_ps: object
    sharded: bool
    rollout_model: torch.nn.Module  # the module with full weights that model/ is saved from (the policy, unsharded)
    val_engine: RolloutEngine | None = None  # validation's engine when rollout.val_engine names another one
    sandbox: object | None = None  # the SandboxPool behind code_interpreter (rollout.agent), closed with the run

    @property
    def validation_engine(self) -> RolloutEngine:
        return self.val_engine or self.engine

    def next_prompts(self):
        """This rank's share of the next global batch (every rank draws the same batch: same sampler, same seed):
        whole prompt groups, a contiguous share of each mini-batch (scirl.dist.rank_groups)."""
        idx = self.sampler.next_batch()
        mine = [idx[g] for g in dist.rank_groups(len(idx), self.cfg.actor.ppo_mini_batch_size, dist.rank(),
                                                   dist.world_size())]
        return [self.train_ps.samples[i] for i in mine], [self.train_ps.ids[i] for i in mine]

    def sync_rollout(self) -> None:
        """Load the actor's current weights into the rollout engine (after weights change outside a step)."""
        weights = self.actor.rollout_weights()
        for engine in {id(e): e for e in (self.engine, self.val_engine) if e is not None}.values():
            engine.update_weights(weights)

    def close(self) -> None:
        for engine in (self.val_engine, self.engine):
            if engine is not None:
                engine.close()
        if self.sandbox is not None:  # code_interpreter no longer runs programs in this run's pool
            from scirl.agent.tools import set_code_runner

            set_code_runner(None)


def build_run(cfg: Config, init_path: str) -> RunParts:
    """This rank's components, the policy loaded from `init_path` (the model or a checkpoint's HF folder)."""
    d, t = cfg.data, cfg.trainer
    init_folder = resolve_model_path(init_path)  # fail fast on a bad model.path
    train_ps, val_ps = load_prompt_set(d, "train"), load_prompt_set(d, "val")
    require_rewards(train_ps.samples, cfg.reward.name, "data.train")
    require_rewards(val_ps.samples, cfg.reward.name, "data.val")
    # reward workers are forked before the model and tokenizer spin up their threads
    code_tests.configure(cfg.sandbox)  # the sandbox limits a code reward's workers run candidates under
    pool = RewardPool(cfg.reward.name, workers=cfg.reward.workers, timeout=cfg.reward.timeout)
    device = pick_device(t.device)
    model, tokenizer = load_model_and_tokenizer(init_path, cfg.model.dtype, device, cfg.model.attn_implementation,
                                                quantization=cfg.model.quantization)  # 4-bit QLoRA base
    if lora_on(cfg):  # a fresh adapter on model.path; on resume dcp/ restores it (model/ is an adapter folder, so
        # init_weights_path gives model.path)
        model = apply_lora(model, cfg.model.lora)
        same_adapter_on_all_ranks(model)  # before the rollout copy and the sharding
    tools, sandbox, schemas = [], None, None
    if cfg.rollout.agent.enable:  # the chat template override, the tools, the sandbox behind code_interpreter
        tools, sandbox = setup_agent(cfg, tokenizer)
        schemas = [tool.schema for tool in tools]
    train_ps = tokenize_prompt_set(train_ps, tokenizer, d, "data.train", schemas)
    val_ps = tokenize_prompt_set(val_ps, tokenizer, d, "data.val", schemas)
    reference = None
    needs_reference = cfg.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward or cfg.distill.teacher == "reference"
    if needs_reference and lora_on(cfg):
        # the initial policy is the base: the policy's module with the adapter disabled, no second copy
        reference = AdapterDisabledReference(model, cfg.actor.ppo_micro_batch_size, cfg.rollout.temperature,
                                             chunk_size=cfg.actor.logprobs_chunk_size)
    elif needs_reference:
        # a frozen copy of the *initial* policy
        reference = FrozenReference(cfg.model.path, cfg.model.dtype, device, cfg.model.attn_implementation,
                                    cfg.actor.ppo_micro_batch_size, cfg.rollout.temperature,
                                    chunk_size=cfg.actor.logprobs_chunk_size)
    kc = cfg.algorithm.kl_ctrl
    kl_ctrl = make_kl_controller(kc.type, kc.kl_coef, kc.target_kl, kc.horizon) if cfg.algorithm.use_kl_in_reward else None
    teacher = make_teacher(cfg, model, tokenizer, reference, device)  # RLSD / SDPO / OPD (EMA: a copy, unsharded)
    sharded = dist.world_size() > 1
    rollout_model = model
    if sharded:
        # the rollout copy: full weights on every rank, synced after each optimizer step (Actor.rollout_weights);
        # generating on the sharded module would all-gather every layer for every token
        rollout_model = copy.deepcopy(model).eval().requires_grad_(False)
        if lora_on(cfg):  # a plain model that loads the merged weights (Actor.rollout_weights)
            rollout_model = rollout_model.merge_and_unload()
        frozen = {id(m.model): m.model for m in (reference, teacher)  # not the adapter-disabled policy itself
                  if m is not None and hasattr(m, "model") and m.model is not model}
        for module in frozen.values():
            shard_model(module, cfg.actor.fsdp, device)
    if cfg.actor.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if sharded:
        shard_model(model, cfg.actor.fsdp, device)
    actor = Actor(model, cfg)
    r = cfg.rollout
    engine = make_engine(r.engine, cfg, rollout_model, tokenizer, init_folder, not sharded)
    val_engine = None
    if r.val_engine and r.val_engine != r.engine:
        val_engine = make_engine(r.val_engine, cfg, rollout_model, tokenizer, init_folder, not sharded)
    if cfg.rollout.agent.enable:  # multi-turn rollouts with tool calls, on both engines
        engine = wrap_engine(cfg, engine, tokenizer, tools)
        val_engine = val_engine and wrap_engine(cfg, val_engine, tokenizer, tools)
    # an engine with weights of its own (vLLM, a server, the rollout copy under FSDP) gets them after every step
    actor.push_weights = any(not e.shares_module for e in (engine, val_engine) if e is not None)
    sampler = make_sampler(train_ps, d.train_batch_size, d.seed, d.shuffle)
    return RunParts(cfg, model, tokenizer, actor, engine, reference, teacher, kl_ctrl, pool, sampler, train_ps,
                    val_ps, sharded, rollout_model, val_engine, sandbox)
