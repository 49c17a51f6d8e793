"""`scirl serve`: an OpenAI-compatible server over transformers `generate` (chat for a judge; token-level completions,
tokenize and weight updates for a trainer: rollout.engine=openai).

Endpoints:
  POST /v1/chat/completions  {"model", "messages", "temperature", "top_p", "max_tokens", "min_tokens", "n", "seed",
                             "stop", "chat_template_kwargs"} -> {"id", "object": "chat.completion", "created",
                             "model", "choices": [{"index", "message": {"role": "assistant", "content"},
                             "finish_reason"}], "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}
  POST /v1/completions       {"model", "prompt": token ids | string, "n", "temperature", "top_p", "max_tokens", "seed",
                             "logprobs", "echo", "return_token_ids", "return_tokens_as_token_ids"} ->
                             {"object": "text_completion", "choices": [{"index", "text", "finish_reason", "logprobs":
                             {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, "token_ids",
                             "prompt_token_ids"}], "usage"}; log-probs at the sampling temperature
                             (serve/completions.py)
  POST /tokenize             {"prompt", "add_special_tokens"} -> {"tokens", "count", "max_model_len"}
  POST /update_weights       {"path": a safetensors file of the model's full state dict} -> {"status": "ok", "loaded"}
                             (403 with --read-only)
  GET  /v1/models            {"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}
  GET  /health               {"status": "ok", "model", "update_weights", "in_flight", "generated_tokens"}
                             (503 "stopping" once stopping)

The prompt is the model's chat template with add_generation_prompt; temperature 0 is greedy. One request is
generated at a time (a lock); HTTP handling is threaded. Bad requests get 400 with an OpenAI-style
{"error": {"message", "type", "param", "code"}} body, unknown paths 404, a model name that is not served 404.
`max_tokens` is clamped to the model's context (finish_reason "length" when that cut the answer). Streaming and
tools are not supported; chat completions have no logprobs.

Lifetime: the port is bound before the model loads (a busy port fails at once). SIGTERM or SIGINT stops
accepting connections, cancels running generations at their next token (their clients get 503
"server_shutting_down"), answers or closes every open connection, joins the handler threads and exits 0; a second
signal exits at once. A client that disconnects mid-generation stops its generation at the next token; each
disconnect is one log line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Iterator

from scirl.errors import ScirlError
from scirl.serve import completions
from scirl.serve.api import MAX_BODY_BYTES, RequestError, error_body, parse_chat_request
from scirl.serve.model import SHUTDOWN, Cancelled, ChatModel, Watch

__all__ = ["USAGE", "ChatServer", "help_text", "main", "parse_chat_request", "serve"]

USAGE = """scirl serve [--model PATH] [--host 127.0.0.1] [--port 8000] [--served-model-name NAME] [--device auto]
            [--dtype float32] [--threads N] [--max-tokens 256] [--read-only] [--log-requests]

