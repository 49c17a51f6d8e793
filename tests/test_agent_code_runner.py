"""code_interpreter wired to the sandbox: a Hermes tool call runs a real program in the sandbox and the model reads
its output, its traceback or why it was stopped; the trainer's environment stays out of reach."""

import os

import pytest

from scirl.agent.code_runner import use_sandbox
from scirl.agent.hermes import execute_calls, parse_tool_calls
from scirl.agent.tools import resolve_tools, set_code_runner
from scirl.config import load_config


@pytest.fixture(scope="module")
def tools():
    cfg = load_config(None, ["sandbox.timeout=2"])
    pool = use_sandbox(cfg.sandbox)
    yield resolve_tools(["code_interpreter"]), pool
    set_code_runner(None)


def _call(code: str) -> str:
    import json

    return f'<tool_call>{json.dumps({"name": "code_interpreter", "arguments": {"code": code}})}</tool_call>'


def test_tool_calls_run_in_the_sandbox(tools, monkeypatch):
    table, pool = tools
    monkeypatch.setenv("SCIRL_TEST_SECRET", "hunter2-planted")
    text = "".join(_call(c) for c in (
        "print(1234 * 5678)",
        "import math\nprint(math.factorial(25))",
        "1 / 0",
        "import os\nprint(os.environ.get('SCIRL_TEST_SECRET'), open('/etc/hostname').read() if 0 else 'ok')",
        "while True: pass",
        "print('', end='')",
    ))
    calls, errors = parse_tool_calls(text)
    assert len(calls) == 6 and errors == []
    ex = execute_calls(calls, table, timeout=10, max_response_len=2000)
    out = [(r.text, r.is_error) for r in ex.results]
    assert out[0] == ("7006652", False)
    assert out[1] == ("15511210043330985984000000", False)
    assert out[2][1] and "ZeroDivisionError: division by zero" in out[2][0]
    assert out[3] == ("None ok", False)  # the planted secret is not in the sandbox's environment
    assert out[4][1] and out[4][0].startswith("TimeoutError: the program ran past 2 s")
    assert out[5] == ("[no output]", False)
    assert ex.counts["errors"] == 2 and pool.tier.startswith(("bwrap", "landlock"))
    assert os.environ["SCIRL_TEST_SECRET"] == "hunter2-planted"
