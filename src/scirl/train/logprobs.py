"""Per-token log-probs (and entropies) of response tokens under a causal LM, with or without full logits.

Two paths with the same numbers (a test checks values and gradients to 1e-5):
- full logits: the model's forward returns [B, R, V] logits; needed where a loss reads whole distributions
  (SDPO, top-k OPD, the OPD diagnostics: train/distill_losses.py) and cheapest at small vocabularies;
- chunked: the model's lm_head passes its input through (PassthroughLinear), so the same forward (HF code, FSDP
  hooks and all) returns the final hidden states [B, R, H]; log-prob and entropy are then computed from
  lm_head.weight `chunk_size` tokens at a time, and the backward recomputes each chunk's logits, so at most one
  chunk's [chunk, V] logits are alive. At Qwen3's vocabulary (151,669) full fp32 logits of one 8k-token response
  are ~5 GB; here they are chunk x V x 4 bytes (<= 512 MiB with the automatic chunk size).

The chunked math is plain torch, not a fused kernel (liger-kernel's fused linear cross-entropy is Triton: GPU
only, and it returns a loss, not per-token log-probs and entropies that the policy losses need).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from scirl.rollout.base import Trajectories
from scirl.train.fsdp import compute_device, is_checkpointing, same_on_all_ranks


class PassthroughLinear(nn.Linear):
    """An nn.Linear lm_head that returns its input (the final hidden states) while `passthrough` is set.

    The head's class is swapped in place (`hidden_states_out`): same parameters, names and weight tying, so
    state_dict / save_pretrained are unchanged, and the flag is off outside the context (generate sees logits)."""

    passthrough = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.passthrough else super().forward(x)


# configs whose logits are not just lm_head(h): their models scale or soft-cap after the head (Gemma2, Cohere, Granite)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def chunkable(model) -> bool:
    """Whether the model's logits are lm_head(hidden) with a plain nn.Linear head (the chunked path's premise)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if type(head) not in (nn.Linear, PassthroughLinear):
        return False
    config = getattr(model, "config", None)
    return not any(getattr(config, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS)


@contextmanager
def hidden_states_out(model):
    """Within the context the model's `.logits` are its final hidden states (the lm_head returns its input)."""
    head = model.get_output_embeddings()
    if type(head) is nn.Linear:
        head.__class__ = PassthroughLinear
    head.passthrough = True
    try:
        yield head
    finally:
        del head.passthrough  # back to the class default (False)


# actor.logprobs_chunk_size 0 (auto): chunks of at most 2**27 logits, one fp32 [chunk, V] block <= 512 MiB:
# 884 tokens at Qwen3's 151,669 vocabulary, where a micro-batch of 4 x 4096 tokens (forward + backward) peaks at
# 2.2 GiB against ~48 GiB with full logits (bench/logprob_memory.py); the bundled tiny model (vocab 517) would
# need 259,000 tokens in one
# micro-batch to chunk, so it keeps the full path that is cheapest there (per-chunk overhead, no memory to save).
AUTO_CHUNK_LOGITS = 2**27


def chunk_tokens(model, chunk_size: int) -> int:
    """Response tokens per chunk for `model` (actor.logprobs_chunk_size; 0: auto), or 0 when its head cannot be
    chunked (then always the full path)."""
    if not chunkable(model):
        return 0
    return chunk_size if chunk_size > 0 else max(1, AUTO_CHUNK_LOGITS // model.get_output_embeddings().out_features)


def use_chunks(model, num_tokens: int, chunk_size: int) -> int:
    """Tokens per chunk when the chunked path runs, else 0: it runs when the micro-batch has more response tokens
    than one chunk (else one chunk is the full logits and the full path is cheaper)."""
    chunk = chunk_tokens(model, chunk_size)
    return chunk if num_tokens > chunk > 0 else 0


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float):
    """fp32 logits of one chunk at `temperature`, as the full path computes them (head in the model's dtype)."""
    z = nn.functional.linear(hidden, weight, bias).float()
    return z / temperature if temperature > 0 else z


class _ChunkedLogprobs(torch.autograd.Function):
    """(log p(target), entropy) per token from hidden [N, H] and the head, chunk by chunk.

    Hand-written backward (not torch.utils.checkpoint per chunk): it recomputes one chunk's logits z and uses
    d logp / dz = onehot - p and d H / dz = -p (log p + H), holding two [chunk, V] fp32 buffers instead of the
    ~5 that autograd would save for log_softmax + gather + softmax. Both scaled by 1/T for temperature."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        for s in range(0, n, chunk_size):
            e = min(n, s + chunk_size)
            z = _chunk_logits(hidden[s:e], weight, bias, temperature)
            lse[s:e] = torch.logsumexp(z, dim=-1)
            logp[s:e] = z.gather(1, targets[s:e, None]).squeeze(1) - lse[s:e]
            if with_entropy:  # H = lse - sum p z, as the full path sums it (in place: no third [chunk, V] block)
                entropy[s:e] = lse[s:e] - torch.softmax(z, dim=-1).mul_(z).sum(-1)
            del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)
        if with_entropy and with_entropy != "grad":
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n = hidden.shape[0]
        g_logp = torch.zeros_like(lse) if g_logp is None else g_logp.float()
        grad_h = torch.empty_like(hidden) if need_h else None
        # accumulate the head's gradient over chunks in fp32 (bf16 partial sums would lose precision)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        scale = 1.0 / temperature if temperature > 0 else 1.0
        for s in range(0, n, chunk_size):
            e = min(n, s + chunk_size)
            log_p = _chunk_logits(hidden[s:e], weight, bias, temperature).sub_(lse[s:e, None])
            grad_z = log_p.exp()  # p
            if g_entropy is not None:  # -p * (g_logp + g_H * (log p + H))
                log_p.add_(entropy[s:e, None]).mul_(g_entropy[s:e, None].float()).add_(g_logp[s:e, None])
                grad_z.mul_(log_p).neg_()
            else:
                grad_z.mul_(-g_logp[s:e, None])
            del log_p
            rows = torch.arange(e - s, device=grad_z.device)
            grad_z[rows, targets[s:e]] += g_logp[s:e]
            grad_z.mul_(scale)  # d z / d raw logits = 1 / T
            if need_b:
                grad_b += grad_z.sum(0)
            grad_z = grad_z.to(weight.dtype)
            if need_h:
                grad_h[s:e] = grad_z @ weight
            if need_w:
                if hidden.dtype == torch.float32:
                    grad_w.addmm_(grad_z.t(), hidden[s:e])  # in place: no [V, H] temporary per chunk
                else:
                    grad_w += grad_z.t() @ hidden[s:e]
            del grad_z
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None, None, None


def chunked_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                     temperature: float, with_entropy: bool | str, chunk_size: int):
    """(log-prob of each target, entropy or None), both [B, R] fp32, from hidden states [B, R, H] and the lm_head's
    weight [V, H] (and bias), never holding more than one [chunk_size, V] block of logits (also in backward)."""
    b, r, h = hidden.shape
    ent_mode = with_entropy if with_entropy != "grad" or torch.is_grad_enabled() else True
    logp, entropy = _ChunkedLogprobs.apply(hidden.reshape(b * r, h), weight, bias, targets.reshape(b * r),
                                           float(temperature), int(chunk_size), ent_mode)
    return logp.view(b, r), None if entropy is None else entropy.view(b, r)


def _response_outputs(model, prompt_ids, prompt_mask, response_ids, shared_prefix: bool) -> torch.Tensor:
    """The model's `.logits` at each response position, [B, R, *]: logits, or hidden states under hidden_states_out.

    With `shared_prefix`, rows that share a prompt (the n samples of a GRPO group) run the prompt through the
    model once; its KV cache is fanned out to every row and gradients flow back through it. Same math as the
    plain path (a test checks log-probs and gradients), about half the tokens when prompts are long.
    """
    keys = torch.cat([prompt_ids, prompt_mask], dim=1)
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    # gradient checkpointing drops the KV cache in training mode; a sharded model must run as many forwards on
    # every rank (each forward is a collective), so the choice is agreed across ranks
    if same_on_all_ranks(model, shared_prefix and len(unique) < len(keys) and not is_checkpointing(model)):
        return _shared_prefix_outputs(model, unique[:, : prompt_ids.shape[1]], unique[:, prompt_ids.shape[1]:],
                                      inverse, prompt_mask, response_ids)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention = torch.cat([prompt_mask, torch.ones_like(response_ids)], dim=1)
    position_ids = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at the first real token
    return model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=False,
                 logits_to_keep=response_ids.shape[1] + 1).logits[:, :-1]


def _shared_prefix_outputs(model, u_ids, u_mask, inverse, prompt_mask, response_ids):
    """`.logits` for every response position, computing each distinct prompt once (see _response_outputs)."""
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


def response_logits(model, prompt_ids, prompt_mask, response_ids, shared_prefix: bool = True) -> torch.Tensor:
    """Float logits [B, R, V] predicting each response token from (prompt, earlier response tokens)."""
    return _response_outputs(model, prompt_ids, prompt_mask, response_ids, shared_prefix).float()


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
                      shared_prefix: bool = True, chunk_size: int = 0):
    """log pi(response token | prefix) at `temperature` for each response position, and optionally the entropy
    (see _response_outputs for the shared-prefix forward). `chunk_size`: actor.logprobs_chunk_size (0: auto); the
    chunked path (module docstring) runs when the micro-batch has more response tokens than one chunk."""
    chunk = use_chunks(model, response_ids.numel(), chunk_size)
    if not chunk:
        logits = response_logits(model, prompt_ids, prompt_mask, response_ids, shared_prefix)
        return logprobs_from_logits(logits, response_ids, temperature, with_entropy)
    with hidden_states_out(model) as head:
        hidden = _response_outputs(model, prompt_ids, prompt_mask, response_ids, shared_prefix)
    # read the head's weight after the forward: under FSDP2 the root's parameters are unsharded there
    return chunked_logprobs(hidden, head.weight, head.bias, response_ids, temperature, with_entropy, chunk)


@torch.no_grad()
def batched_logprobs(model, traj: Trajectories, micro_batch_size: int, temperature: float,
                     chunk_size: int = 0) -> torch.Tensor:
    """Per-token log-probs of `traj`'s responses under `model`, micro-batched, on CPU, zero on padding."""
    device = compute_device(model)
    chunks = []
    for idx in torch.arange(len(traj)).split(micro_batch_size):
        rows = (traj.prompt_ids[idx].to(device), traj.prompt_mask[idx].to(device), traj.response_ids[idx].to(device))
        chunks.append(sequence_logprobs(model, *rows, temperature, False, chunk_size=chunk_size)[0].cpu())
    return torch.cat(chunks) * traj.response_mask
