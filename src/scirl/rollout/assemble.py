"""Turning finished samples from any engine (token ids, per-token log-probs, finish reason) into Trajectories with
the exact padding and masks the hf engine produces: prompts left-padded, responses right-padded, the EOS token
kept as the response's last trained token, `truncated` when the sample hit max_new_tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scirl.rollout.base import Trajectories


@dataclass
class Sample:
    """One finished sample of prompt `uid` (sample `index` of its group)."""

    prompt: list[int]
    uid: str
    index: int
    tokens: list[int]
    logprobs: list[float]
    truncated: bool  # stopped by max_new_tokens, not by an EOS / stop token


def to_trajectories(samples: list[Sample], pad_id: int, tokenizer) -> Trajectories:
    """Trajectories of `samples` in the given order."""
    width = max(len(s.prompt) for s in samples)
    rlen = max(1, max(len(s.tokens) for s in samples))
    b = len(samples)
    prompt_ids = torch.full((b, width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, width), dtype=torch.long)
    response_ids = torch.full((b, rlen), pad_id, dtype=torch.long)
    response_mask = torch.zeros((b, rlen))
    logprobs = torch.zeros((b, rlen))
    for i, s in enumerate(samples):
        if len(s.logprobs) != len(s.tokens):
            raise ValueError(f"sample {s.uid}/{s.index}: {len(s.logprobs)} log-probs for {len(s.tokens)} tokens")
        prompt_ids[i, width - len(s.prompt):] = torch.tensor(s.prompt, dtype=torch.long)
        prompt_mask[i, width - len(s.prompt):] = 1
        n = len(s.tokens)
        if n:
            response_ids[i, :n] = torch.tensor(s.tokens, dtype=torch.long)
            response_mask[i, :n] = 1.0
            logprobs[i, :n] = torch.tensor(s.logprobs, dtype=torch.float32)
    texts = tokenizer.batch_decode([s.tokens for s in samples], skip_special_tokens=True)
    return Trajectories(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids, response_mask=response_mask,
        rollout_logprobs=logprobs, uid=[s.uid for s in samples], sample_index=[s.index for s in samples],
        truncated=torch.tensor([s.truncated for s in samples], dtype=torch.bool), texts=texts, pad_id=pad_id,
    )


def eos_and_pad(tokenizer, generation_config) -> tuple[list[int], int]:
    """The ids that end a response (generation config's EOS, then the tokenizer's) and the padding id."""
    eos = getattr(generation_config, "eos_token_id", None)
    ids = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[0]
    return ids, pad
