"""`scirl serve`: real server subprocesses (`python -m scirl.cli serve --port 0`) on the tiny model.

Most tests share one module-wide server on the bundled model (256-token context). The lifetime tests (SIGTERM /
SIGINT with generations in flight, clients that vanish mid-generation) start their own servers on a copy of the
tiny model with a 64k context, so that a request with min_tokens=max_tokens=30000 is still generating when the
test acts: nothing depends on timing, and a generation that was not stopped would show as 30000 tokens (or a
missed deadline). Every server is started with `procs.popen`, so it dies with the test process.
"""

from __future__ import annotations

import contextlib
import http.client as httpc
import json
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from scirl import procs
from scirl.data.sample import Sample
from scirl.rewards.base import get_reward

SERVE = [sys.executable, "-m", "scirl.cli", "serve"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
READY = re.compile(r"^serving (\S+) on (http://\S+)$")
BUNDLED = Path(__file__).resolve().parents[1] / "src" / "scirl" / "assets" / "tiny-qwen3"
LONG = 30000  # tokens a "long" request asks for (min_tokens = max_tokens): minutes of decoding on the tiny model
DEADLINE = 120.0  # generous: another test suite may share the two cores


# ---------------------------------------------------------------------------------------------- helpers
def http(method: str, url: str, body: bytes | dict | None = None, timeout: float = 60.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def chat(url: str, content: str, model: str = "builtin:tiny-qwen3", **kw) -> tuple[int, dict]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **kw}
    return http("POST", url + "/v1/chat/completions", body)


def raw_post(host: str, port: int, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def long_request(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
            "max_tokens": LONG, "min_tokens": LONG}


def wait_for(predicate, what: str, deadline: float = DEADLINE, interval: float = 0.02):
    """Poll `predicate()` until it returns something truthy (returned) or fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline:.0f}s waiting for {what}")
        time.sleep(interval)  # a poll interval, not a synchronisation


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    model_id: str
    stderr_path: Path

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def health(self) -> dict:
        return http("GET", self.url + "/health")[1]

    def stderr(self) -> str:
        return self.stderr_path.read_text()


@contextlib.contextmanager
def running_server(folder: Path, *flags: str) -> Iterator[Server]:
    """A `scirl serve --port 0` subprocess (dies with this process); stopped (SIGTERM, then SIGKILL) on exit."""
    err_path = folder / f"serve-{time.monotonic_ns()}.stderr"
    with open(err_path, "w") as err:
        proc = procs.popen(SERVE + ["--port", "0", "--threads", "1", *flags], stdout=subprocess.PIPE, stderr=err,
                           text=True, env=ENV)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        end = time.monotonic() + DEADLINE
        while True:
            try:
                m = READY.match(lines.get(timeout=0.5).strip())
            except queue.Empty:
                m = None
                if proc.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"scirl serve did not come up (rc={proc.poll()}):\n{err_path.read_text()[-2000:]}")
            if m:
                break
        yield Server(proc, m.group(2), m.group(1), err_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=30)
        proc.stdout.close()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("serve")) as srv:
        yield srv


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """The bundled tiny model with a 64k context (RoPE has no fixed limit), for requests that run for minutes."""
    folder = tmp_path_factory.mktemp("long") / "tiny-qwen3-64k"
    shutil.copytree(BUNDLED, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 1 << 16
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


# ---------------------------------------------------------------------------------------------- the API
def test_health_and_models(tiny_server):
    url, model_id = tiny_server.url, tiny_server.model_id
    assert model_id == "builtin:tiny-qwen3"
    status, health = http("GET", url + "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == model_id
    assert health["in_flight"] == 0 and isinstance(health["generated_tokens"], int)
    status, models = http("GET", url + "/v1/models")
    assert status == 200 and models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [model_id] and models["data"][0]["object"] == "model"


def test_chat_completion_shape_and_greedy_determinism(tiny_server):
    url, model_id = tiny_server.url, tiny_server.model_id
    before = tiny_server.health()["generated_tokens"]
    status, out = chat(url, "What is 2+2?", temperature=0, max_tokens=24)
    assert status == 200, out
    assert out["object"] == "chat.completion" and out["model"] == model_id and out["id"].startswith("chatcmpl-")
    assert isinstance(out["created"], int)
    (choice,) = out["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = out["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # /health counts decoding steps: one per completion token here (n=1, the EOS step included)
    assert tiny_server.health()["generated_tokens"] - before == usage["completion_tokens"]
    status2, out2 = chat(url, "What is 2+2?", temperature=0, max_tokens=24)
    assert status2 == 200 and out2["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_sampling_n_and_seed(tiny_server):
    url = tiny_server.url
    status, a = chat(url, "hi", temperature=1.0, top_p=0.9, n=3, seed=7, max_tokens=8)
    assert status == 200 and [c["index"] for c in a["choices"]] == [0, 1, 2]
    _, b = chat(url, "hi", temperature=1.0, top_p=0.9, n=3, seed=7, max_tokens=8)
    assert [c["message"]["content"] for c in a["choices"]] == [c["message"]["content"] for c in b["choices"]]


def test_seed_range_is_what_torch_accepts(tiny_server):
    url = tiny_server.url
    for seed in (2**64 - 1, -(2**63), 0):
        status, out = chat(url, "hi", seed=seed, max_tokens=4)
        assert status == 200, (seed, out)
    for seed in (2**64, 2**80, -(2**63) - 1):
        status, err = chat(url, "hi", seed=seed, max_tokens=4)
        assert status == 400, (seed, err)
        assert err["error"]["param"] == "seed" and err["error"]["type"] == "invalid_request_error"
        assert str(seed) in err["error"]["message"]


def test_min_tokens_holds_back_eos(tiny_server):
    url = tiny_server.url
    status, free = chat(url, "hi", temperature=0, max_tokens=60)
    assert status == 200 and free["choices"][0]["finish_reason"] == "stop"  # the trained model stops by itself
    stopped_at = free["usage"]["completion_tokens"]
    assert stopped_at < 60
    status, out = chat(url, "hi", temperature=0, max_tokens=60, min_tokens=60)
    assert status == 200 and out["usage"]["completion_tokens"] == 60 and out["choices"][0]["finish_reason"] == "length"
    status, err = chat(url, "hi", max_tokens=5, min_tokens=6)
    assert status == 400 and err["error"]["param"] == "min_tokens"


def test_bad_requests_and_unknown_paths(tiny_server):
    url = tiny_server.url
    status, err = http("POST", url + "/v1/chat/completions", b"{not json")
    assert status == 400 and err["error"]["type"] == "invalid_request_error" and "JSON" in err["error"]["message"]
    for body, param in [({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
                        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
                        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
                        ({"messages": [{"role": "user", "content": "x"}], "stream": True}, "stream")]:
        status, err = http("POST", url + "/v1/chat/completions", body)
        assert status == 400 and err["error"]["param"] == param, (body, err)
    status, err = chat(url, "x" * 400)  # longer than the tiny model's 256-token context
    assert status == 400 and err["error"]["code"] == "context_length_exceeded"
    body = {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}
    status, err = http("POST", url + "/v1/chat/completions", body)
    assert status == 404 and err["error"]["code"] == "model_not_found"
    assert http("GET", url + "/nope")[0] == 404
    status, err = http("POST", url + "/v1/embeddings", {"input": "x"})
    assert status == 404 and "message" in err["error"]


def test_judge_against_tiny_model_is_unparseable_so_zero(tiny_server):
    url, model_id = tiny_server.url, tiny_server.model_id
    sample = Sample("q", [{"role": "user", "content": "2+2?"}], "4")
    short = "Q: {question} A: {reference} R: {response} Verdict?"
    info = {"endpoint": url + "/v1", "model": model_id, "prompt_template": short, "max_tokens": 16, "timeout": 60}
    res = get_reward("judge")(sample, "\\boxed{4}", info)
    assert res.score == 0.0 and res.pred == "4"
    assert res.components == {"acc": 0.0, "subparts": 1.0, "subparts_correct": 0.0, "unparseable": 1.0,
                              "judge_errors": 0.0}
    # the default prompt does not fit the tiny model's 256-token context: the server answers 400 -> a judge error
    res = get_reward("judge")(sample, "\\boxed{4}", {"endpoint": url + "/v1", "model": model_id, "max_tokens": 16})
    assert res.score == 0.0 and res.components["judge_errors"] == 1.0 and res.components["unparseable"] == 0.0


# ---------------------------------------------------------------------------------------------- the command line
def test_help_lists_every_flag(capsys):
    from scirl import cli
    from scirl.serve import main
    from scirl.serve.server import _parser

    flags = [s for action in _parser()._actions for s in action.option_strings]
    assert {"--model", "--host", "--port", "--served-model-name", "--device", "--dtype", "--threads",
            "--max-tokens", "--read-only", "--log-requests"} <= set(flags)
    for call in (lambda: cli.main(["serve", "--help"]), lambda: cli.main(["serve", "-h"]), lambda: main(["--help"])):
        assert call() == 0
        out = capsys.readouterr().out
        assert out.startswith("scirl serve [--model PATH]") or out.startswith("usage: scirl serve [--model PATH]")
        missing = [f for f in flags if f not in out]
        assert not missing, (missing, out)
    assert cli.main(["--help"]) == 0
    assert "serve: scirl serve [--model PATH]" in capsys.readouterr().out


def test_cli_errors_without_loading_a_model(capsys):
    from scirl.serve import USAGE, main

    assert "scirl serve" in USAGE
    assert main(["--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["--no-such-flag"]) == 2


def test_busy_port_fails_before_the_model_loads(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # a model path that does not exist: had the model loaded first, the error would name the model instead
        proc = procs.popen(SERVE + ["--port", str(port), "--model", str(tmp_path / "no-such-model")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2, err
    assert out == ""
    assert err.splitlines() == [f"scirl serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


# ---------------------------------------------------------------------------------------------- lifetime
def _post_in_thread(host: str, port: int, body: dict, results: list) -> threading.Thread:
    """POST on a fresh connection in a thread; appends (status, json body) or the exception it raised."""

    def run():
        conn = httpc.HTTPConnection(host, port, timeout=DEADLINE)
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            results.append((resp.status, json.loads(resp.read()), resp.getheader("Connection")))
        except Exception as e:  # noqa: BLE001 - the test asserts on it
            results.append(e)
        finally:
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGTERM])
def test_stop_signal_with_generations_in_flight_exits_cleanly(long_model, tmp_path, sig):
    """The bug: SIGTERM with a generation in flight aborted ("terminate called without an active exception").
    Now: the running generation and a queued request get 503, an idle keep-alive connection is closed, exit 0."""
    with running_server(tmp_path, "--model", str(long_model)) as srv:
        host, port = srv.address
        idle = httpc.HTTPConnection(host, port, timeout=DEADLINE)  # keep-alive, idle during the stop
        idle.request("GET", "/health")
        assert idle.getresponse().read()
        results: list = []
        running = _post_in_thread(host, port, long_request(srv.model_id), results)
        wait_for(lambda: srv.health()["generated_tokens"] > 0, "the first request to be generating")
        queued = _post_in_thread(host, port, long_request(srv.model_id), results)
        wait_for(lambda: srv.health()["in_flight"] == 2, "the second request to be queued")
        srv.proc.send_signal(sig)
        assert srv.proc.wait(timeout=DEADLINE) == 0
        running.join(timeout=DEADLINE)
        queued.join(timeout=DEADLINE)
        assert len(results) == 2, results
        for result in results:
            assert not isinstance(result, Exception), result
            status, body, connection = result
            assert status == 503 and body["error"]["code"] == "server_shutting_down", body
            assert connection == "close"
        assert idle.sock.recv(1) == b""  # the server closed the idle connection: a clean EOF
        idle.close()
        err = srv.stderr()
    assert "terminate called" not in err and "Traceback" not in err, err
    assert "scirl serve: stopping (2 request(s) in flight)" in err and err.rstrip().endswith("scirl serve: stopped")


def test_client_disconnects_stop_generation_and_log_one_line(long_model, tmp_path):
    with running_server(tmp_path, "--model", str(long_model)) as srv:
        host, port = srv.address
        # 1) a client vanishes mid-generation: the generation stops early, the server keeps serving
        with socket.create_connection((host, port), timeout=DEADLINE) as sock:
            sock.sendall(raw_post(host, port, long_request(srv.model_id)))
            wait_for(lambda: srv.health()["generated_tokens"] > 0, "the request to be generating")
        health = wait_for(lambda: (h := srv.health())["in_flight"] == 0 and h, "the abandoned generation to stop")
        generated = health["generated_tokens"]
        assert 0 < generated < LONG  # without the check it would run all 30000 steps
        status, out = chat(srv.url, "What is 2+2?", model=srv.model_id, temperature=0, max_tokens=8)
        assert status == 200 and 0 < out["usage"]["completion_tokens"] <= 8

        # 2) clients that reset the connection (SO_LINGER 0) before the answer or before sending anything
        for send in [True] * 8 + [False] * 4:
            s = socket.create_connection((host, port), timeout=DEADLINE)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if send:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n\r\n{bad}")
            s.close()  # RST
        assert chat(srv.url, "hi", model=srv.model_id, max_tokens=4)[0] == 200
        srv.proc.send_signal(signal.SIGTERM)  # joins every handler thread: stderr is complete after the exit
        assert srv.proc.wait(timeout=DEADLINE) == 0
        err = srv.stderr()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    lines = [line for line in err.splitlines() if "disconnected" in line]
    stopped = [line for line in lines if "its generation stopped" in line]
    assert len(stopped) == 1, lines
    assert re.fullmatch(rf"scirl serve: client 127\.0\.0\.1:\d+ disconnected; its generation stopped after "
                        rf"{generated} tokens", stopped[0])
    resets = [line for line in lines if line not in stopped]
    assert 1 <= len(resets) <= 12, err  # one line per reset client (a reset can also go unnoticed by the server)
    assert all(re.fullmatch(r"scirl serve: client 127\.0\.0\.1:\d+ disconnected.*\((ConnectionResetError|"
                            r"BrokenPipeError)\)", line) for line in resets), resets
