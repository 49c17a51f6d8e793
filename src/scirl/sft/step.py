"""One SFT optimizer step and the validation loss: the data order, each rank's share of a batch, micro-batches
with gradient accumulation, and the token-mean loss over every assistant token of the step (all micro-batches and
all ranks together), so N ranks or M micro-batches give the gradient of one big batch in one process.

Data order: epoch e is a permutation of the conversations seeded by trainer.seed + e; step s (1-based) of the run
is batch (s-1) mod steps_per_epoch of epoch (s-1) // steps_per_epoch, the last batch of an epoch holding the rest.
It depends on the step alone, so a resumed run continues mid-epoch on exactly the conversations the uninterrupted
run would have seen. Rank r trains on positions r, r + world, ... of the batch. Under FSDP every forward is a
collective: a rank with fewer micro-batches runs extra forwards with a zero loss so that all run the same count.

A non-finite loss or gradient norm skips the optimizer step on every rank (counted), as the RL actor does."""

from __future__ import annotations

import math
import time
import warnings

import torch

from scirl import dist
from scirl.sft.data import Conversation
from scirl.sft.packing import make_batch, micro_batches, token_loss_sum
from scirl.train.fsdp import compute_device


def steps_per_epoch(num_conversations: int, batch_size: int) -> int:
    return math.ceil(num_conversations / batch_size)


def total_steps(num_conversations: int, sft) -> int:
    """sft.max_steps when > 0, else sft.epochs x steps per epoch."""
    return sft.max_steps if sft.max_steps > 0 else sft.epochs * steps_per_epoch(num_conversations, sft.batch_size)


def batch_indices(step: int, num_conversations: int, batch_size: int, seed: int) -> tuple[list[int], int]:
    """(the conversations of 1-based `step`, its 0-based epoch)."""
    per_epoch = steps_per_epoch(num_conversations, batch_size)
    epoch, k = divmod(step - 1, per_epoch)
    perm = torch.randperm(num_conversations, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return perm[k * batch_size:(k + 1) * batch_size], epoch


def rank_share(indices: list[int]) -> list[int]:
    return indices[dist.rank()::dist.world_size()]


def _groups(convs: list[Conversation], budget: int) -> tuple[list[list[Conversation]], int]:
    """This rank's micro-batches and the number every rank runs (the most any rank has)."""
    groups = [[convs[i] for i in g] for g in micro_batches([len(c) for c in convs], budget)]
    count = len(groups)
    if dist.world_size() > 1:
        count = int(dist.all_reduce_max(torch.tensor(count)).item())
    return groups, count


def _forward_all(model, convs: list[Conversation], filler: Conversation, sft, chunk_size: int, scale, backward: bool):
    """Loss sums of every micro-batch (backward of sum * scale when asked); the extra zero-loss forwards included.
    Returns (loss sum, tokens, sequence tokens) of this rank's real micro-batches."""
    device = compute_device(model)
    groups, count = _groups(convs, sft.micro_batch_tokens)
    loss_sum, tokens, seq_tokens = 0.0, 0, 0
    for k in range(count):
        real = k < len(groups)
        batch = make_batch(groups[k] if real else [filler], sft.packing, 0).to(device)
        loss, n = token_loss_sum(model, batch, chunk_size)
        if backward:
            (loss * (scale if real else 0.0)).backward()
        if real:
            loss_sum += float(loss.detach())
            tokens += n
            seq_tokens += int(batch.input_ids.numel() if sft.packing else batch.attention_mask.sum())
    return loss_sum, tokens, seq_tokens


def train_step(model, optimizer, scheduler, params, convs: list[Conversation], filler: Conversation, cfg
               ) -> dict[str, float]:
    """One optimizer step on this rank's conversations `convs` (`filler`: any conversation, for the extra
    forwards). Returns the step's metrics, the same on every rank."""
    t0 = time.perf_counter()
    sft, act = cfg.sft, cfg.actor
    mine = sum(sum(c.mask[1:]) for c in convs)  # labelled tokens: a target is the next token
    total = float(dist.all_reduce_sum(torch.tensor(float(mine), dtype=torch.float64)).item())
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum, tokens, seq_tokens = _forward_all(model, convs, filler, sft, act.logprobs_chunk_size,
                                                1.0 / max(total, 1.0), backward=True)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, act.grad_clip)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    sums = dist.all_reduce_sum(torch.tensor([loss_sum, float(seq_tokens)], dtype=torch.float64))
    loss = float(sums[0]) / max(total, 1.0)
    skipped = 0
    if math.isfinite(loss) and bool(torch.isfinite(grad_norm)):  # the same decision on every rank
        optimizer.step()
    else:  # never apply a non-finite update; count it and move on
        optimizer.zero_grad(set_to_none=True)
        skipped = 1
    lr = optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():  # torch warns when the optimizer step was skipped
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()
    seconds = time.perf_counter() - t0
    return {"sft/loss": loss, "sft/grad_norm": float(grad_norm), "sft/lr": lr, "sft/skipped": float(skipped),
            "sft/assistant_tokens": total, "sft/tokens": float(sums[1]), "sft/conversations": float(
                dist.all_reduce_sum(torch.tensor(float(len(convs)))).item()),
            "timing/step": seconds, "perf/tokens_per_s": float(sums[1]) / seconds}


@torch.no_grad()
def eval_loss(model, convs: list[Conversation], cfg) -> dict[str, float]:
    """Token-mean loss over the assistant tokens of `convs` (all ranks' shares together), no gradient."""
    model.eval()
    mine = convs[dist.rank()::dist.world_size()]
    loss_sum, tokens, _ = _forward_all(model, mine, convs[0], cfg.sft, cfg.actor.logprobs_chunk_size, 1.0, False)
    sums = dist.all_reduce_sum(torch.tensor([loss_sum, float(tokens)], dtype=torch.float64))
    return {"val/loss": float(sums[0]) / max(float(sums[1]), 1.0), "val/assistant_tokens": float(sums[1])}
