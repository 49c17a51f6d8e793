"""The token-level side of `scirl serve`: legacy completions with token ids and log-probs, tokenize, weight updates.

What a trainer needs from a server (rollout.engine=openai, scirl/rollout/openai_engine.py):
- `POST /v1/completions` takes a prompt as token ids (or a string) and returns the sampled token ids (vLLM's
  `return_token_ids`, `return_tokens_as_token_ids`) and per-token log-probs. The log-probs are the *processed*
  ones: log_softmax(logits / temperature) of the sampled token, before top-p (vLLM's processed_logprobs), recorded
  by the hf rollout engine's SampledTokenLogprobs, so they equal the trainer's recompute. `echo` prepends the
  prompt and its log-probs (the first token has none), at the request's temperature too (the sync guard's probe).
- `POST /tokenize` (vLLM's endpoint) lets a client check that it tokenizes as the server does.
- `POST /update_weights` {"path": a safetensors file} loads full named tensors in place (strict names and shapes,
  checked before anything is copied).
Callers hold the model lock (ChatModel.lock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scirl.serve.api import MAX_N, SEED_MAX, SEED_MIN, RequestError, _int, _number, check_model
from scirl.serve.model import Cancelled, ChatModel, Watch, stopping_criteria

MAX_LOGPROBS = 5  # OpenAI's limit on top log-probs per token


def _flag(body: dict, key: str, default: bool = False) -> bool:
    val = body.get(key, default)
    if val is None:
        return default
    if not isinstance(val, bool):
        raise RequestError(f"'{key}' must be true or false, got {val!r}", param=key)
    return val


def parse_completion_request(body: Any, served_names: set[str]) -> dict:
    """Validate a /v1/completions body: one prompt (token ids or a string); returns normalised fields."""
    body = check_model(body, served_names)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise RequestError("'prompt' must be a string or a non-empty list of token ids (one prompt per request)",
                               param="prompt")
    elif not isinstance(prompt, str) or not prompt:
        raise RequestError("'prompt' must be a non-empty string or a list of token ids", param="prompt")
    if body.get("stream"):
        raise RequestError("'stream' is not supported by scirl serve", param="stream")
    if body.get("stop"):
        raise RequestError("'stop' is not supported on /v1/completions", param="stop")
    logprobs = _int(body, "logprobs", 0, MAX_LOGPROBS)
    return {
        "prompt": prompt,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "max_tokens": _int(body, "max_tokens", 0),
        "n": _int(body, "n", 1, MAX_N) or 1,
        "seed": _int(body, "seed", SEED_MIN, SEED_MAX),
        "logprobs": logprobs,
        "echo": _flag(body, "echo"),
        "return_token_ids": _flag(body, "return_token_ids"),
        "return_tokens_as_token_ids": _flag(body, "return_tokens_as_token_ids"),
        "add_special_tokens": _flag(body, "add_special_tokens", True),
    }


def _prompt_ids(cm: ChatModel, req: dict) -> list[int]:
    prompt = req["prompt"]
    ids = list(prompt) if isinstance(prompt, list) else cm.tokenizer.encode(
        prompt, add_special_tokens=req["add_special_tokens"])
    vocab = cm.model.get_input_embeddings().num_embeddings
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise RequestError(f"prompt token ids must be in [0, {vocab}), got {bad[:3]}", param="prompt")
    if not ids:
        raise RequestError("the prompt has no tokens", param="prompt")
    return ids


def _forward_logprobs(cm: ChatModel, seqs: list[list[int]], temperature: float):
    """[rows, L-1, V] log_softmax(logits / T) predicting tokens 1.. of each (equal-length) sequence."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor(seqs, dtype=torch.long, device=cm.device)
    with torch.inference_mode():
        logits = cm.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1].float()
    return F.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1).cpu()


def _sample(cm: ChatModel, ids: list[int], req: dict, max_new: int, watch: Watch | None):
    """[(tokens up to and including EOS, their log-probs, finish_reason)] for each of the n samples."""
    import torch
    from transformers import LogitsProcessorList

    from scirl.rollout.hf_engine import SampledTokenLogprobs

    temperature, n = req["temperature"], req["n"]
    greedy = temperature <= 0
    if req["seed"] is not None:
        torch.manual_seed(req["seed"])
    input_ids = torch.tensor([ids], dtype=torch.long, device=cm.device)
    recorder = SampledTokenLogprobs(cm.model.get_output_embeddings(), temperature)
    extra = {"stopping_criteria": stopping_criteria(watch)} if watch is not None else {}
    try:
        with torch.inference_mode():
            out = cm.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=not greedy,
                temperature=None if greedy else temperature, top_p=None if greedy else req["top_p"],
                top_k=0,  # no top-k (vLLM / verl default), as the hf rollout engine
                max_new_tokens=max_new, num_return_sequences=1 if greedy else n, eos_token_id=cm.eos_ids,
                pad_token_id=cm.pad_id, logits_processor=LogitsProcessorList([recorder]),
                return_dict_in_generate=True, **extra)
    finally:
        recorder.remove()
    if watch is not None and watch.reason is not None:
        raise Cancelled(watch.reason, watch.steps)
    response = out.sequences[:, len(ids):]
    logprobs = recorder.finish(response).tolist()
    samples = []
    for row, lps in zip(response.tolist(), logprobs):
        cut = next((i for i, t in enumerate(row) if t in cm.eos_ids), None)
        end = len(row) if cut is None else cut + 1
        samples.append((row[:end], lps[:end], "length" if cut is None else "stop"))
    return samples * n if greedy else samples


