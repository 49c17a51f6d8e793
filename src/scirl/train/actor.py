"""The actor: owns the policy module, AdamW and the LR schedule; computes per-token log-probs and applies
PPO-style updates (mini-batches, micro-batches with gradient accumulation, grad clipping, non-finite skip)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict

import torch

from scirl.algos import aggregate_loss, get_policy_loss, global_denominator, kl_penalty, masked_mean, opd_diagnostics
from scirl.config import Config
from scirl.rollout.base import Trajectories
from scirl.train.distill_losses import distill_terms, distribution_loss, rlsd_kwargs


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


def response_logits(model, prompt_ids, prompt_mask, response_ids, shared_prefix: bool = True) -> torch.Tensor:
    """Float logits [B, R, V] predicting each response token from (prompt, earlier response tokens).

    With `shared_prefix`, rows that share a prompt (the n samples of a GRPO group) run the prompt through the
    model once; its KV cache is fanned out to every row and gradients flow back through it. Same math as the
    plain path (a test checks log-probs and gradients), about half the tokens when prompts are long.
    """
    keys = torch.cat([prompt_ids, prompt_mask], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    if shared_prefix and len(unique) < len(keys):
        logits = _shared_prefix_logits(model, unique[:, : prompt_ids.shape[1]], unique[:, prompt_ids.shape[1] :],
                                       inverse, prompt_mask, response_ids)
    else:
        input_ids = torch.cat([prompt_ids, response_ids], dim=1)
        attention = torch.cat([prompt_mask, torch.ones_like(response_ids)], dim=1)
        position_ids = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at the first real token
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=False,
                       logits_to_keep=response_ids.shape[1] + 1).logits[:, :-1]
    return logits.float()


def response_log_softmax(model, prompt_ids, prompt_mask, response_ids, temperature: float) -> torch.Tensor:
    """log pi(. | prefix) over the whole vocabulary at `temperature` for each response position: [B, R, V]."""
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids)
    if temperature > 0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


def logprobs_from_logits(logits, response_ids, temperature: float, with_entropy: bool | str):
    """(log-prob of each response token, entropy or None) from response-position logits [B, R, V].

    with_entropy="grad" keeps the entropy in the graph (entropy bonus); True computes it as a detached metric."""
    if temperature > 0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = torch.gather(logits, 2, response_ids.unsqueeze(-1)).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(with_entropy == "grad" and torch.is_grad_enabled()):
            entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, entropy


def sequence_logprobs(model, prompt_ids, prompt_mask, response_ids, temperature: float, with_entropy: bool | str,
                      shared_prefix: bool = True):
    """log pi(response token | prefix) at `temperature` for each response position, and optionally the entropy
    (see response_logits for the shared-prefix forward)."""
    logits = response_logits(model, prompt_ids, prompt_mask, response_ids, shared_prefix)
    return logprobs_from_logits(logits, response_ids, temperature, with_entropy)


def _shared_prefix_logits(model, u_ids, u_mask, inverse, prompt_mask, response_ids):
    """Logits for every response position, computing each distinct prompt once (see sequence_logprobs)."""
    u_pos = (u_mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=u_ids, attention_mask=u_mask, position_ids=u_pos, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1][inverse].unsqueeze(1)  # predicts response token 0
    if response_ids.shape[1] == 1:
        return first
    cache = out.past_key_values
    cache.reorder_cache(inverse)  # index_select: differentiable fan-out of the prompt's keys/values to every row
    steps = response_ids.shape[1] - 1
    attention = torch.cat([prompt_mask, torch.ones_like(response_ids[:, :steps])], dim=1)
    position_ids = prompt_mask.sum(1, keepdim=True) + torch.arange(steps, device=prompt_mask.device)
    rest = model(input_ids=response_ids[:, :steps], attention_mask=attention, position_ids=position_ids,
                 past_key_values=cache, use_cache=True).logits
    return torch.cat([first, rest], dim=1)


@torch.no_grad()
def batched_logprobs(model, traj: Trajectories, micro_batch_size: int, temperature: float) -> torch.Tensor:
    """Per-token log-probs of `traj`'s responses under `model`, micro-batched, on CPU, zero on padding."""
    device = next(model.parameters()).device
    chunks = []
    for idx in torch.arange(len(traj)).split(micro_batch_size):
        rows = (traj.prompt_ids[idx].to(device), traj.prompt_mask[idx].to(device), traj.response_ids[idx].to(device))
        chunks.append(sequence_logprobs(model, *rows, temperature, False)[0].cpu())
    return torch.cat(chunks) * traj.response_mask


class Actor:
    def __init__(self, model, cfg: Config):
        self.model = model
        self.cfg = cfg
        act = cfg.actor
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=act.lr, betas=tuple(act.betas), weight_decay=act.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(act.warmup_steps, cfg.trainer.total_steps, act.lr_scheduler, act.min_lr_ratio)
        )
        self.policy_loss = get_policy_loss(act.policy_loss)
        # the loss's own hyperparameters (SAPO's taus, Clip-Cov's window, ...) from actor.policy_loss_kwargs
        names = getattr(self.policy_loss, "config_kwargs", ())
        self.loss_kwargs = {k: getattr(act.policy_loss_kwargs, k) for k in names}
        self.skipped_updates = 0  # optimizer steps skipped for a non-finite loss or grad norm (whole run)

    def device(self):
        return next(self.model.parameters()).device

    def _rows(self, traj: Trajectories, idx: torch.Tensor):
        dev = self.device()
        return traj.prompt_ids[idx].to(dev), traj.prompt_mask[idx].to(dev), traj.response_ids[idx].to(dev)

    @torch.no_grad()
    def logprobs(self, traj: Trajectories) -> torch.Tensor:
        """Per-token log-probs under the current weights (no grad), micro-batched: lp_old."""
        return batched_logprobs(self.model, traj, self.cfg.actor.ppo_micro_batch_size, self.cfg.rollout.temperature)

    def needs_old_logprobs(self, num_rows: int) -> bool:
        """lp_old must be recomputed unless there is one mini-batch and one epoch (then lp_old = sg(lp))."""
        return self.cfg.actor.ppo_epochs > 1 or num_rows > self.cfg.actor.ppo_mini_batch_size * self.cfg.rollout.n

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
            for mini in torch.arange(len(traj)).split(act.ppo_mini_batch_size * self.cfg.rollout.n):
                self.optimizer.zero_grad(set_to_none=True)
                tokens = mask[mini].sum().clamp(min=1.0)
                # normalise by the whole mini-batch (its tokens, or its non-empty sequences: a fully masked row
                # does not count), so summed micro-batch gradients equal one big batch
                denom = global_denominator(act.loss_agg_mode, mask[mini])
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
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, act.grad_clip)
                if math.isfinite(step_loss) and torch.isfinite(grad_norm):
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
        logits = response_logits(self.model, *rows)
        logp, entropy = logprobs_from_logits(logits, rows[2], temp, "grad" if act.entropy_coeff else True)
        old = logp.detach() if old is None else old
        dist = distill_terms(self.cfg, teacher, micro, logits, self.device()) if teacher is not None else None
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
