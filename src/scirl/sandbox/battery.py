"""The escape battery: runs every attack of scirl.sandbox.attacks and checks the host after each one.

Shared by `scirl sandbox selftest` and tests/test_sandbox_escape.py, so the command and the tests try the same
attacks. Besides each attack's own check: no file appeared in /usr or the repository, no process of the worker's
uid outlived the run, the planted secret was never printed, the 127.0.0.1 server got no request.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import secrets
import threading
import time

from scirl.sandbox.attacks import ATTACKS, SECRET_ENV, Attack, Context, default_check

__all__ = ["ATTACKS", "SECRET_ENV", "Attack", "Context", "attempt", "context", "run_all"]


def attempt(sandbox, attack: Attack, ctx: Context) -> tuple[bool, str, object]:
    """Run one attack: (contained, detail, result)."""
    if attack.before is not None:
        sandbox.run(attack.before(ctx), timeout=attack.timeout)
    ctx.hits.clear()
    r = sandbox.run(attack.code(ctx), timeout=attack.timeout)
    why = (attack.check or default_check)(r, ctx)
    for path in ("/usr/scirl-pwned", os.path.join(ctx.repo, "pwned.txt")):
        if os.path.exists(path):
            why = why or f"{path} exists on the host"
    left = _leftover(sandbox)
    why = why or (f"processes of {sandbox.tier.user} outlived the run: {left}" if left else "")
    lines = r.stdout.strip().splitlines()
    return not why, why or (lines[-1][:160] if lines else f"exit {r.returncode}"), r


def _leftover(sandbox, wait: float = 3.0) -> list[int]:
    """Pids still running as the worker's dedicated uid after a run (none expected); [] without such a uid."""
    from scirl.sandbox.runner import uid_pids

    uid = sandbox.tier.uid if sandbox.tier.dedicated else None
    if uid is None:
        return []
    deadline = time.monotonic() + wait
    while (pids := uid_pids(uid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


@contextlib.contextmanager
def context(repo: str):
    """Plant a secret in this process's environment and start a 127.0.0.1 / ::1 HTTP server that counts hits."""
    hits: list = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"secret page")

        def log_message(self, *args):
            pass

    class Server6(http.server.ThreadingHTTPServer):
        import socket as _s
        address_family = _s.AF_INET6

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    servers = [server]
    with contextlib.suppress(OSError):
        servers.append(Server6(("::1", port), Handler))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    secret = "s3cr3t-" + secrets.token_hex(8)
    old = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = secret
    try:
        yield Context(secret, port, os.path.abspath(repo), os.getpid(), hits)
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        if old is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = old


def run_all(sandbox, ctx: Context, report=print) -> tuple[int, int]:
    """Every attack; report(line) per attack; (escaped, known gaps of this tier that were not contained)."""
    escaped = gaps = 0
    for attack in ATTACKS:
        t = time.monotonic()
        ok, detail, _ = attempt(sandbox, attack, ctx)
        gap = not ok and sandbox.tier.kind in attack.gaps
        escaped += not ok and not gap
        gaps += gap
        word = "contained" if ok else "GAP      " if gap else "ESCAPED  "
        report(f"{word}  {attack.name:<32} {time.monotonic() - t:5.2f} s  {detail}")
    return escaped, gaps
