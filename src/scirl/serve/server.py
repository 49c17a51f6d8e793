"""`scirl serve`: an OpenAI-compatible chat-completions server over transformers `generate`.

Endpoints:
  POST /v1/chat/completions  {"model", "messages", "temperature", "top_p", "max_tokens", "n", "seed", "stop",
                             "chat_template_kwargs"} -> {"id", "object": "chat.completion", "created", "model",
                             "choices": [{"index", "message": {"role": "assistant", "content"}, "finish_reason"}],
                             "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}
  GET  /v1/models            {"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}
  GET  /health               {"status": "ok", "model"}

The prompt is the model's chat template with add_generation_prompt; temperature 0 is greedy. One request is
generated at a time (a lock); HTTP handling is threaded. Bad requests get 400 with an OpenAI-style
{"error": {"message", "type", "param", "code"}} body, unknown paths 404, a model name that is not served 404.
`max_tokens` is clamped to the model's context (finish_reason "length" when that cut the answer).
Streaming, tools and logprobs are not supported.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from scirl.errors import ScirlError

USAGE = """scirl serve [--model PATH] [--host 127.0.0.1] [--port 8000] [--served-model-name NAME] [--device auto]
            [--dtype float32] [--threads N] [--max-tokens 256] [--log-requests]

Serve a model folder, a hub id or a bundled model (default builtin:tiny-qwen3) behind an OpenAI-compatible API:
POST /v1/chat/completions, GET /v1/models, GET /health. --port 0 picks a free port. Prints
`serving <model> on http://HOST:PORT` once ready; SIGTERM or Ctrl-C stop it. Point the `judge` reward at it
with reward info endpoint=http://HOST:PORT/v1 (or env SCIRL_JUDGE_ENDPOINT)."""

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_N = 64
ROLES = {"system", "user", "assistant", "developer", "tool"}


class RequestError(Exception):
    """A client error: becomes an OpenAI-style error body with `status`."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type_


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------------- validation
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


def parse_chat_request(body: Any, served_names: set[str]) -> dict:
    """Validate a chat-completions body; returns normalised fields (raises RequestError)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    if model and model not in served_names:
        raise RequestError(f"The model `{model}` does not exist (served: {', '.join(sorted(served_names))}).",
                           status=404, param="model", code="model_not_found")
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
    return {
        "messages": clean,
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "max_tokens": max_tokens,
        "n": _int(body, "n", 1, MAX_N) or 1,
        "seed": _int(body, "seed", -(2**63)),
        "stop": stop or [],
        "chat_template_kwargs": kwargs,
    }


# ---------------------------------------------------------------------------------------------- the model
class ChatModel:
    """A causal LM and its tokenizer; `complete` runs one validated request (callers hold `lock`)."""

    def __init__(self, path: str, device: str = "auto", dtype: str = "float32", default_max_tokens: int = 256):
        from scirl.train.model_loading import load_model_and_tokenizer, pick_device

        self.model, self.tokenizer = load_model_and_tokenizer(path, dtype=dtype, device=pick_device(device))
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.lock = threading.Lock()
        self.default_max_tokens = default_max_tokens
        cfg = self.model.config
        self.context = getattr(cfg, "max_position_embeddings", None) or getattr(self.tokenizer, "model_max_length", 0)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in self.eos_ids:
            self.eos_ids.append(self.tokenizer.eos_token_id)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]

    def prompt_ids(self, messages: list[dict], kwargs: dict) -> list[int]:
        try:
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - e.g. a jinja TemplateError ("System role not supported")
            raise RequestError(f"chat template failed: {type(e).__name__}: {e}", param="messages") from None
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def complete(self, req: dict) -> tuple[list[tuple[str, str, int]], int]:
        """[(content, finish_reason, completion_tokens)] for each of the n choices, and the prompt length."""
        import torch

        ids = self.prompt_ids(req["messages"], req["chat_template_kwargs"])
        room = self.context - len(ids) if self.context else 1 << 30
        if room < 1:
            raise RequestError(f"This model's maximum context length is {self.context} tokens; the prompt has "
                               f"{len(ids)} tokens.", param="messages", code="context_length_exceeded")
        max_new = min(req["max_tokens"] or self.default_max_tokens, room)
        greedy = req["temperature"] <= 0
        n = req["n"]
        if req["seed"] is not None:
            torch.manual_seed(req["seed"])  # also seeds CUDA
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=not greedy,
                temperature=None if greedy else req["temperature"],
                top_p=None if greedy else req["top_p"],
                top_k=None if greedy else 0,  # no top-k when sampling (vLLM / verl default)
                max_new_tokens=max_new,
                num_return_sequences=1 if greedy else n,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
            )
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


