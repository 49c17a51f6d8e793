"""The `hf` rollout engine: transformers `generate` (KV cache, temperature / top-p sampling, n samples per prompt),
returning token ids and per-token rollout log-probs. Token in, token out: nothing is re-tokenized downstream."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList

from scirl.rollout.assemble import eos_and_pad
from scirl.rollout.base import SamplingParams, Trajectories


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


class HFRolloutEngine:
    """Samples with `model.generate` on a module of its own process.

    One process: the actor's own module (colocated, nothing to copy). Under FSDP: a full-weight rollout copy on
    each rank, loaded by `update_weights` after each optimizer step, so generating token by token never
    all-gathers sharded layers (and ranks that stop after different numbers of tokens never wait for each other).
    """

    def __init__(self, model, tokenizer, max_batch_size: int = 1024, shares_module: bool = True):
        self.model = model
        self.shares_module = shares_module  # the trainer's own module: nothing to push, nothing can go stale
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.eos_ids, self.pad_id = eos_and_pad(tokenizer, model.generation_config)

    @torch.no_grad()
    def update_weights(self, state_dict: dict[str, torch.Tensor] | None) -> None:
        """THE weight-sync point: load the trained weights (full tensors, HF names) into the rollout module, in
        place. None, or an engine that shares the trainer's module: nothing to sync."""
        if state_dict is None or self.shares_module:
            return
        params = dict(self.model.named_parameters())
        missing = sorted(set(params) - set(state_dict))
        if missing:
            raise ValueError(f"update_weights: no weights for {missing[:3]} (of {len(missing)})")
        for name, p in params.items():  # tied weights are one parameter: copied once
            p.copy_(state_dict[name].to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def sequence_logprobs(self, token_ids: list[int], prompt_len: int, temperature: float) -> torch.Tensor:
        """log pi(token_t | tokens_<t) at `temperature` for the tokens after `prompt_len` (the sync guard's probe)."""
        from scirl.train.logprobs import sequence_logprobs

        device = next(self.model.parameters()).device
        ids = torch.tensor([token_ids], device=device)
        was_training = self.model.training
        self.model.eval()
        lp, _ = sequence_logprobs(self.model, ids[:, :prompt_len], torch.ones_like(ids[:, :prompt_len]),
                                  ids[:, prompt_len:], temperature, with_entropy=False)
        self.model.train(was_training)
        return lp[0].float().cpu()

    def close(self) -> None:
        pass

    def _shared_prompt_cache(self, rows, width: int, device):
        """Prefill each distinct prompt once (not n times) and fan its KV cache out to its n samples.

        `generate` then only runs the last prompt token per row; the samples are identical to a plain call."""
        unique, index = _dedup_consecutive([r[0] for r in rows])
        if len(unique) == len(rows) or width < 2:
            return None
        ids, mask = left_pad(unique, self.pad_id)
        ids, mask = F.pad(ids, (width - ids.shape[1], 0), value=self.pad_id), F.pad(mask, (width - mask.shape[1], 0))
        ids, mask = ids[:, :-1].to(device), mask[:, :-1].to(device)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate computes them
        cache = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True).past_key_values
        cache.reorder_cache(torch.tensor(index, device=device))
        return cache

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Trajectories:
        rows = [(p, u, j) for p, u in zip(prompts, uids) for j in range(sampling.n)]
        parts = [self._generate_chunk(rows[i : i + self.max_batch_size], sampling)
                 for i in range(0, len(rows), self.max_batch_size)]
        return Trajectories.concat(parts)

    def stream(self, prompts: list[list[int]], uids: list[str], sampling: SamplingParams) -> Iterator[Trajectories]:
        """`generate`'s rows, call by call: after each `max_batch_size`-row `generate` call, its whole prompt groups
        (a group cut by the call's end waits for the next call). Same calls, same random draws: concatenated, the
        chunks are `generate`'s batch. One call (the default max_batch_size of 1024 rows) yields one chunk."""
        rows = [(p, u, j) for p, u in zip(prompts, uids) for j in range(sampling.n)]
        waiting: Trajectories | None = None  # the rows of a group that the previous call cut
        for i in range(0, len(rows), self.max_batch_size):
            with torch.no_grad():
                part = self._generate_chunk(rows[i : i + self.max_batch_size], sampling)
            if waiting is not None:
                part = Trajectories.concat([waiting, part])
            last = i + self.max_batch_size >= len(rows)
            whole = len(part) if last else max((k + 1 for k, j in enumerate(part.sample_index)
                                                if j == sampling.n - 1), default=0)
            waiting = part.select(list(range(whole, len(part)))) if whole < len(part) else None
            if whole:
                yield part if whole == len(part) else part.select(list(range(whole)))

    def _generate_chunk(self, rows, sampling: SamplingParams) -> Trajectories:
        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = left_pad([r[0] for r in rows], self.pad_id)
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        was_training = self.model.training
        self.model.eval()
        greedy = sampling.temperature <= 0
        cache = self._shared_prompt_cache(rows, prompt_ids.shape[1], device)
        recorder = SampledTokenLogprobs(self.model.get_output_embeddings(), sampling.temperature)
        try:
            out = self.model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask,
                past_key_values=cache,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=0,  # vLLM / verl default: no top-k
                max_new_tokens=sampling.max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                logits_processor=LogitsProcessorList([recorder]),
                return_dict_in_generate=True,
            )
        finally:
            recorder.remove()  # the hook never outlives this call
        self.model.train(was_training)
        response_ids = out.sequences[:, prompt_ids.shape[1] :]
        # log pi(token) under the sampling temperature (before top-p), the quantity the trainer recomputes
        logprobs = recorder.finish(response_ids)
        is_eos = torch.isin(response_ids, torch.tensor(self.eos_ids, device=device))
        # a token is part of the response up to and including the first EOS
        after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
        response_mask = (~after_eos).float()
        truncated = ~is_eos.any(1)
        response_ids = response_ids.masked_fill(after_eos, self.pad_id)
        logprobs = logprobs * response_mask
        texts = self.tokenizer.batch_decode(
            [ids[: int(m.sum())] for ids, m in zip(response_ids, response_mask)], skip_special_tokens=True
        )
        return Trajectories(
            prompt_ids=prompt_ids.cpu(),
            prompt_mask=prompt_mask.cpu(),
            response_ids=response_ids.cpu(),
            response_mask=response_mask.cpu(),
            rollout_logprobs=logprobs.cpu(),
            uid=[r[1] for r in rows],
            sample_index=[r[2] for r in rows],
            truncated=truncated.cpu(),
            texts=texts,
            pad_id=self.pad_id,
        )


