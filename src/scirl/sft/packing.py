"""Micro-batches of conversations and their summed token loss: padding-free packing (sft.packing=true) or padded
rows (false), with the same numbers either way.

- `micro_batches(lengths, budget)`: consecutive conversations grouped greedily, at most `budget` tokens a group
  (sft.micro_batch_tokens; a conversation is never split: sft.max_length <= budget is checked at config load).
- packed: a group is ONE row, the conversations back to back, `position_ids` restarting at 0 at each one and no
  attention mask: transformers then finds the sequences from the position_ids (masking_utils
  find_packed_sequence_indices; only without a KV cache, hence use_cache=False) and builds a block-diagonal causal
  mask (sdpa, eager and flash-attention alike), so no token attends across conversations and none is padding.
- padded: a group is one row per conversation, right-padded to the longest, with an attention mask.
- `token_loss_sum(model, batch, chunk_size)`: the sum over labelled tokens of -log p(token | prefix) and their
  count. Only the labelled positions go through the lm_head; with many of them at a large vocabulary the head runs
  in chunks (train/logprobs.py), so a micro-batch never holds [tokens, vocab] logits.
Each token's target is the next token of its own conversation; a conversation's last token has none."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scirl.sft.data import Conversation
from scirl.train.logprobs import chunked_logprobs, hidden_states_out, use_chunks

IGNORE = -100


def micro_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Positions 0..len-1 grouped in order: a new group starts when the next one would pass `budget` tokens."""
    groups: list[list[int]] = []
    used = budget + 1
    for i, n in enumerate(lengths):
        if used + n > budget:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


def labels_of(conv: Conversation) -> list[int]:
    """Next-token targets: ids[t+1] where the mask of t+1 is 1, else IGNORE (the last position always)."""
    ids, mask = conv.ids, conv.mask
    return [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [rows, T]
    position_ids: torch.Tensor  # [rows, T]
    labels: torch.Tensor  # [rows, T], IGNORE where no loss
    attention_mask: torch.Tensor | None  # None when packed

    @property
    def num_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def to(self, device) -> "MicroBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return MicroBatch(move(self.input_ids), move(self.position_ids), move(self.labels), move(self.attention_mask))


def packed_batch(convs: list[Conversation]) -> MicroBatch:
    ids = [t for c in convs for t in c.ids]
    pos = [p for c in convs for p in range(len(c))]
    labels = [t for c in convs for t in labels_of(c)]
    row = lambda x: torch.tensor([x], dtype=torch.long)  # noqa: E731
    return MicroBatch(row(ids), row(pos), row(labels), None)


def padded_batch(convs: list[Conversation], pad_id: int) -> MicroBatch:
    width = max(len(c) for c in convs)
    ids = torch.full((len(convs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(convs), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(convs), width), dtype=torch.long)
    for r, c in enumerate(convs):
        ids[r, : len(c)] = torch.tensor(c.ids)
        labels[r, : len(c)] = torch.tensor(labels_of(c))
        attn[r, : len(c)] = 1
    pos = torch.arange(width).expand(len(convs), width).clone()
    return MicroBatch(ids, pos, labels, attn)


def make_batch(convs: list[Conversation], packing: bool, pad_id: int) -> MicroBatch:
    return packed_batch(convs) if packing else padded_batch(convs, pad_id)


def token_loss_sum(model, batch: MicroBatch, chunk_size: int = 0) -> tuple[torch.Tensor, int]:
    """(sum of -log p over the labelled tokens, fp32 scalar with grad; their count)."""
    sel = batch.labels != IGNORE
    targets = batch.labels[sel]
    n = int(targets.numel())
    # use_cache=False matters: with a KV cache transformers does not look for packed sequences in position_ids
    kwargs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                  use_cache=False)
    chunk = use_chunks(model, n, chunk_size)
    if not chunk:
        logits = model(**kwargs).logits[sel].float()
        logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
        return -logp.sum(), n
    with hidden_states_out(model) as head:
        hidden = model(**kwargs).logits[sel]
    # the head's weight read after the forward: under FSDP2 the root's parameters are unsharded there
    logp, _ = chunked_logprobs(hidden[None], head.weight, head.bias, targets[None], 1.0, False, chunk)
    return -logp.sum(), n
