"""The Hermes tool-call format (Qwen3's): tools rendered into the prompt, `<tool_call>` blocks parsed out of a
model turn, calls executed safely, and the token ids of the tool turn that the rollout appends.

- `render_tools_prompt(tokenizer, messages, tools)`: prompt ids from the chat template's own `tools=` argument; a
  template that ignores `tools=` (the bundled tiny-qwen3 one does) is a one-line ScirlError.
- `parse_tool_calls(text)`: every `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` block, in order
  (several = parallel calls). Bad JSON, a missing name, arguments not an object (a JSON string holding an object
  is accepted, as some models emit it), an unclosed block: an entry in `errors`, never an exception.
- `execute_calls(calls, tools, timeout, max_response_len)`: each call on its own daemon thread (all at once when
  `parallel`), so a tool that hangs is abandoned after `timeout` s and cannot block the trainer's exit. Raising,
  timing out, unknown tool, wrong arguments (checked against the schema: required present, no unknown names,
  JSON types), non-UTF-8 output: an error text for the model (`is_error`), counted. Texts longer than
  `max_response_len` characters are cut to that length, a marker included. An abandoned thread runs on until
  its tool returns (Python cannot kill a thread), so a tool that can hang should bound itself, as the sandbox
  runner behind code_interpreter does (it kills the program).
- `tool_response_ids(tokenizer, results)`: the ids to append after the model's end-of-turn token: the tool
  turn(s) with `<tool_response>` blocks and the opening of the next assistant turn. Computed with the chat
  template (as TRL's GRPO tool loop does): render a dummy [user, assistant-with-tool-call] conversation, then the
  same plus the tool messages with `add_generation_prompt=True`; the suffix starts after the k-th end-of-turn
  token of the longer render, k = how many the shorter one has. Counting end-of-turn tokens rather than
  comparing lengths keeps it right for templates that re-render earlier assistant turns differently (Qwen3
  drops the empty `<think>` block of an assistant turn that is no longer last). Templates without an
  end-of-turn eos must be prefix-preserving (checked). Tool texts go through the tokenizer once, here; special-
  token strings inside a tool's output are tokenized as special tokens (as apply_chat_template does).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from scirl.agent.tools import Tool, ToolNotConfigured
from scirl.errors import ScirlError


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class ToolResult:
    name: str
    text: str
    is_error: bool = False
    latency_s: float = 0.0
    timed_out: bool = False
    truncated: bool = False


@dataclass
class Execution:
    """What execute_calls returns: one ToolResult per call (in call order) and the counts."""

    results: list[ToolResult] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        r = self.results
        return {"calls": len(r), "errors": sum(x.is_error for x in r), "timeouts": sum(x.timed_out for x in r),
                "truncated": sum(x.truncated for x in r)}

    @property
    def latency_by_tool(self) -> dict[str, list[float]]:
        """Seconds per call, grouped by tool name (for the per-tool latency metric)."""
        out: dict[str, list[float]] = {}
        for x in self.results:
            out.setdefault(x.name, []).append(x.latency_s)
        return out


# ---------------------------------------------------------------- parsing

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _short(s: str, n: int = 80) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def parse_tool_calls(text: str) -> tuple[list[ToolCall], list[str]]:
    """(calls, errors) for every `<tool_call>` block in `text` (see the module docstring); never raises."""
    calls: list[ToolCall] = []
    errors: list[str] = []
    if not isinstance(text, str):
        return calls, [f"model output is a {type(text).__name__}, not text"]
    end = 0
    for m in _BLOCK.finditer(text):
        end = m.end()
        body = m.group(1).strip()
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError) as e:
            errors.append(f"invalid JSON in <tool_call>: {getattr(e, 'msg', type(e).__name__)}: {_short(body)!r}")
            continue
        if not isinstance(obj, dict):
            errors.append(f"<tool_call> must hold a JSON object, got {type(obj).__name__}")
            continue
        name = obj.get("name")
        if not isinstance(name, str) or not name.strip():
            errors.append(f"<tool_call> has no \"name\" string: {_short(body)!r}")
            continue
        args: Any = obj.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                pass
        if not isinstance(args, dict):
            errors.append(f"<tool_call> {name!r}: \"arguments\" must be a JSON object, got {type(args).__name__}")
            continue
        calls.append(ToolCall(name.strip(), args))
    if "<tool_call>" in text[end:]:
        errors.append("unclosed <tool_call> (no </tool_call> before the end of the turn)")
    return calls, errors


# ---------------------------------------------------------------- execution

_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list,
               "object": dict, "null": type(None)}


def check_arguments(tool: Tool, args: dict) -> str | None:
    """Why `args` do not fit the tool's schema (required, known names, JSON types), or None when they do."""
    params = tool.parameters or {}
    props = params.get("properties") or {}
    missing = [k for k in params.get("required", []) if k not in args]
    if missing:
        return f"missing required argument(s) {', '.join(map(repr, missing))}"
    if props and params.get("additionalProperties") is not True:
        unknown = [k for k in args if k not in props]
        if unknown:
            return f"unknown argument(s) {', '.join(map(repr, unknown))}; expected {', '.join(props)}"
    for k, v in args.items():
        want = (props.get(k) or {}).get("type")
        types = [want] if isinstance(want, str) else (want or [])
        py = tuple(_JSON_TYPES[t] for t in types if t in _JSON_TYPES)
        if py and (not isinstance(v, py) or (isinstance(v, bool) and bool not in py)):
            return f"argument {k!r} must be {' or '.join(types)}, got {type(v).__name__}"
    return None