class SampledTokenLogprobs(LogitsProcessor):
    """log pi(sampled token) at each `generate` step from the raw logits at `temperature` (before any processor or
    top-p, as `output_logits` gives them), holding one step's [B, V] log-softmax instead of every step's logits
    ([B, R, V]: 318 GB in fp32 for 64 rows x 8192 tokens at Qwen3's 151,669 vocabulary).

    A forward hook on the lm_head keeps the newest step's log-softmax; generate calls this processor once per step
    after the forward, when input_ids end with the token sampled at the previous step, which it gathers."""

    def __init__(self, head: torch.nn.Module, temperature: float):
        self.temperature = temperature
        self.current: torch.Tensor | None = None  # this step's log-softmax (set by the hook)
        self.previous: torch.Tensor | None = None  # the previous step's, waiting for its sampled token
        self.steps: list[torch.Tensor] = []
        self._handle = head.register_forward_hook(self._on_logits)

    def _on_logits(self, module, args, output: torch.Tensor) -> None:
        logits = output[:, -1].float()
        self.current = F.log_softmax(logits / self.temperature if self.temperature > 0 else logits, dim=-1)

    def _take(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, tokens.unsqueeze(1)).squeeze(1))
        self.previous = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids[:, -1])
        self.previous, self.current = self.current, None
        return scores

    def remove(self) -> None:
        self._handle.remove()

    def finish(self, response_ids: torch.Tensor) -> torch.Tensor:
        """[B, R] log-probs of the generated tokens."""
        self._take(response_ids[:, -1])
        if len(self.steps) != response_ids.shape[1]:
            raise RuntimeError(f"recorded {len(self.steps)} generate steps for {response_ids.shape[1]} tokens")
        return torch.stack(self.steps, dim=1)


def _dedup_consecutive(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    unique, index = [], []
    for p in prompts:
        if not unique or unique[-1] is not p and unique[-1] != p:
            unique.append(p)
        index.append(len(unique) - 1)
    return unique, index
