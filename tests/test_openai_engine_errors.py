"""rollout.engine=openai on bad servers: down, HTTP 500, no answer in time, fewer samples than n, a malformed answer,
another tokenizer, no /tokenize. Each is retried (where retrying can help), then ONE line naming the URL, within a
bounded time. The servers are tiny http.server fakes on 127.0.0.1 in a thread."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port
from scirl.config import load_config
from scirl.errors import ScirlError
from scirl.rollout.base import SamplingParams
from scirl.rollout.openai_client import OpenAIClient
from scirl.rollout.openai_engine import TOKENIZER_PROBE, OpenAIRolloutEngine

TIMEOUT, RETRIES = 0.5, 2
BACKOFF = 0.5 + 1.0  # before retries 1 and 2
SAMPLING = SamplingParams(n=2, temperature=1.0, max_new_tokens=4)


class Fake:
    """A fake OpenAI server: `mode` picks how POST /v1/completions answers; counts those requests."""

    def __init__(self, mode: str, tokens=None):
        self.mode, self.tokens, self.calls = mode, tokens, 0
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"data": [{"id": "fake"}]})
                elif self.path == "/health":
                    self._send(200, {"status": "ok", "update_weights": True})
                else:
                    self._send(404, {"error": {"message": "no"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize":
                    if fake.tokens is None:
                        self._send(404, {"detail": "Not Found"})
                    else:
                        self._send(200, {"tokens": fake.tokens})
                    return
                fake.calls += 1
                if fake.mode == "500":
                    self._send(500, {"error": {"message": "CUDA out of memory\nTraceback ..."}})
                elif fake.mode == "timeout":
                    fake.release.wait(30)
                elif fake.mode == "short":  # one choice, whatever n was
                    self._send(200, {"choices": [{"index": 0, "token_ids": [5, 6], "finish_reason": "length",
                                                  "logprobs": {"token_logprobs": [-1.0, -2.0]}}]})
                elif fake.mode == "no_ids":  # a server without vLLM's token-id extras
                    self._send(200, {"choices": [{"index": i, "text": "ab", "finish_reason": "length",
                                                  "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-1, -1]}}
                                                 for i in range(body["n"])]})
                elif fake.mode == "bad_request":
                    self._send(400, {"error": {"message": "max_tokens is too large"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def engine_for(url: str, tokenizer) -> OpenAIRolloutEngine:
    return OpenAIRolloutEngine(OpenAIClient(url + "/v1", "", TIMEOUT, RETRIES), tokenizer, "fake", True)


def cfg_for(url: str, tmp_path):
    return load_config(None, [f"rollout.base_url={url}/v1", f"rollout.request_timeout={TIMEOUT}",
                              f"rollout.max_retries={RETRIES}", "rollout.engine=openai",
                              f"trainer.output_dir={tmp_path}"])


def failing(call, url: str, bound: float) -> str:
    """Run `call`, expect a one-line ScirlError naming `url` within `bound` seconds; returns the message."""
    t0 = time.monotonic()
    with pytest.raises(ScirlError) as e:
        call()
    took = time.monotonic() - t0
    msg = str(e.value)
    assert url in msg and "\n" not in msg, msg
    assert took < bound, (took, msg)
    return msg


def test_server_down_is_retried_then_one_line(tiny_model_and_tokenizer, tmp_path):
    tok = tiny_model_and_tokenizer[1]
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    msg = failing(lambda: engine_for(url, tok).generate([[1, 2]], ["p"], SAMPLING), url, BACKOFF + 3.0)
    assert msg.startswith(f"rollout.engine=openai: POST {url}/v1/completions failed after 3 attempt(s): ")
    assert "ConnectionRefusedError" in msg
    msg = failing(lambda: OpenAIRolloutEngine.from_config(cfg_for(url, tmp_path), tok), url, BACKOFF + 3.0)
    assert f"GET {url}/v1/models failed after 3 attempt(s)" in msg


@pytest.mark.parametrize("mode, expect", [
    ("500", "HTTP 500: CUDA out of memory Traceback ..."),
    ("timeout", f"no answer within {TIMEOUT:g} s (rollout.request_timeout)"),
    ("short", "1 choices for n=2"),
])
def test_bad_answers_are_retried_then_one_line(tiny_model_and_tokenizer, mode, expect):
    tok = tiny_model_and_tokenizer[1]
    with Fake(mode) as fake:
        # (retries + 1) x timeout + backoff, and slack for two shared cores
        bound = (RETRIES + 1) * TIMEOUT + BACKOFF + 3.0
        msg = failing(lambda: engine_for(fake.url, tok).generate([[1, 2], [3]], ["p", "q"], SAMPLING), fake.url,
                      bound)
        assert msg.startswith(f"rollout.engine=openai: POST {fake.url}/v1/completions failed after 3 attempt(s): ")
        assert msg.endswith(expect), msg
        assert fake.calls >= RETRIES + 1  # every attempt reached the server (both prompts may have started)


def test_errors_that_retrying_cannot_fix_are_not_retried(tiny_model_and_tokenizer):
    tok = tiny_model_and_tokenizer[1]
    with Fake("bad_request") as fake:
        msg = failing(lambda: engine_for(fake.url, tok).generate([[1, 2]], ["p"], SAMPLING), fake.url, 2.0)
        assert msg == f"rollout.engine=openai: POST {fake.url}/v1/completions failed: HTTP 400: max_tokens is too large"
        assert fake.calls == 1
    with Fake("no_ids") as fake:
        msg = failing(lambda: engine_for(fake.url, tok).generate([[1, 2]], ["p"], SAMPLING), fake.url, 2.0)
        assert "returned no token ids" in msg and "cannot re-tokenize" in msg and fake.calls == 1


def test_a_server_with_another_tokenizer_is_refused_at_start(tiny_model_and_tokenizer, tmp_path, capsys):
    tok = tiny_model_and_tokenizer[1]
    with Fake("500", tokens=[1, 2, 3]) as fake:
        msg = failing(lambda: OpenAIRolloutEngine.from_config(cfg_for(fake.url, tmp_path), tok), fake.url, 2.0)
        assert "tokenizes differently from model.path's tokenizer" in msg and "3 there, the first difference at id 0" in msg
    same = tok.encode(TOKENIZER_PROBE + (tok.eos_token or ""), add_special_tokens=False)
    with Fake("500", tokens=same) as fake:  # the probe tokenized as the engine does: accepted, no warning
        assert OpenAIRolloutEngine.from_config(cfg_for(fake.url, tmp_path), tok).model_name == "fake"
    assert capsys.readouterr().err == ""
    with Fake("500", tokens=None) as fake:  # no /tokenize (404): a warning, once, naming the URL
        OpenAIRolloutEngine.from_config(cfg_for(fake.url, tmp_path), tok)
        err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{fake.url}/tokenize does not exist" in err


def test_missing_api_key_env_is_named(tiny_model_and_tokenizer, tmp_path, monkeypatch):
    monkeypatch.delenv("SCIRL_TEST_NO_SUCH_KEY", raising=False)
    cfg = cfg_for("http://127.0.0.1:9", tmp_path)
    cfg.rollout.api_key_env = "SCIRL_TEST_NO_SUCH_KEY"
    with pytest.raises(ScirlError, match="rollout.api_key_env=SCIRL_TEST_NO_SUCH_KEY: that environment variable"):
        OpenAIRolloutEngine.from_config(cfg, tiny_model_and_tokenizer[1])
