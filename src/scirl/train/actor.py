"""The actor: owns the policy module, AdamW and the LR schedule; applies PPO-style updates (mini-batches,
micro-batches with gradient accumulation, grad clipping, non-finite skip) to per-token log-probs from
train/logprobs.py."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import torch

from scirl import dist
from scirl.algos import aggregate_loss, get_policy_loss, global_denominator, kl_penalty, masked_mean, opd_diagnostics
from scirl.config import Config
from scirl.faults import fault_point
from scirl.rollout.base import Trajectories
from scirl.train.distill_losses import distill_terms, distribution_loss, needs_distributions, rlsd_kwargs
from scirl.train.fsdp import compute_device, full_state_dict, is_sharded, sum_gradients_over_ranks
from scirl.train.lora import lora_on, merged_state_dict
from scirl.train.logprobs import batched_logprobs, logprobs_from_logits, response_logits, sequence_logprobs


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (the grad norm of sharded gradients) as a plain tensor; a plain tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _sum_over_ranks(sums: dict[str, float], keep: tuple[str, ...]) -> dict[str, float]:
    """Per-rank metric sums (each rank's share already weighted by global token counts) summed over ranks;
    the `keep` keys are the same on every rank (grad norm, update counts) and stay as they are."""
    if dist.world_size() == 1:
        return sums
    out = defaultdict(float, {k: sums[k] for k in keep if k in sums})
    for part in dist.all_gather_object(dict(sums)):
        for key, value in part.items():
            if key not in keep:
                out[key] += value
    return out


def lr_lambda(warmup: int, total: int, kind: str, min_ratio: float):
    def fn(step: int) -> float:  # step = number of scheduler.step() calls so far
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return fn


def make_optimizer(model, cfg: Config):
    """(trainable parameters, AdamW over them, its LambdaLR schedule) from actor.* and trainer.total_steps."""
    act = cfg.actor
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=act.lr, betas=tuple(act.betas), weight_decay=act.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(act.warmup_steps, cfg.trainer.total_steps, act.lr_scheduler, act.min_lr_ratio))
    return params, optimizer, scheduler


def restore_optimizer(optimizer, scheduler, scheduler_state: dict, act) -> None:
    """Load a checkpoint's scheduler state, then apply the config's actor.{lr, betas, weight_decay}: the restored
    optimizer state carries the old hyperparameters (the schedule itself is the config's: LambdaLR keeps its
    functions out of its state)."""
    scheduler.load_state_dict(scheduler_state)
    scheduler.base_lrs = [act.lr for _ in scheduler.base_lrs]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group.update(initial_lr=act.lr, lr=act.lr * factor(scheduler.last_epoch), betas=tuple(act.betas),
                     weight_decay=act.weight_decay)


class Actor:
    def __init__(self, model, cfg: Config):
        self.model = model
        self.cfg = cfg
        act = cfg.actor
        self.params, self.optimizer, self.scheduler = make_optimizer(model, cfg)
        self.policy_loss = get_policy_loss(act.policy_loss)
        # the loss's own hyperparameters (SAPO's taus, Clip-Cov's window, ...) from actor.policy_loss_kwargs
        names = getattr(self.policy_loss, "config_kwargs", ())
        self.loss_kwargs = {k: getattr(act.policy_loss_kwargs, k) for k in names}
        self.skipped_updates = 0  # optimizer steps skipped for a non-finite loss or grad norm (whole run)
        self.sharded = is_sharded(model)
        self.push_weights = False  # set by build_run when the rollout engine keeps weights of its own
        if self.sharded:  # losses carry global normalisers: FSDP must sum gradients over ranks, not average them
            sum_gradients_over_ranks(model)
        # actor.ppo_mini_batch_size is global: each rank trains on its share of every mini-batch's groups
        self.mini_batch_rows = act.ppo_mini_batch_size // dist.world_size() * cfg.rollout.n

    def device(self):
        return compute_device(self.model)

    def rollout_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights a rollout engine must load after an optimizer step (THE weight-sync point): the full,
        unsharded state dict (one all-gather per parameter, on every rank) when the policy is FSDP-sharded or the
        engine holds weights of its own (`push_weights`: vLLM, a server); None when the engine samples from this
        very module (one process, hf: nothing to copy). A LoRA policy's are the plain model's names with the
        adapter merged in (train/lora.py merged_state_dict)."""
        if not (self.sharded or self.push_weights):
            return None
        if self.sharded:
            state = full_state_dict(self.model)
        else:
            state = {k: v.detach() for k, v in self.model.state_dict().items()}
        return merged_state_dict(state, self.cfg.model.lora) if lora_on(self.cfg) else state

    def _rows(self, traj: Trajectories, idx: torch.Tensor):
        dev = self.device()
        return traj.prompt_ids[idx].to(dev), traj.prompt_mask[idx].to(dev), traj.response_ids[idx].to(dev)

    @torch.no_grad()
    def logprobs(self, traj: Trajectories) -> torch.Tensor:
        """Per-token log-probs under the current weights (no grad), micro-batched: lp_old."""
        return batched_logprobs(self.model, traj, self.cfg.actor.ppo_micro_batch_size, self.cfg.rollout.temperature,
                                self.cfg.actor.logprobs_chunk_size)

    def needs_old_logprobs(self, num_rows: int) -> bool:
        """lp_old must be recomputed unless there is one mini-batch and one epoch (then lp_old = sg(lp))."""
        return self.cfg.actor.ppo_epochs > 1 or num_rows > self.mini_batch_rows

    def update(self, traj: Trajectories, advantages: torch.Tensor, old_logprobs: torch.Tensor | None = None,
               ref_logprobs: torch.Tensor | None = None, is_weights: torch.Tensor | None = None,
               loss_mask: torch.Tensor | None = None, teacher=None, step: int = 1) -> dict[str, float]:
        """One training step's policy update. Returns metrics averaged over optimizer steps.

        old_logprobs: lp_old (required unless one mini-batch and one epoch, where lp_old = sg(lp));
        ref_logprobs: for the KL loss; is_weights: rollout-correction weights; loss_mask: the response mask
        after rejection sampling / overlong filtering (defaults to traj.response_mask); teacher: the step's
        scirl.train.distill.TeacherBatch (RLSD / SDPO / OPD); step: the 1-indexed training step (RLSD decay)."""
        act = self.cfg.actor
        if old_logprobs is None and self.needs_old_logprobs(len(traj)):
            old_logprobs = self.logprobs(traj)
        if act.use_kl_loss and ref_logprobs is None:
            raise ValueError("actor.use_kl_loss needs ref_logprobs")
        mask = traj.response_mask if loss_mask is None else loss_mask
        sums: dict[str, float] = defaultdict(float)
        self.model.train()
        for _epoch in range(act.ppo_epochs):
            for mini in torch.arange(len(traj)).split(self.mini_batch_rows):
                self.optimizer.zero_grad(set_to_none=True)
                # normalise by the whole mini-batch of every rank (its tokens, or its non-empty sequences: a fully
                # masked row does not count), so summed micro-batch gradients equal one big batch in one process
                tokens = dist.all_reduce_sum(mask[mini].sum()).clamp(min=1.0)
                denom = global_denominator(act.loss_agg_mode, mask[mini])
                denom = None if denom is None else dist.all_reduce_sum(denom)
                step_loss = 0.0
                for micro in mini.split(act.ppo_micro_batch_size):
                    pick = lambda x: None if x is None else x[micro].to(self.device())  # noqa: E731
                    loss, metrics = self._micro_loss(traj, micro, pick(mask), pick(advantages), pick(old_logprobs),
                                                     pick(ref_logprobs), pick(is_weights), denom, teacher, step)
                    loss.backward()
                    step_loss += float(loss.detach())
                    weight = float(mask[micro].sum()) / float(tokens)
                    for key, value in metrics.items():
                        sums[key] += value if key in ("actor/pg_loss", "actor/kl_loss") else value * weight
                fault_point("actor:before_clip")  # gradients computed and reduced, optimizer step not taken
                grad_norm = _full(torch.nn.utils.clip_grad_norm_(self.params, act.grad_clip))  # over all shards
                step_loss = float(dist.all_reduce_sum(torch.tensor(step_loss, dtype=torch.float64)))
                if math.isfinite(step_loss) and torch.isfinite(grad_norm):  # the same decision on every rank
                    self.optimizer.step()
                    sums["actor/applied_updates"] += 1
                else:  # never apply a non-finite update; count it and move on
                    self.optimizer.zero_grad(set_to_none=True)
                    self.skipped_updates += 1
                    sums["actor/skipped_updates"] += 1
                sums["actor/grad_norm"] += float(grad_norm)
                sums["actor/optimizer_steps"] += 1
        steps = sums.pop("actor/optimizer_steps")
        counts = ("actor/skipped_updates", "actor/applied_updates")
        sums = _sum_over_ranks(sums, keep=("actor/grad_norm", *counts))
        metrics = {k: v / steps for k, v in sums.items() if k not in counts}
        metrics.update({k: sums.get(k, 0.0) for k in counts})
        metrics["actor/lr"] = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():  # torch warns when every optimizer step of this training step was skipped
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        return metrics

    def _micro_loss(self, traj, micro, mask, adv, old, ref, is_weights, denom, teacher=None,
                    step: int = 1) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch, already scaled by the mini-batch normaliser: PG (+ KL) (- entropy bonus)."""
        act, alg, temp = self.cfg.actor, self.cfg.algorithm, self.cfg.rollout.temperature
        rows = self._rows(traj, micro)
        with_entropy = "grad" if act.entropy_coeff else True
        dist = None
        if teacher is not None and needs_distributions(self.cfg):  # these losses read whole distributions
            logits = response_logits(self.model, *rows)
            logp, entropy = logprobs_from_logits(logits, rows[2], temp, with_entropy)
            dist = distill_terms(self.cfg, teacher, micro, logits, self.device())
        else:  # chunked lm_head when actor.logprobs_chunk_size says so: no [B, R, V] logits
            logp, entropy = sequence_logprobs(self.model, *rows, temp, with_entropy,
                                              chunk_size=act.logprobs_chunk_size)
        old = logp.detach() if old is None else old
        if act.policy_loss in ("sdpo", "opd_topk"):  # the teacher's distribution replaces the policy gradient
            per_token, pg_metrics = distribution_loss(self.cfg, dist, logp, old, mask, is_weights)
        else:
            extra = rlsd_kwargs(self.cfg, teacher, micro, self.device(), step) if act.policy_loss == "rlsd" else {}
            extra.update(self.loss_kwargs)
            per_token, pg_metrics = self.policy_loss(logp, old, adv, mask, alg.clip_ratio_low, alg.clip_ratio_high,
                                                     alg.clip_ratio_c, rollout_is_weights=is_weights, **extra)
        agg = dict(mode=act.loss_agg_mode, max_len=self.cfg.rollout.max_new_tokens, denominator=denom)
        pg_loss = aggregate_loss(per_token, mask, **agg)
        loss = pg_loss - act.entropy_coeff * aggregate_loss(entropy, mask, **agg)
        metrics = {"actor/pg_loss": float(pg_loss.detach()),
                   "actor/entropy": float(masked_mean(entropy.detach(), mask))}
        metrics.update({f"actor/{k}": float(v) for k, v in pg_metrics.items()})
        if dist is not None and self.cfg.distill.diagnostics_topk:
            metrics.update({k: float(v) for k, v in opd_diagnostics(dist.student.detach(), dist.teacher, mask,
                                                                      self.cfg.distill.diagnostics_topk).items()})
        if act.use_kl_loss:
            kl_loss = aggregate_loss(kl_penalty(logp, ref, act.kl_loss_type), mask, **agg)
            loss = loss + act.kl_loss_coef * kl_loss
            metrics["actor/kl_loss"] = float(kl_loss.detach())
        return loss, metrics
