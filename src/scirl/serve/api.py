"""The request side of `scirl serve`: OpenAI-style error bodies and validation of a chat-completions body.

`parse_chat_request(body, served_names)` returns the normalised fields the model runs on, or raises
`RequestError` (an HTTP status plus an OpenAI-style {"error": {"message", "type", "param", "code"}} body).
"""

from __future__ import annotations

from typing import Any

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_N = 64
ROLES = {"system", "user", "assistant", "developer", "tool"}
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.manual_seed accepts


class RequestError(Exception):
    """A client error: becomes an OpenAI-style error body with `status`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type_


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _number(body: dict, key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    val = body.get(key)
    if val is None:
        return default
    if isinstance(val, bool) or not isinstance(val, (int, float)) or val != val:
        raise RequestError(f"'{key}' must be a number, got {val!r}", param=key)
    if val < lo or (lo_open and val == lo) or val > hi:
        raise RequestError(f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {val}", param=key)
    return float(val)


def _int(body: dict, key: str, lo: int, hi: int | None = None) -> int | None:
    val = body.get(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, int):
        raise RequestError(f"'{key}' must be an integer, got {val!r}", param=key)
    if val < lo or (hi is not None and val > hi):
        raise RequestError(f"'{key}' must be in [{lo}, {hi if hi is not None else 'inf'}], got {val}", param=key)
    return val


def _content_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(f"messages[{i}].content: only text parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(f"messages[{i}].content must be a string or a list of text parts", param="messages")


def check_model(body: Any, served_names: set[str]) -> dict:
    """The body as a dict whose optional 'model' is one of the served names (raises RequestError)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    if model and model not in served_names:
        raise RequestError(f"The model `{model}` does not exist (served: {', '.join(sorted(served_names))}).",
                           status=404, param="model", code="model_not_found")
    return body


def parse_chat_request(body: Any, served_names: set[str]) -> dict:
    """Validate a chat-completions body; returns normalised fields (raises RequestError)."""
    body = check_model(body, served_names)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object", param="messages")
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}", param="messages")
        clean.append({"role": "system" if role == "developer" else role, "content": _content_text(m.get("content"), i)})
    if body.get("stream"):
        raise RequestError("'stream' is not supported by scirl serve", param="stream")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4
                                 and all(isinstance(s, str) and s for s in stop)):
        raise RequestError("'stop' must be a string or a list of at most 4 non-empty strings", param="stop")
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise RequestError("'chat_template_kwargs' must be an object", param="chat_template_kwargs")
    max_tokens = _int(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_completion_tokens", 1)
    min_tokens = _int(body, "min_tokens", 0) or 0  # vLLM's extra parameter: no EOS before this many tokens
    if max_tokens is not None and min_tokens > max_tokens:
        raise RequestError(f"'min_tokens' ({min_tokens}) must be <= 'max_tokens' ({max_tokens})", param="min_tokens")
    return {
        "messages": clean,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "max_tokens": max_tokens,
        "min_tokens": min_tokens,
        "n": _int(body, "n", 1, MAX_N) or 1,
        "seed": _int(body, "seed", SEED_MIN, SEED_MAX),
        "stop": stop or [],
        "chat_template_kwargs": kwargs,
    }
