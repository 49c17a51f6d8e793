"""The `judge` reward (Physics-R1 AND-of-subparts) against a real local HTTP server started here.

The server is a few lines of http.server that answer with a scripted verdict per subpart and count requests (the
tiny model never writes VERDICT lines). The judge against a real `scirl serve` is in test_serve.py.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port
from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards import judge as judge_mod
from scirl.rewards.pool import RewardPool


class VerdictServer(ThreadingHTTPServer):
    """A real local judge: answers each chat completion with `script[reference]` (the reference answer shown in
    the default prompt), counting requests. A dict value {"status": code} answers that HTTP error instead."""

    daemon_threads = True

    def __init__(self):
        self.script: dict[str, object] = {}
        self.requests = 0
        self.prompts: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _VerdictHandler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _VerdictHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with self.server.lock:
            self.server.requests += 1
            self.server.prompts.append(prompt)
        ref = re.search(r"## Reference answer for this part\n(.*?)\n\n", prompt, re.S).group(1)
        reply = self.server.script.get(ref, "no idea")
        if isinstance(reply, dict):
            status, data = reply["status"], b'{"error": {"message": "scripted", "type": "server_error"}}'
        else:
            status = 200
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                            "finish_reason": "stop"}], "usage": {}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def verdicts():
    srv = VerdictServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _fresh_judge_cache():
    judge_mod.clear_cache()
    yield
    judge_mod.clear_cache()


def three_part_sample() -> Sample:
    subparts = [{"question": "(a) the speed", "answer": "ref-a"}, {"question": "(b) the time", "answer": "ref-b"},
                {"answer": "ref-c"}]
    return Sample("p1", [{"role": "user", "content": "A ball is thrown up. Find (a), (b), (c)."}], "",
                  answer_type="subparts", metadata={"subparts": subparts})


RESPONSE = "<think>scratch \\boxed{0}</think>(a) 3 m/s (b) 2 s (c) \\boxed{5\\,\\mathrm{m}}"


# ------------------------------------------------------------------------------ judge vs a scripted server
def test_all_subparts_correct_scores_one(verdicts):
    verdicts.script = {"ref-a": "Matches.\nVERDICT: CORRECT", "ref-b": "**Verdict:** correct",
                       "ref-c": "VERDICT: INCORRECT ... on reflection\nVERDICT: CORRECT"}
    res = judge_mod.judge(three_part_sample(), RESPONSE, {"endpoint": verdicts.endpoint, "model": "j"})
    assert res.score == 1.0 and res.pred == "5\\,\\mathrm{m}"
    assert res.components == {"acc": 1.0, "subparts": 3.0, "subparts_correct": 3.0, "unparseable": 0.0,
                              "judge_errors": 0.0}
    assert verdicts.requests == 3
    first = verdicts.prompts[0]
    assert "A ball is thrown up" in first and "Part 1 of 3: (a) the speed" in first and "ref-a" in first
    assert "(c) \\boxed{5\\,\\mathrm{m}}" in first and "scratch" not in first  # the policy's thinking is hidden
    assert "Part 3 of 3 (the 3rd answer" in verdicts.prompts[2]


def test_one_incorrect_or_unparseable_subpart_scores_zero(verdicts):
    verdicts.script = {"ref-a": "VERDICT: CORRECT", "ref-b": "VERDICT: INCORRECT", "ref-c": "VERDICT: CORRECT"}
    res = judge_mod.judge(three_part_sample(), RESPONSE, {"endpoint": verdicts.endpoint})
    assert res.score == 0.0 and res.components["subparts_correct"] == 2.0 and res.components["unparseable"] == 0.0

    verdicts.script["ref-b"] = "I think it is right."  # no verdict line
    res = judge_mod.judge(three_part_sample(), RESPONSE + " (final)", {"endpoint": verdicts.endpoint})
    assert res.score == 0.0
    assert res.components == {"acc": 0.0, "subparts": 3.0, "subparts_correct": 2.0, "unparseable": 1.0,
                              "judge_errors": 0.0}


def test_http_errors_and_server_down_score_zero_without_raising(verdicts):
    verdicts.script = {"ref-a": "VERDICT: CORRECT", "ref-b": {"status": 500}, "ref-c": "VERDICT: CORRECT"}
    res = judge_mod.judge(three_part_sample(), RESPONSE, {"endpoint": verdicts.endpoint})
    assert res.score == 0.0 and res.components["judge_errors"] == 1.0 and res.components["subparts_correct"] == 2.0

    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    res = judge_mod.judge(three_part_sample(), RESPONSE, {"endpoint": down, "timeout": 5, "retries": 1})
    assert res.score == 0.0 and res.components["judge_errors"] == 3.0 and res.components["subparts_correct"] == 0.0

    with pytest.raises(ScirlError, match="endpoint"):
        judge_mod.judge(three_part_sample(), RESPONSE, {"endpoint": ""})


def test_cached_verdicts_do_not_query_again(verdicts, tmp_path):
    verdicts.script = {k: "VERDICT: CORRECT" for k in ("ref-a", "ref-b", "ref-c")}
    info = {"endpoint": verdicts.endpoint, "model": "j", "cache_dir": str(tmp_path / "cache")}
    assert judge_mod.judge(three_part_sample(), RESPONSE, info).score == 1.0
    assert verdicts.requests == 3
    assert judge_mod.judge(three_part_sample(), RESPONSE, info).score == 1.0  # in-memory hit
    assert verdicts.requests == 3
    lines = (tmp_path / "cache" / judge_mod.CACHE_FILE).read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(x)["verdict"] == "CORRECT" for x in lines)

    judge_mod.clear_cache()  # a fresh process-level cache: the on-disk file answers
    assert judge_mod.judge(three_part_sample(), RESPONSE, info).score == 1.0
    assert verdicts.requests == 3

    judge_mod.clear_cache()  # ... also in a forked reward worker
    with RewardPool("judge", workers=1, timeout=30) as pool:
        results, stats = pool.score([(three_part_sample(), RESPONSE, info)])
    assert results[0].score == 1.0 and stats == {"timeouts": 0, "errors": 0}
    assert verdicts.requests == 3

    # a different response, model or template is a different key
    assert judge_mod.judge(three_part_sample(), RESPONSE + ".", info).score == 1.0
    assert verdicts.requests == 6
    assert judge_mod.judge(three_part_sample(), RESPONSE, dict(info, model="other")).score == 1.0
    assert verdicts.requests == 9


def test_unparseable_and_errors_are_not_cached(verdicts):
    verdicts.script = {"ref-a": "hmm", "ref-b": {"status": 503}, "ref-c": "VERDICT: CORRECT"}
    info = {"endpoint": verdicts.endpoint}
    judge_mod.judge(three_part_sample(), RESPONSE, info)
    verdicts.script = {k: "VERDICT: CORRECT" for k in ("ref-a", "ref-b", "ref-c")}
    assert judge_mod.judge(three_part_sample(), RESPONSE, info).score == 1.0
    assert verdicts.requests == 5  # a and b asked again, c from the cache


def test_single_answer_item_uses_sample_answer(verdicts):
    verdicts.script = {"42 J": "VERDICT: CORRECT"}
    sample = Sample("s", [{"role": "user", "content": "Energy?"}], "42 J")
    res = judge_mod.judge(sample, "It is 42 J.", {"endpoint": verdicts.endpoint})
    assert res.score == 1.0 and res.pred is None and res.components["subparts"] == 1.0
    assert "The whole problem" in verdicts.prompts[0]


# ---------------------------------------------------------------------------------------------- pure helpers
def test_parse_verdict():
    pv = judge_mod.parse_verdict
    assert pv("blah\nVERDICT: CORRECT") == "CORRECT"
    assert pv("VERDICT: INCORRECT") == "INCORRECT"
    assert pv("verdict:incorrect.") == "INCORRECT"
    assert pv("**VERDICT**: **CORRECT**") == "CORRECT"
    assert pv("VERDICT: CORRECT\nwait, no.\nVERDICT: INCORRECT") == "INCORRECT"  # the last one counts
    assert pv("<think>VERDICT: CORRECT</think>VERDICT: INCORRECT") == "INCORRECT"
    assert pv("<think>VERDICT: CORRECT ... (cut off)") is None
    for bad in ("CORRECT", "VERDICT: CORRECTION", "VERDICT: maybe", "", None):
        assert pv(bad) is None


def test_render_prompt_keeps_latex_braces_and_subparts_validation():
    out = judge_mod.render_prompt("{question}|{reference}|\\frac{a}{b}|{other}", question="Q {response}", reference="R",
                                  subpart="S", response="X")
    assert out == "Q {response}|R|\\frac{a}{b}|{other}"
    bad = Sample("b", [{"role": "user", "content": "?"}], "", metadata={"subparts": [{"question": "no answer"}]})
    with pytest.raises(ScirlError, match="answer"):
        judge_mod.subparts_of(bad, {})
    assert judge_mod.subparts_of(Sample("c", [], "1"), {"subparts": ["x", "y"]}) == [
        {"question": "", "answer": "x"}, {"question": "", "answer": "y"}]
