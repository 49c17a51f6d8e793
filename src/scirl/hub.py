"""Fail fast when the Hugging Face Hub cannot be reached: one probe and one line, not a minute of retries.

huggingface_hub retries every request five times with back-off (about 25 s per file, 50 s for a model) and then
prints a message about the network that names no config key. Before scirl asks the hub for a model or a dataset
it calls `hub_kwargs`: with HF_HUB_OFFLINE set, or the hub unreachable (one TCP connect to the endpoint, 3 s at
most, skipped when a proxy is configured), a model that is in the local cache loads from it, and anything else
is a one-line error naming the key, the repo and the reason. `is_loopback` tells the HTTP clients (judge, openai
engine) which URLs must bypass a proxy.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from urllib.parse import urlparse

from scirl.errors import ScirlError

PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def offline_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=None)
def _probe(url: str) -> str | None:
    parsed = urlparse(url)
    host = parsed.hostname or url
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3.0).close()
        return None
    except OSError as e:
        return f"{url} unreachable: {e.strerror or type(e).__name__}"


def hub_problem() -> str | None:
    """Why the hub cannot be used right now (offline mode, or the endpoint does not answer), else None."""
    if offline_env():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in PROXY_VARS):
        return None  # the proxy decides; a direct probe would say nothing about it
    return _probe(endpoint())


def _cached(repo_id: str, filename: str = "config.json") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:  # noqa: BLE001 - a malformed repo id is simply "not cached"
        return False


def hub_kwargs(repo_id: str, key: str, cache_file: str = "config.json") -> dict:
    """Extra from_pretrained kwargs for loading `repo_id` from the hub ({} when it is reachable, local_files_only
    when it is not but the files are cached); a one-line ScirlError when neither works."""
    problem = hub_problem()
    if problem is None:
        return {}
    if _cached(repo_id, cache_file):
        return {"local_files_only": True}
    raise ScirlError(f"{key}: cannot download {repo_id!r} from the Hugging Face Hub ({problem}) and it is not in the "
                     "local cache; use a local folder, or fill the cache where the hub is reachable")


def is_loopback(url: str) -> bool:
    """True for a URL on this machine (localhost, 127.0.0.0/8, ::1): such requests must not go through a proxy."""
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
