"""Models that only score tokens: the frozen reference policy (for KL terms). They never hold optimizer state."""

from __future__ import annotations

import torch

from scirl.rollout.base import Trajectories
from scirl.train.actor import batched_logprobs
from scirl.train.model_loading import load_model_and_tokenizer


class FrozenReference:
    """The initial policy, frozen: per-token log-probs of given (prompt, response) pairs."""

    def __init__(self, path: str, dtype: str, device: str, attn: str, micro_batch_size: int, temperature: float):
        self.model, _ = load_model_and_tokenizer(path, dtype, device, attn)
        self.model.eval().requires_grad_(False)
        self.micro_batch_size = micro_batch_size
        self.temperature = temperature

    @torch.no_grad()
    def logprobs(self, traj: Trajectories) -> torch.Tensor:
        return batched_logprobs(self.model, traj, self.micro_batch_size, self.temperature)
