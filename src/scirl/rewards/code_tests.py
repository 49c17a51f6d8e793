"""The `code_tests` reward: run the completion's program against the row's test cases in the sandbox.

Program: the last ```python (or ```py / ```python3) fenced block of the completion, else the last fenced block of
any language; none -> score 0, component no_code=1.

Test cases (info is `{**sample.reward_info, **info}`; the first present of info["tests"], info["input_output"], sample.metadata["input_output"],
sample.answer; a JSON string is parsed):
- TACO / APPS stdin style `{"inputs": [str, ...], "outputs": [str, ...]}`: one sandbox run per test, the input on
  stdin. Outputs are compared line by line after normalising whitespace: each line is split on whitespace (so
  leading/trailing/repeated blanks and \\r do not matter), blank lines are dropped, and two tokens match when equal
  or when both are numbers within 1e-6 (absolute or relative), as the APPS/TACO evaluators' fallbacks allow.
- function-call style, TACO `{"fn_name": f, "inputs": [[args...], ...], "outputs": [...]}` (an output may be
  wrapped in a one-element list, as TACO stores them) or LeetCodeDataset `[{"input": "nums = [1], k = 2",
  "output": "3"}, ...]` with info/metadata "entry_point" (e.g. "Solution().twoSum" or "twoSum"): all tests of a
  completion run in ONE sandbox run, a harness (inside the sandbox, with the candidate) that execs the candidate,
  calls `Solution().f(*args)` (a fresh instance per test) or the top-level `f`, and compares JSON-equal results
  (tuples as lists, floats within 1e-6). Per-test timeouts there are SIGALRM in the harness; the run as a whole
  gets tests x timeout + 2 s (and the sandbox's cpu_seconds rlimit still applies to the whole run).
A list of {"input", "output"} without an entry point is stdin style.

Score: info["mode"] = "all" (default; 1 when every test passes, else 0 -- the sparse all-pass reward DeepCoder
trains with, and verl's sandbox_fusion default `continuous=False`; partial credit invites passing easy tests
only) or "fraction" (tests passed / tests). `all` stops at the first failing test. Per-test timeout:
info["timeout"], else sandbox.timeout. A compile (syntax) error scores 0 with compile_error=1; a test past its
timeout fails with timeout=1. Components: tests_passed_frac (over all tests, unrun ones count as failed),
compile_error, timeout, no_code.

Sandboxes: each reward worker process creates its SandboxPool lazily (one sandbox, since a worker scores one
completion at a time) with worker index sandbox.workers + k, where k is the first free per-process slot (an
flock held for the process's life), so two reward workers never share a sandbox uid with each other or with the
code_interpreter pool (indices 0 .. sandbox.workers - 1). `configure(cfg.sandbox)` before the RewardPool forks
sets the sandbox config (default: SandboxConfig()). A row without test cases raises one ScirlError naming it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
import tempfile

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.rewards.base import RewardResult, register_reward

FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.S)
PY_LANGS = ("python", "py", "python3")
COMPILE_EXIT = 97  # the stdin wrapper's exit status when the candidate does not compile
MARK = "@@scirl-result@@ "  # prefix of the call harness's result lines
MAX_SLOTS = 256

_CFG = None
_POOL = None  # (pid, SandboxPool, slot fd)


def configure(sandbox_cfg) -> None:
    """The sandbox config reward workers use (call before the RewardPool forks its workers)."""
    global _CFG, _POOL
    _CFG, _POOL = sandbox_cfg, None


def _claim_slot() -> tuple[int, int]:
    """(k, fd): the lowest per-process slot no other live process holds (flock released when this one dies)."""
    for k in range(MAX_SLOTS):
        path = os.path.join(tempfile.gettempdir(), f"scirl-code-tests-slot-{k}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return k, fd
        except OSError:
            os.close(fd)
    raise ScirlError(f"code_tests: more than {MAX_SLOTS} reward processes hold sandbox slots")


def sandbox_pool():
    """This process's SandboxPool (created on first use; a forked child makes its own)."""
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid():
        from scirl.config import SandboxConfig
        from scirl.sandbox.pool import SandboxPool

        cfg = _CFG if _CFG is not None else SandboxConfig()
        k, fd = _claim_slot()
        _POOL = (os.getpid(), SandboxPool(dataclasses.replace(cfg, workers=1), first_worker=cfg.workers + k), fd)
    return _POOL[1]


