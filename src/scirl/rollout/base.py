"""The rollout interface: Trajectories (the one data type of the step), sampling parameters, the engine protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64


@dataclass
class Trajectories:
    """Right-padded token tensors plus per-row metadata. Row i is sample `sample_index[i]` of prompt `uid[i]`.

    prompt_ids are left-padded (prompt_mask marks real tokens) so that prompt+response is contiguous;
    response_ids are right-padded; response_mask is 1 on trained tokens (0 on padding / tool output).
    """

    prompt_ids: torch.Tensor  # [B, P] long, left-padded
    prompt_mask: torch.Tensor  # [B, P] long
    response_ids: torch.Tensor  # [B, R] long, right-padded
    response_mask: torch.Tensor  # [B, R] float
    rollout_logprobs: torch.Tensor  # [B, R] float, log pi_rollout(token) at the sampling temperature
    uid: list[str]
    sample_index: list[int]
    truncated: torch.Tensor  # [B] bool: hit max_new_tokens without EOS
    texts: list[str] = field(default_factory=list)  # decoded responses (for rewards/logging only)
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Trajectories: ...

    def update_weights(self, state_dict: dict[str, torch.Tensor]) -> None: ...