def _to_text(out: Any) -> tuple[str, bool]:
    is_error = False
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], bool):
        out, is_error = out
    if isinstance(out, (bytes, bytearray)):
        try:
            return bytes(out).decode("utf-8"), is_error
        except UnicodeDecodeError:
            return ("error: the tool returned bytes that are not UTF-8 (shown with replacements): "
                    + bytes(out).decode("utf-8", "replace")), True
    if not isinstance(out, str):
        try:
            out = json.dumps(out, ensure_ascii=False)
        except (TypeError, ValueError):
            out = str(out)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (e.g. from surrogateescape): not tokenizable text
        return ("error: the tool returned text that is not valid UTF-8 (shown with replacements): "
                + out.encode("utf-8", "replace").decode("utf-8")), True
    return out, is_error


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to at most `limit` characters, a marker saying how many were dropped included."""
    if len(text) <= limit:
        return text, False
    marker = f"\n...[truncated {len(text) - limit} of {len(text)} characters]"
    keep = max(0, limit - len(marker))
    return (text[:keep] + marker)[:limit], True


def _call(tool: Tool, args: dict, box: dict) -> None:
    try:
        box["out"] = _to_text(tool(**args))
    except ToolNotConfigured as e:
        box["fatal"] = e
    except BaseException as e:  # noqa: BLE001 - anything the tool does wrong goes back to the model as text
        box["out"] = (f"error: {type(e).__name__}: {e}", True)
    finally:
        box["t1"] = time.monotonic()


def execute_calls(calls: Sequence[ToolCall], tools: Sequence[Tool] | dict[str, Tool], timeout: float,
                  max_response_len: int, parallel: bool = True) -> Execution:
    """Run `calls` (see the module docstring); never raises for a tool's misbehaviour."""
    table = tools if isinstance(tools, dict) else {t.name: t for t in tools}
    results: list[ToolResult | None] = [None] * len(calls)
    pending: list[tuple[int, ToolCall, threading.Thread, dict, float]] = []

    def finish(i: int, call: ToolCall, thread: threading.Thread, box: dict, t0: float) -> None:
        thread.join(max(0.0, t0 + timeout - time.monotonic()))
        latency = box.get("t1", time.monotonic()) - t0  # when the tool returned, not when we looked
        if "fatal" in box:
            raise box["fatal"]
        if thread.is_alive() or "out" not in box:
            results[i] = ToolResult(call.name, f"error: tool {call.name!r} timed out after {timeout:g}s", True,
                                    latency, timed_out=True)
        else:
            text, err = box["out"]
            results[i] = ToolResult(call.name, text, err, latency)

    for i, call in enumerate(calls):
        tool = table.get(call.name)
        problem = (f"unknown tool {call.name!r}; available: {', '.join(sorted(table)) or '(none)'}" if tool is None
                   else check_arguments(tool, call.arguments))
        if problem:
            results[i] = ToolResult(call.name, f"error: {problem}", True)
            continue
        box: dict = {}
        thread = threading.Thread(target=_call, args=(tool, dict(call.arguments), box), daemon=True,
                                  name=f"scirl-tool-{call.name}")
        t0 = time.monotonic()
        thread.start()
        if parallel:
            pending.append((i, call, thread, box, t0))
        else:
            finish(i, call, thread, box, t0)
    for item in pending:
        finish(*item)
    done = [r for r in results if r is not None]
    for r in done:
        r.text, r.truncated = truncate(r.text, max_response_len)
    return Execution(done)