# ---------------------------------------------------------------------------------------------- HTTP
class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], chat: ChatModel, model_id: str, aliases: set[str],
                 log_requests: bool = False):
        self.chat, self.model_id, self.log_requests = chat, model_id, log_requests
        self.served_names = {model_id} | aliases
        self.created = int(time.time())
        super().__init__(address, Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ChatServer
    server_version = "scirl-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.log_requests:
            super().log_message(format, *args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> None:
        self._send(status, error_body(message, type_, param, code))

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self._path()
        if path == "/health":
            self._send(200, {"status": "ok", "model": self.server.model_id})
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.server.model_id, "object": "model",
                                                         "created": self.server.created, "owned_by": "scirl"}]})
        elif path == "/v1/chat/completions":
            self._error(405, "use POST for /v1/chat/completions")
        else:
            self._error(404, f"unknown path {path!r}", code="not_found")

    def _read_json(self) -> Any:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            self.close_connection = True
            raise RequestError("a Content-Length header is required (chunked bodies are not supported)")
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise RequestError(f"bad Content-Length {length!r}") from None
        if size < 0 or size > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(f"request body must be 0..{MAX_BODY_BYTES} bytes, got {size}", status=413)
        raw = self.rfile.read(size)
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(f"the request body is not valid JSON: {e}") from None

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        path = self._path()
        try:
            body = self._read_json()  # always consume the body, so a keep-alive connection stays in sync
            if path != "/v1/chat/completions":
                self._error(404, f"unknown path {path!r}", code="not_found")
                return
            req = parse_chat_request(body, self.server.served_names)
            with self.server.chat.lock:
                choices, prompt_tokens = self.server.chat.complete(req)
        except RequestError as e:
            self._error(e.status, str(e), e.type, e.param, e.code)
            return
        except Exception as e:  # noqa: BLE001 - a generation failure must not kill the server
            self._error(500, f"generation failed: {type(e).__name__}: {e}", "server_error")
            return
        completion_tokens = sum(c[2] for c in choices)
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.server.model_id,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish} for i, (text, finish, _) in enumerate(choices)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })


# ---------------------------------------------------------------------------------------------- entry point
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scirl serve", usage=USAGE.split("\n\n")[0], description=USAGE.split("\n\n")[1])
    p.add_argument("--model", default="builtin:tiny-qwen3", help="model folder, hub id or builtin:<name>")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: --model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--max-tokens", type=int, default=256, help="max_tokens when a request gives none")
    p.add_argument("--log-requests", action="store_true", help="log each request to stderr")
    return p


def serve(args: argparse.Namespace, ready: threading.Event | None = None, stop: threading.Event | None = None) -> int:
    if not 0 <= args.port <= 65535:
        raise ScirlError(f"--port must be in 0..65535, got {args.port}")
    if args.max_tokens < 1:
        raise ScirlError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    chat = ChatModel(args.model, device=args.device, dtype=args.dtype, default_max_tokens=args.max_tokens)
    model_id = args.served_model_name or args.model
    try:
        httpd = ChatServer((args.host, args.port), chat, model_id, {args.model}, args.log_requests)
    except OSError as e:
        raise ScirlError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    worker = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="scirl-serve",
                              daemon=True)
    try:
        worker.start()
        host, port = httpd.server_address[:2]
        print(f"serving {model_id} on http://{host}:{port}", flush=True)
        if ready is not None:
            ready.set()
        while not stop.wait(0.5):
            pass
    finally:
        httpd.shutdown()
        httpd.server_close()
        worker.join(timeout=5.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("scirl serve: stopped", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`scirl serve` entry point; returns the exit code (2 on a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2)
        return int(e.code or 0)
    try:
        return serve(args)
    except ScirlError as e:
        print(f"scirl serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
