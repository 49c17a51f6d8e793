"""The model side of `scirl serve`: one chat completion over transformers `generate`, and its cancellation.

A `Watch` follows one request while it generates: a transformers StoppingCriteria calls it after every decoding
step, and it stops the generation at that step when the server is stopping (SIGTERM / Ctrl-C) or when the client
closed its connection (a non-blocking peek at the socket reads EOF or a reset). `ChatModel.complete` then raises
`Cancelled` with the reason and the number of steps that ran.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable

from scirl.serve.api import RequestError

SHUTDOWN, DISCONNECTED = "shutdown", "disconnected"
_PEEK_FLAGS = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


class Cancelled(Exception):
    """A generation stopped early: `reason` is SHUTDOWN or DISCONNECTED; `steps` decoding steps had run."""

    def __init__(self, reason: str, steps: int):
        super().__init__(f"{reason} after {steps} steps")
        self.reason, self.steps = reason, steps


def client_gone(conn: socket.socket | None) -> bool:
    """True when the peer closed or reset `conn` (EOF on a non-blocking peek). Data waiting to be read (a
    pipelined request) is not a disconnect. Never blocks; False where the platform has no MSG_DONTWAIT."""
    if conn is None or not hasattr(socket, "MSG_DONTWAIT"):
        return False
    try:
        return conn.recv(1, _PEEK_FLAGS) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # ECONNRESET, EBADF, ...: nobody is left to answer
        return True


class Watch:
    """Cancellation state of one request: `stopping` (the server's stop event) and the client connection."""

    def __init__(self, stopping: threading.Event, conn: socket.socket | None = None,
                 on_step: Callable[[int], None] | None = None):
        self.stopping, self.conn, self.on_step = stopping, conn, on_step
        self.steps = 0
        self.reason: str | None = None

    def check(self) -> str | None:
        """The reason to stop now (SHUTDOWN first, then DISCONNECTED), or None; remembered once seen."""
        if self.reason is None:
            if self.stopping.is_set():
                self.reason = SHUTDOWN
            elif client_gone(self.conn):
                self.reason = DISCONNECTED
        return self.reason

    def raise_if_cancelled(self) -> None:
        if self.check() is not None:
            raise Cancelled(self.reason, self.steps)

    def step(self, rows: int) -> bool:
        """Called after each decoding step of `rows` sequences; True stops the generation."""
        self.steps += 1
        if self.on_step is not None:
            self.on_step(rows)
        return self.check() is not None


_CRITERIA_CLASS: Any = None


def stopping_criteria(watch: Watch) -> Any:
    """A StoppingCriteriaList whose one criteria ends every sequence as soon as `watch.step` says so."""
    global _CRITERIA_CLASS
    from transformers import StoppingCriteria, StoppingCriteriaList

    if _CRITERIA_CLASS is None:
        import torch

        class WatchCriteria(StoppingCriteria):
            def __init__(self, w: Watch):
                self.watch = w

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                stop = self.watch.step(int(input_ids.shape[0]))
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        _CRITERIA_CLASS = WatchCriteria
    return StoppingCriteriaList([_CRITERIA_CLASS(watch)])


class ChatModel:
    """A causal LM and its tokenizer; `complete` runs one validated request (callers hold `lock`)."""

    def __init__(self, path: str, device: str = "auto", dtype: str = "float32", default_max_tokens: int = 256):
        from scirl.rollout.assemble import eos_and_pad
        from scirl.train.model_loading import load_model_and_tokenizer, pick_device

        self.model, self.tokenizer = load_model_and_tokenizer(path, dtype=dtype, device=pick_device(device))
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.lock = threading.Lock()
        self.default_max_tokens = default_max_tokens
        cfg = self.model.config
        self.context = getattr(cfg, "max_position_embeddings", None) or getattr(self.tokenizer, "model_max_length", 0)
        self.eos_ids, self.pad_id = eos_and_pad(self.tokenizer, self.model.generation_config)

    def prompt_ids(self, messages: list[dict], kwargs: dict) -> list[int]:
        try:
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - e.g. a jinja TemplateError ("System role not supported")
            raise RequestError(f"chat template failed: {type(e).__name__}: {e}", param="messages") from None
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def complete(self, req: dict, watch: Watch | None = None) -> tuple[list[tuple[str, str, int]], int]:
        """[(content, finish_reason, completion_tokens)] for each of the n choices, and the prompt length.
        Raises Cancelled when `watch` stopped the generation."""
        import torch

        ids = self.prompt_ids(req["messages"], req["chat_template_kwargs"])
        room = self.context - len(ids) if self.context else 1 << 30
        if room < 1:
            raise RequestError(f"This model's maximum context length is {self.context} tokens; the prompt has "
                               f"{len(ids)} tokens.", param="messages", code="context_length_exceeded")
        max_new = min(req["max_tokens"] or self.default_max_tokens, room)
        min_new = min(req.get("min_tokens") or 0, max_new)
        greedy = req["temperature"] <= 0
        n = req["n"]
        if watch is not None:
            watch.raise_if_cancelled()
        if req["seed"] is not None:
            torch.manual_seed(req["seed"])  # also seeds CUDA
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        extra = {"stopping_criteria": stopping_criteria(watch)} if watch is not None else {}
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=not greedy,
                temperature=None if greedy else req["temperature"],
                top_p=None if greedy else req["top_p"],
                top_k=None if greedy else 0,  # no top-k when sampling (vLLM / verl default)
                max_new_tokens=max_new,
                min_new_tokens=min_new or None,
                num_return_sequences=1 if greedy else n,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                **extra,
            )
        if watch is not None and watch.reason is not None:  # stopped by the watch (a later stop lets it finish)
            raise Cancelled(watch.reason, watch.steps)
        choices = []
        for row in out[:, len(ids):].tolist():
            cut = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            tokens = row if cut is None else row[: cut + 1]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            finish = "length" if cut is None else "stop"
            hits = [text.find(s) for s in req["stop"] if s in text]
            if hits:
                text, finish = text[: min(hits)], "stop"
            choices.append((text, finish, len(tokens)))
        if greedy:
            choices = choices * n
        return choices, len(ids)