def error_results(errors: Sequence[str], max_response_len: int) -> list[ToolResult]:
    """Parse errors as tool results (name "" ), so the model is told what was wrong with its call."""
    return [ToolResult("", truncate(f"error: {e}", max_response_len)[0], True) for e in errors]


# ---------------------------------------------------------------- rendering

def _ids(out: Any) -> list[int]:
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    return list(out)


def tools_missing_from(rendered: str, tools: Sequence[Tool]) -> list[str]:
    """Names of the tools whose schema a rendered prompt does not show (a template that ignores tools=)."""
    return [t.name for t in tools if f'"{t.name}"' not in rendered]


def render_tools_prompt(tokenizer: Any, messages: list[dict], tools: Sequence[Tool], **template_kwargs: Any
                        ) -> list[int]:
    """Prompt token ids with the tools' schemas rendered by the chat template's own `tools=` argument."""
    schemas = [t.schema for t in tools]
    text = tokenizer.apply_chat_template(messages, tools=schemas or None, add_generation_prompt=True,
                                         tokenize=False, **template_kwargs)
    missing = tools_missing_from(text, tools)
    if missing:
        raise ScirlError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'this tokenizer')!r} ignores "
                         f"tools= (the schema of {missing[0]!r} is not in the rendered prompt): use a model whose "
                         f"template renders tools (e.g. Qwen3's)")
    return _ids(tokenizer.apply_chat_template(messages, tools=schemas or None, add_generation_prompt=True,
                                              tokenize=True, return_dict=False, **template_kwargs))


def tool_response_ids(tokenizer: Any, results: Sequence[ToolResult | str], include_turn_end: bool = False,
                      **template_kwargs: Any) -> list[int]:
    """Ids that follow the model's end-of-turn token: the tool turn(s) and the next assistant header (see the
    module docstring). `include_turn_end=True` prepends the end-of-turn token, for a turn cut before it."""
    msgs = [{"role": "tool", "name": r.name, "content": r.text} if isinstance(r, ToolResult)
            else {"role": "tool", "name": "tool", "content": str(r)} for r in results]
    if not msgs:
        raise ScirlError("tool_response_ids needs at least one tool result")
    dummy = [{"role": "user", "content": "x"},
             {"role": "assistant", "content": "",
              "tool_calls": [{"type": "function", "function": {"name": msgs[0]["name"] or "tool", "arguments": {}}}]}]
    render = lambda m, gen: _ids(tokenizer.apply_chat_template(  # noqa: E731
        m, add_generation_prompt=gen, tokenize=True, return_dict=False, **template_kwargs))
    prefix, full = render(dummy, False), render(dummy + msgs, True)
    eos = tokenizer.eos_token_id
    k = prefix.count(eos) if eos is not None else 0
    eos_at = [i for i, t in enumerate(full) if t == eos] if k else []
    if k and len(eos_at) > k:  # Qwen3 renders "<|im_end|>\n": the cut is after the eos, the "\n" is ours
        suffix = full[eos_at[k - 1] + 1:]
        return ([eos] + suffix) if include_turn_end else suffix
    if full[: len(prefix)] != prefix:
        raise ScirlError("the chat template is not prefix-preserving and has no end-of-turn eos token: cannot "
                         "append tool turns without re-rendering the conversation")
    if include_turn_end:
        raise ScirlError("include_turn_end needs a template whose turns end with the eos token")
    return full[len(prefix):]
