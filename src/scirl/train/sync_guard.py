"""The weight-sync guard: a rollout engine that keeps weights of its own (vLLM, a server, the rollout copy under
FSDP) must sample from the weights the trainer just updated. Every `rollout.sync_check_freq` steps (and once
before the first step) the engine and the trainer score one fixed probe sequence; the mean |log-prob difference|
is logged as `rollout/sync_logprob_diff`, and above `rollout.sync_check_tol` the run stops with an error naming
both numbers. A push that was skipped, went to the wrong module or was undone (vLLM's `reload_weights` reloads the
checkpoint from disk) shows up here instead of as a silently off-policy run."""

from __future__ import annotations

import torch

from scirl.errors import ScirlError
from scirl.rollout.base import Trajectories
from scirl.train.logprobs import batched_logprobs

PROBE_TEXT = " Let me think step by step. The answer is \\boxed{42}."


def probe_sequence(tokenizer, prompt_ids: list[int], max_len: int = 64) -> tuple[list[int], int]:
    """The probe: the first training prompt (its last 32 tokens) and a fixed response, and the prompt's length."""
    response = tokenizer.encode(PROBE_TEXT, add_special_tokens=False)[: max_len // 2]
    prompt = list(prompt_ids)[-(max_len - len(response)):]
    return prompt + response, len(prompt)


class SyncGuard:
    """Checks engine-vs-trainer log-probs of the probe (every rank calls `check`: the trainer side is a forward of
    the possibly sharded policy)."""

    def __init__(self, engine, actor, tokenizer, prompt_ids: list[int], freq: int, tol: float):
        self.engine, self.actor, self.freq, self.tol = engine, actor, freq, tol
        self.ids, self.prompt_len = probe_sequence(tokenizer, prompt_ids)
        self.active = freq > 0 and not engine.shares_module  # the trainer's own module cannot go stale

    def due(self, step: int) -> bool:
        return self.active and step % self.freq == 0

    def diff(self) -> tuple[float, float]:
        """(mean, max) |engine - trainer| log-prob over the probe's response tokens."""
        # at temperature 1: a check of the weights (vLLM's prompt log-probs skip the sampling temperature)
        engine_lp = self.engine.sequence_logprobs(self.ids, self.prompt_len, 1.0).float()
        n = len(self.ids) - self.prompt_len
        traj = Trajectories(
            prompt_ids=torch.tensor([self.ids[: self.prompt_len]]), prompt_mask=torch.ones(1, self.prompt_len,
                                                                                           dtype=torch.long),
            response_ids=torch.tensor([self.ids[self.prompt_len:]]), response_mask=torch.ones(1, n),
            rollout_logprobs=torch.zeros(1, n), uid=["probe"], sample_index=[0],
            truncated=torch.zeros(1, dtype=torch.bool))
        trainer_lp = batched_logprobs(self.actor.model, traj, 1, 1.0, self.actor.cfg.actor.logprobs_chunk_size)
        trainer_lp = trainer_lp[0].float().cpu()
        delta = (engine_lp - trainer_lp).abs()
        return float(delta.mean()), float(delta.max())

    def check(self, step: int) -> dict[str, float]:
        """{} when not due; else the metrics, or ScirlError when the engine's weights are not the trainer's."""
        if not self.due(step):
            return {}
        mean, worst = self.diff()
        if not mean <= self.tol:  # NaN fails too
            raise ScirlError(
                f"rollout weight sync check failed after step {step}: the {type(self.engine).__name__} scores the "
                f"probe sequence {mean:.3g} nats/token (max {worst:.3g}) away from the trainer, above "
                f"rollout.sync_check_tol={self.tol:g}: the engine is not sampling from the trained weights")
        return {"rollout/sync_logprob_diff": mean, "rollout/sync_logprob_diff_max": worst}
