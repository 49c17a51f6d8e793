"""Tools (registry, calculator, user tools) and the Hermes format (parse, render, tool-turn ids, execution)."""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import pytest

from scirl.agent import tools as tools_mod
from scirl.agent.hermes import (ToolCall, ToolResult, error_results, execute_calls, parse_tool_calls,
                                render_tools_prompt, tool_response_ids)
from scirl.agent.tools import CalcError, Tool, ToolNotConfigured, calculate, resolve_tools, set_code_runner
from scirl.errors import ScirlError

ASSETS = Path(tools_mod.__file__).resolve().parents[1] / "assets" / "tiny-qwen3"


# ---------------------------------------------------------------- registry

def test_builtins_resolve_with_schemas():
    calc, code = resolve_tools(["calculator", "code_interpreter"])
    assert (calc.name, code.name) == ("calculator", "code_interpreter")
    assert calc.schema["type"] == "function"
    assert calc.schema["function"]["parameters"]["required"] == ["expression"]
    assert code.schema["function"]["parameters"]["required"] == ["code"]
    assert calc.fn(expression="2+3") == "5"


def test_unknown_tool_is_one_line_with_suggestion():
    with pytest.raises(ScirlError) as e:
        resolve_tools(["calculater"])
    msg = str(e.value)
    assert "\n" not in msg
    assert "unknown tool 'calculater'. Did you mean 'calculator'?" in msg
    assert "code_interpreter" in msg


def test_duplicate_tool_rejected():
    with pytest.raises(ScirlError, match="listed twice"):
        resolve_tools(["calculator", "calculator"])


def test_user_tool_from_file(tmp_path):
    f = tmp_path / "my_tools.py"
    f.write_text(textwrap.dedent('''
        def search(query: str, k: int = 3) -> str:
            """Search the notes.

            Args:
                query: what to look for
                k: how many hits
            """
            return f"{k} hits for {query}"

        def nodoc(x):
            return x

        from scirl.agent.tools import Tool
        ready = Tool("ready", "Made by hand.", {"type": "object", "properties": {}}, lambda: "ready!")
    '''))
    (tool,) = resolve_tools([f"{f}:search"])
    assert tool.name == "search"
    assert tool.description == "Search the notes."
    assert tool.parameters == {"type": "object",
                               "properties": {"query": {"type": "string", "description": "what to look for"},
                                              "k": {"type": "integer", "description": "how many hits"}},
                               "required": ["query"]}
    ex = execute_calls([ToolCall("search", {"query": "pi", "k": 2})], [tool], timeout=5, max_response_len=100)
    assert [r.text for r in ex.results] == ["2 hits for pi"]
    (ready,) = resolve_tools([f"{f}:ready"])  # an attribute that already is a Tool is used as is
    assert (ready.name, ready.fn()) == ("ready", "ready!")
    with pytest.raises(ScirlError, match=r"^tool '.*:nodoc': cannot build its JSON schema"):
        resolve_tools([f"{f}:nodoc"])
    with pytest.raises(ScirlError, match=r"^tool '.*:missing': .* has no attribute 'missing'"):
        resolve_tools([f"{f}:missing"])
    with pytest.raises(ScirlError, match=r"^tool 'no/such.py:f': file"):
        resolve_tools(["no/such.py:f"])