def extract_code(completion: str) -> str | None:
    """The last ```python block, else the last fenced block; None when there is none."""
    blocks = FENCE.findall(completion or "")
    if not blocks:
        return None
    py = [body for lang, body in blocks if lang.lower() in PY_LANGS]
    return (py or [body for _, body in blocks])[-1]


# ------------------------------------------------------------------------------------------------ test cases
@dataclasses.dataclass
class Tests:
    kind: str  # "stdin" | "call"
    inputs: list  # stdin: str; call: list of args, or a str of "k = v, ..." keyword arguments (LeetCode)
    outputs: list  # stdin: str; call: the expected value, or a str of a Python literal (LeetCode)
    fn: str | None = None  # call: "f" or "Solution().f"


def _text(x, where: str) -> str:
    if isinstance(x, list) and all(isinstance(s, str) for s in x):
        return "\n".join(x)
    if not isinstance(x, str):
        raise ScirlError(f"{where} must be a string (or a list of lines), got {type(x).__name__}")
    return x


def load_tests(sample: Sample, info: dict) -> Tests:
    """The row's test cases, normalised; a one-line ScirlError naming the row and key when missing or malformed."""
    meta = sample.metadata or {}
    key, raw = next(((k, v) for k, v in (("info['tests']", info.get("tests")),
                                         ("info['input_output']", info.get("input_output")),
                                         ("metadata['input_output']", meta.get("input_output")),
                                         ("answer", sample.answer)) if v not in (None, "", [], {})), (None, None))
    row = f"code_tests: row {sample.prompt_id!r}"
    if raw is None:
        raise ScirlError(f"{row} has no test cases (looked in info['tests'], info['input_output'], "
                         "metadata['input_output'], answer)")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise ScirlError(f"{row}: {key} is not JSON test cases ({e})") from None
    entry = info.get("entry_point") or meta.get("entry_point") or info.get("fn_name")
    if isinstance(raw, dict) and "inputs" in raw and "outputs" in raw:
        ins, outs, fn = raw["inputs"], raw["outputs"], raw.get("fn_name") or entry
    elif isinstance(raw, list) and all(isinstance(t, dict) and "input" in t and "output" in t for t in raw):
        ins, outs, fn = [t["input"] for t in raw], [t["output"] for t in raw], entry
    else:
        raise ScirlError(f"{row}: {key} must be {{'inputs': [...], 'outputs': [...]}} or a list of "
                         "{'input', 'output'}")
    if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs) or not ins:
        raise ScirlError(f"{row}: {key} needs equally long, non-empty inputs and outputs lists")
    if fn:
        return Tests("call", ins, outs, str(fn))
    return Tests("stdin", [_text(x, f"{row}: {key} input {i}") for i, x in enumerate(ins)],
                 [_text(x, f"{row}: {key} output {i}") for i, x in enumerate(outs)])


# ------------------------------------------------------------------------------------------------ comparing
def _token_eq(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isfinite(x) and math.isfinite(y) and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-6)


def normalise(text: str) -> list[list[str]]:
    """Lines as whitespace-split tokens, blank lines dropped."""
    return [line.split() for line in text.splitlines() if line.strip()]


def outputs_match(got: str, want: str) -> bool:
    g, w = normalise(got), normalise(want)
    return len(g) == len(w) and all(len(a) == len(b) and all(map(_token_eq, a, b)) for a, b in zip(g, w))


# ------------------------------------------------------------------------------------------------ programs
STDIN_WRAPPER = """import sys
_src = {code!r}
try:
    _c = compile(_src, "solution.py", "exec")
except (SyntaxError, ValueError) as _e:
    sys.stderr.write("compile error: %r\\n" % (_e,))
    sys.exit({exit})
del _src
exec(_c, {{"__name__": "__main__", "__builtins__": __builtins__}})
"""