def complete_tokens(cm: ChatModel, req: dict, watch: Watch | None = None) -> tuple[list[dict], int, int]:
    """The choices of one /v1/completions request (OpenAI shape), the prompt's and the completions' token counts.
    Raises Cancelled."""
    import torch

    ids = _prompt_ids(cm, req)
    room = cm.context - len(ids) if cm.context else 1 << 30
    if room < 0 or (room == 0 and req["max_tokens"] != 0):
        raise RequestError(f"This model's maximum context length is {cm.context} tokens; the prompt has "
                           f"{len(ids)} tokens.", param="prompt", code="context_length_exceeded")
    max_tokens = req["max_tokens"] if req["max_tokens"] is not None else cm.default_max_tokens
    max_new = min(max_tokens, room)
    if watch is not None:
        watch.raise_if_cancelled()
    if max_new > 0:
        samples = _sample(cm, ids, req, max_new, watch)
    else:  # max_tokens 0: nothing generated (with echo: the prompt's log-probs only)
        samples = [([], [], "length")] * req["n"]
    temperature, k = req["temperature"], req["logprobs"]
    prompt_lps: list[float | None] = []
    if req["echo"] and k is not None and len(ids) > 1:
        lp = _forward_logprobs(cm, [ids], temperature)[0]
        prompt_lps = lp.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()
    prompt_lps = [None] + prompt_lps if req["echo"] and k is not None else []
    prompt_text = req["prompt"] if isinstance(req["prompt"], str) else cm.tokenizer.decode(ids)
    choices = []
    for i, (tokens, lps, finish) in enumerate(samples):
        text = cm.tokenizer.decode(tokens, skip_special_tokens=True)
        choice: dict[str, Any] = {"index": i, "text": prompt_text + text if req["echo"] else text, "logprobs": None,
                                  "finish_reason": finish}
        if k is not None:
            shown = ids + tokens if req["echo"] else tokens
            choice["logprobs"] = _logprobs_block(cm, req, shown, prompt_lps + lps, ids, tokens)
        if req["return_token_ids"]:
            choice["token_ids"] = tokens
            choice["prompt_token_ids"] = ids
        choices.append(choice)
    return choices, len(ids), sum(len(tokens) for tokens, _, _ in samples)


def _piece(cm: ChatModel, token: int, as_ids: bool) -> str:
    return f"token_id:{token}" if as_ids else cm.tokenizer.decode([token])


def _logprobs_block(cm: ChatModel, req: dict, shown: list[int], lps: list, ids: list[int], tokens: list[int]) -> dict:
    """{"tokens", "token_logprobs", "top_logprobs", "text_offset"} over the shown tokens (echo: prompt first)."""
    as_ids = req["return_tokens_as_token_ids"]
    pieces = [_piece(cm, t, as_ids) for t in shown]
    offsets, at = [], 0
    for p in pieces:
        offsets.append(at)
        at += len(p)
    top = None
    if req["logprobs"]:  # top-k alternatives: one forward over prompt + response (rarely asked for)
        lp = _forward_logprobs(cm, [ids + tokens], req["temperature"])[0]
        first = 0 if req["echo"] else len(ids) - 1
        vals, idx = lp[first:].topk(req["logprobs"], dim=-1)
        top = ([None] if req["echo"] else []) + [
            {_piece(cm, t, as_ids): v for t, v in zip(ti.tolist(), vi.tolist())} for vi, ti in zip(vals, idx)]
    return {"tokens": pieces, "token_logprobs": lps, "top_logprobs": top, "text_offset": offsets}


def tokenize(cm: ChatModel, body: Any, served_names: set[str]) -> dict:
    """POST /tokenize {"prompt", "add_special_tokens"} -> {"tokens", "count", "max_model_len"} (vLLM's shape)."""
    body = check_model(body, served_names)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string", param="prompt")
    tokens = cm.tokenizer.encode(prompt, add_special_tokens=_flag(body, "add_special_tokens", True))
    return {"tokens": tokens, "count": len(tokens), "max_model_len": cm.context}


def parse_update_request(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not body["path"]:
        raise RequestError("the body must be {\"path\": \"<a safetensors file>\"}", param="path")
    return body["path"]


def load_weights(cm: ChatModel, path: str) -> int:
    """Load a safetensors file of full named tensors into the served model in place; returns how many. Names and
    shapes must be exactly the model's state_dict (checked before anything is copied: a bad file changes nothing)."""
    import torch
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise RequestError(f"update_weights: no such file: {path}", param="path")
    try:
        tensors = load_file(path, device="cpu")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the client's error
        raise RequestError(f"update_weights: cannot read {path} as safetensors: {type(e).__name__}: {e}",
                           param="path") from None
    own = cm.model.state_dict()
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise RequestError(f"update_weights: {path} does not match the served model: missing {len(missing)} "
                           f"{missing[:3]}, unexpected {len(unexpected)} {unexpected[:3]}", param="path")
    shapes = [k for k, v in tensors.items() if tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise RequestError(f"update_weights: {len(shapes)} tensors have the wrong shape, e.g. {k}: "
                           f"{tuple(tensors[k].shape)} vs {tuple(own[k].shape)}", param="path")
    with torch.no_grad():
        cm.model.load_state_dict(tensors, strict=True)
    return len(tensors)