Serve a model folder, a hub id or a bundled model (default builtin:tiny-qwen3) behind an OpenAI-compatible API:
POST /v1/chat/completions, POST /v1/completions (token ids and log-probs, for rollout.engine=openai),
POST /tokenize, POST /update_weights (not with --read-only), GET /v1/models, GET /health. --port 0 picks a free
port. Prints
`serving <model> on http://HOST:PORT` once ready; SIGTERM or Ctrl-C stop it (running generations are cancelled,
exit 0). Point the `judge` reward at it with reward info endpoint=http://HOST:PORT/v1 (or env
SCIRL_JUDGE_ENDPOINT)."""

POST_PATHS = ("/v1/chat/completions", "/v1/completions", "/tokenize", "/update_weights")
STOP_DEADLINE_S = 30.0  # after a stop signal, how long open requests get to answer before a hard exit


# ---------------------------------------------------------------------------------------------- HTTP
class ChatServer(HTTPServer):
    """An HTTP server with one thread per connection that it tracks, so `stop` can cancel and join them all.
    `chat` (the ChatModel) may be set after construction: the socket is bound and listening first."""

    def __init__(self, address: tuple[str, int], model_id: str, aliases: set[str], log_requests: bool = False,
                 stopping: threading.Event | None = None, chat: ChatModel | None = None, read_only: bool = False):
        self.chat, self.model_id, self.log_requests = chat, model_id, log_requests
        self.read_only = read_only  # refuses POST /update_weights (a frozen teacher, an eval target)
        self.served_names = {model_id} | aliases
        self.created = int(time.time())
        self.stopping = stopping or threading.Event()
        self.in_flight = 0  # POST requests being handled
        self.generated_tokens = 0  # decoding steps x sequences, over all requests
        self._stats_lock = threading.Lock()
        self._conn_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}
        super().__init__(address, Handler)

    def log(self, message: str) -> None:
        print(f"scirl serve: {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        with self._stats_lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._stats_lock:
                self.in_flight -= 1

    def count_tokens(self, rows: int) -> None:
        with self._stats_lock:
            self.generated_tokens += rows

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=self._handle, args=(request, client_address), daemon=True,
                                  name=f"scirl-serve-{client_address[1] if len(client_address) > 1 else ''}")
        with self._conn_lock:
            self._connections[request] = thread
        thread.start()

    def _handle(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - reported by handle_error, the server keeps running
            self.handle_error(request, client_address)
        finally:
            with self._conn_lock:  # stop() only touches sockets still registered here, so never a closed one
                self._connections.pop(request, None)
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):  # the client went away: one line, not a traceback
            self.log(f"client {_addr(client_address)} disconnected ({type(exc).__name__})")
        else:  # a bug: keep the traceback
            super().handle_error(request, client_address)

    def stop(self, serving: bool, deadline_s: float = STOP_DEADLINE_S) -> list[threading.Thread]:
        """Stop accepting, cancel running generations (via `stopping`), wake idle keep-alive connections and join
        every handler thread; returns the threads still alive after `deadline_s`. `serving`: serve_forever runs."""
        self.stopping.set()
        if serving:
            self.shutdown()  # serve_forever returns: nothing is accepted from here on
        self.server_close()
        with self._conn_lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RD)  # an idle keep-alive read returns EOF; answers can still be sent
            threads = list(self._connections.values())
        end = time.monotonic() + deadline_s
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        return [t for t in threads if t.is_alive()]


def _addr(client_address: Any) -> str:
    return ":".join(str(x) for x in client_address[:2]) if isinstance(client_address, tuple) else str(client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ChatServer
    server_version = "scirl-serve"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        if self.server.log_requests:
            super().log_message(format, *args)

    def _send(self, status: int, payload: dict) -> None:
        if self.server.stopping.is_set():
            self.close_connection = True
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (ConnectionError, TimeoutError) as e:
            self.close_connection = True
            self.server.log(f"client {_addr(self.client_address)} disconnected before the response was sent "
                            f"({type(e).__name__})")

    def _error(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> None:
        self._send(status, error_body(message, type_, param, code))

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        path = self._path()
        srv = self.server
        if path == "/health":
            with srv._stats_lock:
                stats = {"in_flight": srv.in_flight, "generated_tokens": srv.generated_tokens}
            stopping = srv.stopping.is_set()
            self._send(503 if stopping else 200, {"status": "stopping" if stopping else "ok", "model": srv.model_id,
                                                  "update_weights": not srv.read_only, **stats})
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": srv.model_id, "object": "model",
                                                         "created": srv.created, "owned_by": "scirl"}]})
        elif path in POST_PATHS:
            self._error(405, f"use POST for {path}")
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

    def _locked(self, run: Callable[[Watch], Any]) -> Any:
        """Wait for the model (cancelled meanwhile by a stop or a disconnect), then `run(watch)` holding its lock."""
        srv = self.server
        watch = Watch(srv.stopping, self.connection, srv.count_tokens)
        while not srv.chat.lock.acquire(timeout=0.05):
            watch.raise_if_cancelled()
        try:
            return run(watch)
        finally:
            srv.chat.lock.release()

    def _token_level(self, path: str, body: Any) -> dict:
        """The answer to POST /v1/completions, /tokenize or /update_weights (raises RequestError, Cancelled)."""
        srv = self.server
        if path == "/tokenize":
            return completions.tokenize(srv.chat, body, srv.served_names)
        if path == "/update_weights":
            if srv.read_only:
                raise RequestError("this server is read-only (scirl serve --read-only): it does not take weights",
                                   status=403, code="read_only")
            weights = completions.parse_update_request(body)
            loaded = self._locked(lambda _watch: completions.load_weights(srv.chat, weights))
            srv.log(f"loaded {loaded} tensors from {weights}")
            return {"status": "ok", "loaded": loaded}
        req = completions.parse_completion_request(body, srv.served_names)
        if srv.stopping.is_set():
            raise Cancelled(SHUTDOWN, 0)
        choices, prompt_tokens, completion_tokens = self._locked(
            lambda watch: completions.complete_tokens(srv.chat, req, watch))
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": srv.model_id, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        with self.server.tracking():
            self._post()

    def _post(self) -> None:
        path = self._path()
        try:
            body = self._read_json()  # always consume the body, so a keep-alive connection stays in sync
            if path not in POST_PATHS:
                self._error(404, f"unknown path {path!r}", code="not_found")
                return
            if path != "/v1/chat/completions":
                self._send(200, self._token_level(path, body))
                return
            req = parse_chat_request(body, self.server.served_names)
            if self.server.stopping.is_set():
                raise Cancelled(SHUTDOWN, 0)
            choices, prompt_tokens = self._locked(lambda watch: self.server.chat.complete(req, watch))
        except RequestError as e:
            self._error(e.status, str(e), e.type, e.param, e.code)
            return
        except Cancelled as c:
            self.close_connection = True
            if c.reason == SHUTDOWN:
                self._error(503, "the server is shutting down; the request was cancelled", "server_error",
                            code="server_shutting_down")
            else:
                done = f"after {c.steps} tokens" if c.steps else "before it started"
                self.server.log(f"client {_addr(self.client_address)} disconnected; its generation stopped {done}")
            return
        except (ConnectionError, TimeoutError) as e:  # reading the body
            self.close_connection = True
            self.server.log(f"client {_addr(self.client_address)} disconnected ({type(e).__name__})")
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
    usage, description = USAGE.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="scirl serve", usage=usage, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:tiny-qwen3", metavar="PATH", help="model folder, hub id or builtin:<name>")
    p.add_argument("--host", default="127.0.0.1", metavar="HOST", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free port")
    p.add_argument("--served-model-name", default=None, metavar="NAME", help="the model id clients send (default: --model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, metavar="N", help="torch CPU threads (0: torch's default)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N", help="max_tokens when a request gives none")
    p.add_argument("--read-only", action="store_true",
                   help="refuse POST /update_weights (a frozen teacher or an eval target); /health says so")
    p.add_argument("--log-requests", action="store_true", help="log each request to stderr")
    return p


def help_text() -> str:
    """The full `scirl serve --help` text (every flag), starting with the usage line."""
    return _parser().format_help().removeprefix("usage: ").rstrip("\n")


def serve(args: argparse.Namespace, ready: threading.Event | None = None, stop: threading.Event | None = None,
          hard_exit: bool = False) -> int:
    """Bind, load the model, serve until `stop` is set (SIGTERM/SIGINT set it when run in the main thread).
    Returns 0, or 1 when requests were still running `STOP_DEADLINE_S` after the stop (with `hard_exit`, the
    process then ends at once with os._exit(1) rather than tearing torch down under those threads)."""
    if not 0 <= args.port <= 65535:
        raise ScirlError(f"--port must be in 0..65535, got {args.port}")
    if args.max_tokens < 1:
        raise ScirlError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    model_id = args.served_model_name or args.model
    stop = stop or threading.Event()
    try:  # bind before loading the model: a busy port is reported at once
        httpd = ChatServer((args.host, args.port), model_id, {args.model}, args.log_requests, stopping=stop,
                           read_only=args.read_only)
    except OSError as e:
        raise ScirlError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    previous = {}

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():  # the second signal: no more waiting
            os.write(2, b"scirl serve: second signal, exiting now\n")
            os._exit(128 + signum)
        stop.set()

    worker = None
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        httpd.chat = ChatModel(args.model, device=args.device, dtype=args.dtype, default_max_tokens=args.max_tokens)
        if not stop.is_set():  # not stopped while loading
            worker = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                      name="scirl-serve", daemon=True)
            worker.start()
            host, port = httpd.server_address[:2]
            print(f"serving {model_id} on http://{host}:{port}", flush=True)
            if ready is not None:
                ready.set()
            while not stop.wait(0.5):
                pass
            with httpd._stats_lock:
                busy = httpd.in_flight
            httpd.log(f"stopping ({busy} request(s) in flight)")
    finally:
        stragglers = httpd.stop(serving=worker is not None)
        if worker is not None:
            worker.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stragglers:
        httpd.log(f"{len(stragglers)} request(s) still running {STOP_DEADLINE_S:.0f}s after the stop; exiting")
        if hard_exit:
            sys.stdout.flush()
            os._exit(1)
        return 1
    httpd.log("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`scirl serve` entry point; returns the exit code (2 on a user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2)
        return int(e.code or 0)
    try:
        return serve(args, hard_exit=True)
    except ScirlError as e:
        print(f"scirl serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