CALL_HARNESS = r'''import contextlib, io, json, math, os, signal, sys
_src, TESTS, FN, PER, STOP, MARK = {code!r}, json.loads({tests!r}), {fn!r}, {per!r}, {stop!r}, {mark!r}
_out = os.fdopen(os.dup(1), "w")
def emit(**r):
    _out.write(MARK + json.dumps(r) + "\n"); _out.flush()
class _Timeout(BaseException):
    pass
def _alarm(*a):
    raise _Timeout()
signal.signal(signal.SIGALRM, _alarm)
def norm(x):
    if isinstance(x, (tuple, list)):
        return [norm(v) for v in x]
    if isinstance(x, dict):
        return {{str(k): norm(v) for k, v in x.items()}}
    return x
def eq(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)
    return a == b
try:
    code = compile(_src, "solution.py", "exec")
except (SyntaxError, ValueError) as e:
    emit(compile_error=repr(e)); sys.exit(0)
ns = {{"__name__": "solution", "__builtins__": __builtins__}}
def run(f, *a):
    signal.setitimer(signal.ITIMER_REAL, PER)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return f(*a)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
try:
    run(exec, code, ns)
except _Timeout:
    emit(load="timeout"); sys.exit(0)
except BaseException as e:
    emit(load=repr(e)[:300]); sys.exit(0)
name = FN.split(".")[-1]
for i, (inp, want) in enumerate(TESTS):
    try:
        if isinstance(inp, str):
            args, kw = [], eval("dict(%s)" % inp, dict(ns))
        else:
            args, kw = (inp if isinstance(inp, list) else [inp]), {{}}
        want = eval(want, dict(ns)) if isinstance(inp, str) and isinstance(want, str) else want
        if FN.startswith("Solution()") or (name not in ns and "Solution" in ns):
            f = getattr(run(ns["Solution"]), name)
        else:
            f = ns[name]
        got = norm(run(lambda: f(*args, **kw)))
        want = norm(want)
        ok = eq(got, want) or (isinstance(want, list) and len(want) == 1 and eq(got, want[0]))
        emit(i=i, ok=bool(ok))
    except _Timeout:
        emit(i=i, ok=False, timeout=True); ok = False
    except BaseException as e:
        emit(i=i, ok=False, error=repr(e)[:300]); ok = False
    if STOP and not ok:
        break
'''


def _result(passed: int, total: int, mode: str, compile_error=False, timeout=False) -> RewardResult:
    frac = passed / total
    score = frac if mode == "fraction" else float(passed == total)
    return RewardResult(score, {"tests_passed_frac": frac, "compile_error": float(compile_error),
                                "timeout": float(timeout), "no_code": 0.0})


def _run_stdin(pool, code: str, tests: Tests, per: float, mode: str) -> RewardResult:
    program = STDIN_WRAPPER.format(code=code, exit=COMPILE_EXIT)
    passed, timed_out = 0, False
    for stdin, want in zip(tests.inputs, tests.outputs):
        r = pool.run(program, stdin=stdin, timeout=per)
        if r.returncode == COMPILE_EXIT and r.stderr.startswith("compile error:"):
            return _result(0, len(tests.inputs), mode, compile_error=True)
        ok = r.ok and outputs_match(r.stdout, want)
        passed += ok
        timed_out |= r.timed_out
        if mode == "all" and not ok:
            break
    return _result(passed, len(tests.inputs), mode, timeout=timed_out)


def _run_call(pool, code: str, tests: Tests, per: float, mode: str) -> RewardResult:
    n = len(tests.inputs)
    program = CALL_HARNESS.format(code=code, tests=json.dumps(list(zip(tests.inputs, tests.outputs))),
                                  fn=tests.fn, per=float(per), stop=mode == "all", mark=MARK)
    r = pool.run(program, timeout=per * n + 2.0)
    lines = [json.loads(ln[len(MARK):]) for ln in r.stdout.split("\n") if ln.startswith(MARK)]
    if lines and "compile_error" in lines[0]:
        return _result(0, n, mode, compile_error=True)
    results = {d["i"]: d for d in lines if "i" in d}
    passed = sum(1 for d in results.values() if d.get("ok") is True)
    timed_out = r.timed_out or any(d.get("timeout") for d in results.values()) or \
        any(d.get("load") == "timeout" for d in lines)
    return _result(passed, n, mode, timeout=timed_out)


@register_reward("code_tests")
def code_tests(sample: Sample, completion: str, info: dict) -> RewardResult:
    """Fraction of the row's tests the completion's program passes, or all-pass 1/0; see the module docstring."""
    info = {**(sample.reward_info or {}), **(info or {})}
    mode = info.get("mode", "all")
    if mode not in ("all", "fraction"):
        raise ScirlError(f"code_tests: info['mode'] must be 'all' or 'fraction', got {mode!r}")
    tests = load_tests(sample, info)
    code = extract_code(completion)
    if code is None:
        return RewardResult(0.0, {"tests_passed_frac": 0.0, "compile_error": 0.0, "timeout": 0.0, "no_code": 1.0})
    pool = sandbox_pool()
    per = float(info.get("timeout") or pool.cfg.timeout)
    if not per > 0:
        raise ScirlError(f"code_tests: info['timeout'] must be > 0 seconds, got {info.get('timeout')!r}")
    run = _run_call if tests.kind == "call" else _run_stdin
    return run(pool, code, tests, per, mode)
