"""HTTP for rollout.engine=openai: JSON requests to an OpenAI-compatible server with a per-request timeout, retries
with exponential backoff (0.5 s, 1 s, 2 s, ...) and one-line errors that name the URL.

The standard library (urllib), not `requests` / `httpx`: those are in some environments but are not scirl
dependencies, and a blocking JSON POST per prompt group from a thread pool needs nothing more (the judge reward
does the same). Loopback servers bypass HTTP proxies.

Retried: connection errors, timeouts, HTTP 408 / 429 / 5xx, and answers the caller's `check` rejects (e.g. fewer
choices than `n`). Not retried: other 4xx (a wrong request stays wrong). A request takes at most
(max_retries + 1) x timeout plus the backoff sleeps; `timeout` bounds each socket operation (connect, each read).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from scirl.errors import ScirlError
from scirl.hub import is_loopback

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
BACKOFF_S = 0.5


class BadResponse(Exception):
    """An answer the caller cannot use (raised by a `check`): retried like a server error."""


class HTTPStatusError(ScirlError):
    """A non-retryable HTTP error answer (4xx): `status` and the server's message."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def one_line(text: Any, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_message(raw: bytes) -> str:
    """The message of an OpenAI-style error body ({"error": {"message"}}, vLLM's {"message"}), else the raw text."""
    try:
        body = json.loads(raw.decode("utf-8"))
        err = body.get("error", body) if isinstance(body, dict) else body
        return one_line(err.get("message", err) if isinstance(err, dict) else err)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return one_line(raw.decode("utf-8", "replace"))


class OpenAIClient:
    """JSON over HTTP to one server. `base_url`: the OpenAI API root (http://host:port/v1); `root` is the server
    root without the trailing /v1, where vLLM and scirl serve put /tokenize, /health and /update_weights."""

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 600.0, max_retries: int = 3):
        self.base_url = base_url.rstrip("/")
        self.root = self.base_url.removesuffix("/v1")
        self.api_key, self.timeout, self.max_retries = api_key, timeout, max_retries
        self._opener = (urllib.request.build_opener(urllib.request.ProxyHandler({})) if is_loopback(self.base_url)
                        else urllib.request.build_opener())

    def url(self, path: str, root: bool = False) -> str:
        return (self.root if root else self.base_url) + path

    def request(self, method: str, url: str, body: dict | None = None, check: Callable[[Any], None] | None = None,
                retries: int | None = None, timeout: float | None = None) -> Any:
        """The decoded JSON answer of `method url`; ScirlError (one line, naming the URL) once retries are spent,
        HTTPStatusError at once on a 4xx answer that retrying cannot fix."""
        retries = self.max_retries if retries is None else retries
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                    answer = json.loads(resp.read().decode("utf-8"))
                if check is not None:
                    check(answer)
                return answer
            except urllib.error.HTTPError as e:
                with e:
                    message = _error_message(e.read())
                if e.code not in RETRYABLE_STATUS:
                    raise HTTPStatusError(f"rollout.engine=openai: {method} {url} failed: HTTP {e.code}: {message}",
                                          e.code) from None
                last = f"HTTP {e.code}: {message}"
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError,
                    http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                last = f"{type(reason).__name__}: {one_line(reason) or 'no answer'}"
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last = f"no answer within {timeout or self.timeout:g} s (rollout.request_timeout)"
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                last = f"the answer is not JSON ({one_line(e, 120)})"
            except BadResponse as e:
                last = one_line(e)
        raise ScirlError(f"rollout.engine=openai: {method} {url} failed after {retries + 1} attempt(s): {last}")