def test_user_tool_from_module(tmp_path, monkeypatch):
    pkg = tmp_path / "toolpkg_scirl_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tools.py").write_text(textwrap.dedent('''
        def add(a: int, b: int) -> int:
            """Add two integers.

            Args:
                a: first
                b: second
            """
            return a + b
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    (tool,) = resolve_tools(["toolpkg_scirl_test.tools:add"])
    ex = execute_calls([ToolCall("add", {"a": 2, "b": 40})], [tool], timeout=5, max_response_len=100)
    assert ex.results[0].text == "42" and not ex.results[0].is_error


def test_code_interpreter_uses_injected_runner():
    (code,) = resolve_tools(["code_interpreter"])
    set_code_runner(None)
    with pytest.raises(ToolNotConfigured, match="no code runner is configured"):
        execute_calls([ToolCall("code_interpreter", {"code": "print(1)"})], [code], 1, 100)
    seen = []
    set_code_runner(lambda c, t: (seen.append((c, t)) or "1\n", False), timeout=3)
    try:
        ex = execute_calls([ToolCall("code_interpreter", {"code": "print(1)"})], [code], 1, 100)
    finally:
        set_code_runner(None)
    assert seen == [("print(1)", 3.0)]
    assert (ex.results[0].text, ex.results[0].is_error) == ("1\n", False)


# ---------------------------------------------------------------- calculator

@pytest.mark.parametrize("expr, want", [
    ("1234*5678", "7006652"), ("0.1+0.2", "0.3"), ("2**100", "1267650600228229401496703205376"),
    ("1/3", "1/3 (≈ 0.33333333333333333333)"), ("-(1.5)^2", "-2.25"), ("7 // 2 + 7 % 2", "4"),
    ("123456789012345678901234567890 * 10", "1234567890123456789012345678900"), ("1e-3*3", "0.003"),
    ("2**-3", "0.125"), ("3.14159 - 0.00159", "3.14"), ("(-1)**10001 + 1**(10**400)", "0"),
])
def test_calculator_exact(expr, want):
    assert calculate(expr) == want


def test_calculator_largest_results_print():
    assert calculate("2**13000") == str(2**13000)  # 3,914 digits: inside the bound and Python's str limit


@pytest.mark.parametrize("expr, why", [
    ("__import__('os')", "not allowed: Call"), ("().__class__", "not allowed: Attribute"), ("x + 1", "not allowed: Name"),
    ("'a' * 3", "not allowed: Constant"), ("1/0", "division by zero"), ("9**9**9", "result too large"),
    ("2 ** 0.5", "only integer exponents"), ("1 +", "cannot parse"), ("2**14001", "result too large"),
    ("(2**7000)**2 * 4", "result too large"), ("0.5**-14001", "result too large"),
])
def test_calculator_refuses(expr, why):
    with pytest.raises(CalcError, match=why):
        calculate(expr)


# ---------------------------------------------------------------- parsing

def test_parse_single_and_parallel():
    text = ('I will compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "2*3"}}\n</tool_call>\n'
            '<tool_call>{"name": "code_interpreter", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call>')
    calls, errors = parse_tool_calls(text)
    assert calls == [ToolCall("calculator", {"expression": "2*3"}), ToolCall("code_interpreter", {"code": "print(1)"})]
    assert errors == []
    assert parse_tool_calls("no calls here, \\boxed{4}") == ([], [])


def test_parse_malformed():
    text = ('<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>'
            '<tool_call>{"arguments": {}}</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": [1, 2]}</tool_call>'
            '<tool_call>[1]</tool_call>'
            '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>'
            '<tool_call>{"name": "calc')
    calls, errors = parse_tool_calls(text)
    assert calls == [ToolCall("calculator", {"expression": "1+1"})]
    assert errors == [
        "invalid JSON in <tool_call>: Expecting value: '{\"name\": \"calculator\", \"arguments\": {\"expression\":'",
        "<tool_call> has no \"name\" string: '{\"arguments\": {}}'",
        "<tool_call> 'calculator': \"arguments\" must be a JSON object, got list",
        "<tool_call> must hold a JSON object, got list",
        "unclosed <tool_call> (no </tool_call> before the end of the turn)",
    ]
    assert parse_tool_calls(None) == ([], ["model output is a NoneType, not text"])


# ---------------------------------------------------------------- execution

def _tool(name, fn, props=None, required=None):
    props = props or {"x": {"type": "integer"}}
    return Tool(name, name, {"type": "object", "properties": props, "required": required or list(props)}, fn)


def test_execute_calls_misbehaving_tools():
    def boom(x):
        raise RuntimeError("kaput")

    def sleepy(x):
        time.sleep(30)

    tools = [_tool("boom", boom), _tool("sleepy", sleepy), _tool("huge", lambda x: "y" * 10_000_000),
             _tool("bytes", lambda x: b"ok \xff\xfe bad"), _tool("ok", lambda x: x * 2),
             _tool("surrogate", lambda x: "a\udcff")]
    calls = [ToolCall("boom", {"x": 1}), ToolCall("sleepy", {"x": 1}), ToolCall("huge", {"x": 1}),
             ToolCall("bytes", {"x": 1}), ToolCall("nope", {"x": 1}), ToolCall("ok", {"y": 1}),
             ToolCall("ok", {"x": "1"}), ToolCall("ok", {}), ToolCall("ok", {"x": 21}), ToolCall("surrogate", {"x": 1})]
    t0 = time.monotonic()
    ex = execute_calls(calls, tools, timeout=0.2, max_response_len=200)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.5  # the sleeping tool is abandoned after 0.2 s, the others ran alongside it
    r = ex.results
    assert [x.name for x in r] == [c.name for c in calls]
    assert r[0].text == "error: RuntimeError: kaput"
    assert r[1].text == "error: tool 'sleepy' timed out after 0.2s" and r[1].timed_out
    assert 0.2 <= r[1].latency_s < 1.0
    assert len(r[2].text) == 200 and r[2].truncated and not r[2].is_error
    assert r[2].text.endswith("\n...[truncated 9999800 of 10000000 characters]")
    assert r[3].is_error and r[3].text.startswith("error: the tool returned bytes that are not UTF-8")
    assert r[3].text.endswith("ok \ufffd\ufffd bad")
    assert r[4].text == "error: unknown tool 'nope'; available: boom, bytes, huge, ok, sleepy, surrogate"
    assert r[5].text == "error: missing required argument(s) 'x'"
    assert r[6].text == "error: argument 'x' must be integer, got str"
    assert r[7].text == "error: missing required argument(s) 'x'"
    assert (r[8].text, r[8].is_error) == ("42", False)
    assert r[9].is_error and r[9].text.endswith("a?")
    assert ex.counts == {"calls": 10, "errors": 8, "timeouts": 1, "truncated": 1}
    lat = ex.latency_by_tool
    assert sorted(lat) == ["boom", "bytes", "huge", "nope", "ok", "sleepy", "surrogate"]
    assert lat["ok"][:3] == [0.0, 0.0, 0.0] and lat["ok"][3] < 0.5  # 3 refused before running, 1 ran
    assert lat["sleepy"][0] >= 0.2 and lat["nope"] == [0.0]
    # unknown argument names are refused too
    ex2 = execute_calls([ToolCall("ok", {"x": 1, "z": 2})], tools, 1, 200, parallel=False)
    assert ex2.results[0].text == "error: unknown argument(s) 'z'; expected x"
    assert [e.text for e in error_results(["bad JSON"], 100)] == ["error: bad JSON"]


def test_execute_sequential_respects_timeout_per_call():
    tools = [_tool("sleepy", lambda x: time.sleep(x) or "woke")]
    t0 = time.monotonic()
    ex = execute_calls([ToolCall("sleepy", {"x": 5}), ToolCall("sleepy", {"x": 0})], tools, 0.2, 100, parallel=False)
    assert time.monotonic() - t0 < 1.5
    assert [x.text for x in ex.results] == ["error: tool 'sleepy' timed out after 0.2s", "woke"]


# ---------------------------------------------------------------- rendering

@pytest.fixture(scope="module")
def tiny_tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(ASSETS))


@pytest.fixture(scope="module")
def qwen3_tok(tmp_path_factory):
    """The tiny tokenizer with Qwen3's official chat template (the bundled one ignores tools). The template file is
    a byte-for-byte copy of the one TRL ships as `trl/chat_templates/qwen3.jinja` (Qwen3's, Apache-2.0)."""
    from transformers import AutoTokenizer
    d = tmp_path_factory.mktemp("tiny-qwen3-tools")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ASSETS / f, d / f)
    shutil.copy(Path(__file__).parent / "helpers" / "qwen3_chat_template.jinja", d / "chat_template.jinja")
    return AutoTokenizer.from_pretrained(str(d))


def test_bundled_tiny_template_ignores_tools(tiny_tok):
    with pytest.raises(ScirlError, match="ignores tools="):
        render_tools_prompt(tiny_tok, [{"role": "user", "content": "hi"}], resolve_tools(["calculator"]))


def test_render_tools_prompt_qwen3(qwen3_tok):
    tools = resolve_tools(["calculator", "code_interpreter"])
    msgs = [{"role": "user", "content": "What is 1234*5678?"}]
    ids = render_tools_prompt(qwen3_tok, msgs, tools)
    text = qwen3_tok.decode(ids)
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert '{"type": "function", "function": {"name": "calculator", "description": "Evaluate' in text
    assert '"required": ["code"]' in text
    assert text.endswith("<|im_start|>user\nWhat is 1234*5678?<|im_end|>\n<|im_start|>assistant\n")
    assert ids == qwen3_tok.apply_chat_template(msgs, tools=[t.schema for t in tools], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)


def test_tool_response_ids_match_full_render(qwen3_tok):
    """prompt + model turn + tool_response_ids (+ model turn + ...) == the template's render of the whole
    conversation, token for token: appending never needs re-tokenizing. Each model turn opens with a non-empty
    <think> block, as Qwen3 generates it: that is where Qwen3's template is prefix-stable (with no reasoning it
    re-renders the last assistant turn with an empty <think> block, which the rollout never does)."""
    tok = qwen3_tok
    tools = resolve_tools(["calculator"])
    msgs = [{"role": "user", "content": "What is 1234*5678 + 1?"}]
    turn1 = '<think>\nmultiply first\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1234*5678"}}\n</tool_call>'
    turn2 = ('<think>\nnow add\n</think>\n\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "7006652+1"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2"}}\n</tool_call>')
    turn3 = "<think>\ndone\n</think>\n\nThe answer is \\boxed{7006653}."
    ids = render_tools_prompt(tok, msgs, tools)
    for turn in (turn1, turn2, turn3):
        ids += tok.encode(turn, add_special_tokens=False) + [tok.eos_token_id]  # what the model generates
        calls, errors = parse_tool_calls(turn)
        assert errors == []
        if calls:
            ex = execute_calls(calls, tools, timeout=5, max_response_len=100)
            ids += tool_response_ids(tok, ex.results)
    full_msgs = msgs + [
        {"role": "assistant", "content": turn1}, {"role": "tool", "content": "7006652"},
        {"role": "assistant", "content": turn2}, {"role": "tool", "content": "7006653"}, {"role": "tool", "content": "2"},
        {"role": "assistant", "content": turn3}]
    want = tok.apply_chat_template(full_msgs, tools=[t.schema for t in tools], tokenize=True, return_dict=False)
    assert ids == want[: len(ids)]
    assert tok.decode(want[len(ids):]) == "\n"  # the template closes the final turn with "<|im_end|>\n"
    suffix = tool_response_ids(tok, [ToolResult("calculator", "7006653"), ToolResult("calculator", "2")])
    assert tok.decode(suffix) == ("\n<|im_start|>user\n<tool_response>\n7006653\n</tool_response>\n<tool_response>\n"
                                  "2\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert tool_response_ids(tok, ["x"], include_turn_end=True)[0] == tok.eos_token_id
    no_think = tool_response_ids(tok, ["x"], enable_thinking=False)  # template kwargs reach the next header
    assert tok.decode(no_think).endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
