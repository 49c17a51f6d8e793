"""The rollout interface: Trajectories (the one data type of the step), sampling parameters, the engine protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch
import torch.nn.functional as F


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
    pad_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def select(self, rows: list[int]) -> "Trajectories":
        """The given rows, in that order (same padding widths)."""
        idx = torch.tensor(rows, dtype=torch.long)
        return Trajectories(
            prompt_ids=self.prompt_ids[idx], prompt_mask=self.prompt_mask[idx], response_ids=self.response_ids[idx],
            response_mask=self.response_mask[idx], rollout_logprobs=self.rollout_logprobs[idx],
            uid=[self.uid[i] for i in rows], sample_index=[self.sample_index[i] for i in rows],
            truncated=self.truncated[idx], texts=[self.texts[i] for i in rows] if self.texts else [],
            pad_id=self.pad_id, extra={k: _pick(v, rows, idx) for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(parts: list["Trajectories"]) -> "Trajectories":
        """Join batches, re-padding prompts on the left and responses on the right to a common width."""
        if len(parts) == 1:
            return parts[0]
        pad_id = parts[0].pad_id
        pw = max(p.prompt_ids.shape[1] for p in parts)
        rw = max(p.response_ids.shape[1] for p in parts)

        def left(x, value):
            return F.pad(x, (pw - x.shape[1], 0), value=value)

        def right(x, value):
            return F.pad(x, (0, rw - x.shape[1]), value=value)

        return Trajectories(
            prompt_ids=torch.cat([left(p.prompt_ids, pad_id) for p in parts]),
            prompt_mask=torch.cat([left(p.prompt_mask, 0) for p in parts]),
            response_ids=torch.cat([right(p.response_ids, pad_id) for p in parts]),
            response_mask=torch.cat([right(p.response_mask, 0.0) for p in parts]),
            rollout_logprobs=torch.cat([right(p.rollout_logprobs, 0.0) for p in parts]),
            uid=[u for p in parts for u in p.uid],
            sample_index=[s for p in parts for s in p.sample_index],
            truncated=torch.cat([p.truncated for p in parts]),
            texts=[t for p in parts for t in p.texts],
            pad_id=pad_id, extra=_join_extra(parts),
        )

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)


def _pick(value: Any, rows: list[int], idx: torch.Tensor) -> Any:
    """Rows of one per-row `extra` value (a tensor or a list; anything else is kept as is)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value[idx]
    if isinstance(value, list):
        return [value[i] for i in rows]
    return value


def _join_extra(parts: list["Trajectories"]) -> dict[str, Any]:
    """The per-row `extra` values every part has (1-D tensors or lists), joined in order; others are dropped."""
    out: dict[str, Any] = {}
    for key in set.intersection(*(set(p.extra) for p in parts)):
        values = [p.extra[key] for p in parts]
        if all(isinstance(v, torch.Tensor) and v.dim() == 1 for v in values):
            out[key] = torch.cat(values)
        elif all(isinstance(v, list) for v in values):
            out[key] = [x for v in values for x in v]
    return out


class RolloutEngine(Protocol):
    """What the step, the run loop and the evaluator ask of an engine (hf, vllm, openai: scirl.rollout.make_engine).

    `shares_module`: the engine samples from the trainer's own module (one-process hf), so there are no weights to
    push and nothing can go stale. Otherwise `update_weights` gets the full state dict (HF names) after every
    optimizer step, and `sequence_logprobs` lets the run loop check that the push landed (train/sync_guard.py)."""

    shares_module: bool

    def generate(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Trajectories: ...

    def stream(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Iterator[Trajectories]:
        """The same rows as `generate`, yielded as they finish, whole prompt groups (all n samples of a prompt) per
        chunk, chunks in any order: the caller scores a chunk while the engine still generates the next."""
        ...

    def update_weights(self, state_dict: dict[str, torch.Tensor] | None) -> None: ...

    def sequence_logprobs(self, token_ids: list[int], prompt_len: int, temperature: float) -> torch.Tensor:
        """[len(token_ids) - prompt_len] log pi(token_t | tokens_<t) at `temperature`, as the engine samples."""
        ...

    def close(self) -> None: ...
