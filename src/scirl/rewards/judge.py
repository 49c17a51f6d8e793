"""The `judge` reward (Physics-R1, ALGORITHMS.md §10 (d)): an LLM judge grades each subpart; the score is their AND.

    r = prod_j 1[judge(subpart_j) = CORRECT]

Every subpart gets one chat completion from an OpenAI-compatible endpoint (`scirl serve`, vLLM, ...). A verdict
is the LAST `VERDICT: CORRECT` / `VERDICT: INCORRECT` line of the judge's reply (case-insensitive; markdown
emphasis around it is tolerated; a judge's own `<think>...</think>` block is ignored). A subpart whose verdict is
missing or unparseable, or whose request failed (connection refused, timeout, HTTP error, malformed reply),
counts as not correct, so the whole item scores 0: no partial credit. No exception leaves the reward for those.

info keys (all optional except an endpoint):
  endpoint        base URL, e.g. http://127.0.0.1:8000/v1 (default: env SCIRL_JUDGE_ENDPOINT); requests go to
                  <endpoint>/chat/completions
  model           the judge model id (default: env SCIRL_JUDGE_MODEL; when unset no "model" is sent)
  prompt_template the user message; {question} {subpart} {reference} {response} are substituted (other braces,
                  e.g. LaTeX, are left alone). Default: DEFAULT_JUDGE_PROMPT below (recorded; version
                  JUDGE_PROMPT_VERSION)
  temperature 0.0, max_tokens 512, timeout 60.0 (seconds per HTTP request), retries 0 (extra tries after a
  connection error / timeout / 429 / 5xx), seed (sent when given), extra_body (dict merged into the request,
  e.g. {"chat_template_kwargs": {"enable_thinking": false}})
  strip_thinking  True: the policy's text up to its last `</think>` is not shown to the judge
  subparts        used when sample.metadata has no "subparts"
  cache_dir       optional folder for an on-disk JSON-lines verdict cache (judge_verdicts.jsonl)

Subparts: sample.metadata["subparts"] (else info["subparts"]): a list of {"question"?: str, "answer": str} (a bare
string is an answer). Without one, the item is a single subpart whose answer is sample.answer.

Components: acc (= score), subparts, subparts_correct, unparseable, judge_errors. pred: the response's last
\\boxed{} content, or None.

Cache: verdicts (only parsed ones; errors and unparseable replies are retried next time) are keyed by
sha256(model, prompt_template, question, answer, response, subpart index) in an in-process dict (per reward
worker) and, with cache_dir, in <cache_dir>/judge_verdicts.jsonl, appended by every worker and re-read
incrementally, so a repeated epoch does not query the judge again. With no model given the endpoint stands in
for it in the key. Note that RewardPool's per-call timeout must cover all of an item's judge requests.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.hub import is_loopback
from scirl.rewards.base import RewardResult, register_reward
from scirl.rewards.boxed_numeric import last_boxed

JUDGE_PROMPT_VERSION = "scirl-judge-v1"

# Physics-R1's Appendix C (its judge prompt) could not be retrieved; this is our recorded choice (ALGORITHMS.md §12).
DEFAULT_JUDGE_PROMPT = """\
You are grading one part of a student's answer to a physics problem against a reference answer.

## Problem
{question}

## Part to grade
{subpart}

## Reference answer for this part
{reference}

## Student's response
{response}

## Instructions
Grade only the part named above, by the student's FINAL answer for it.
- CORRECT: the final answer is equivalent to the reference: the same value up to reasonable rounding (about 1% \
relative difference unless the problem asks for more precision), an algebraically or numerically equivalent \
expression, or the same choice / qualitative conclusion. Equivalent units and notation are fine.
- INCORRECT: the final answer is missing, different, only partly right, ambiguous (several conflicting final \
answers), or has wrong or missing units where units matter. A correct method with a wrong final answer is INCORRECT.
Do not solve the problem again; compare the student's final answer with the reference.

Give at most three sentences of justification, then end your reply with exactly one line, either
VERDICT: CORRECT
or
VERDICT: INCORRECT"""

CACHE_FILE = "judge_verdicts.jsonl"
MAX_MEMORY_ENTRIES = 500_000

_VERDICT = re.compile(r"\bVERDICT[\s*_`]*:[\s*_`]*(CORRECT|INCORRECT)\b", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{(question|subpart|reference|response)\}")
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}

_MEMORY: dict[str, str] = {}  # key -> "CORRECT" | "INCORRECT"
_DISK_OFFSETS: dict[str, int] = {}  # cache file -> bytes already read into _MEMORY
_LOCK = threading.Lock()
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback judges skip HTTP proxies


# ---------------------------------------------------------------------------------------------- pieces
def parse_verdict(text: Any) -> str | None:
    """'CORRECT' / 'INCORRECT' from the last VERDICT line of a judge reply; None when there is none.

    With a `</think>`, only the text after the last one counts; an unclosed `<think>` (a truncated reasoning
    judge) has no verdict."""
    if not isinstance(text, str):
        return None
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        return None
    found = _VERDICT.findall(text)
    return found[-1].upper() if found else None


def render_prompt(template: str, **fields: str) -> str:
    """Substitute {question} {subpart} {reference} {response} in one pass (no str.format: LaTeX braces stay)."""
    return _PLACEHOLDER.sub(lambda m: fields[m.group(1)], template)


def subparts_of(sample: Sample, info: dict) -> list[dict[str, str]]:
    """The item's subparts as [{"question", "answer"}] (single-answer items: one subpart with sample.answer)."""
    raw = sample.metadata.get("subparts") if isinstance(sample.metadata, dict) else None
    if raw is None:
        raw = info.get("subparts")
    if raw is None:
        return [{"question": "", "answer": str(sample.answer)}]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ScirlError(f"judge: sample {sample.prompt_id!r}: 'subparts' must be a non-empty list, got {raw!r}")
    parts = []
    for j, part in enumerate(raw):
        if isinstance(part, str):
            part = {"answer": part}
        if not isinstance(part, dict) or "answer" not in part:
            raise ScirlError(f"judge: sample {sample.prompt_id!r}: subparts[{j}] needs an 'answer', got {part!r}")
        parts.append({"question": str(part.get("question") or ""), "answer": str(part["answer"])})
    return parts


def problem_text(sample: Sample) -> str:
    """The problem statement: the last user message of the prompt."""
    for m in reversed(sample.messages):
        if m.get("role") == "user":
            return str(m.get("content", ""))
    return "\n\n".join(str(m.get("content", "")) for m in sample.messages)


def subpart_text(index: int, count: int, question: str) -> str:
    if count == 1 and not question:
        return "The whole problem (it has a single final answer)."
    label = f"Part {index + 1} of {count}"
    return f"{label}: {question}" if question else f"{label} (the {_ordinal(index + 1)} answer the problem asks for)."


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def strip_thinking(text: str) -> str:
    return text.rsplit("</think>", 1)[1].strip() if "</think>" in text else text


def cache_key(model: str, template: str, question: str, answer: str, response: str, index: int) -> str:
    blob = json.dumps([model, template, question, answer, response, index], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- cache
def clear_cache() -> None:
    """Forget the in-process verdicts (the on-disk files are kept, and re-read on next use)."""
    with _LOCK:
        _MEMORY.clear()
        _DISK_OFFSETS.clear()


def _remember(key: str, verdict: str) -> None:
    if len(_MEMORY) >= MAX_MEMORY_ENTRIES:  # drop the oldest tenth (dicts keep insertion order)
        for k in list(_MEMORY)[: MAX_MEMORY_ENTRIES // 10]:
            del _MEMORY[k]
    _MEMORY[key] = verdict


def _load_disk(path: Path) -> None:
    """Read the lines of `path` added since the last read (other workers append to it too)."""
    start = _DISK_OFFSETS.get(str(path), 0)
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return
    end = data.rfind(b"\n") + 1  # a half-written last line waits for the next read
    for line in data[:end].splitlines():
        try:
            rec = json.loads(line)
            if rec.get("verdict") in ("CORRECT", "INCORRECT") and isinstance(rec.get("key"), str):
                _remember(rec["key"], rec["verdict"])
        except (ValueError, AttributeError):
            continue  # a corrupt line is skipped, never fatal
    _DISK_OFFSETS[str(path)] = start + end


def cached_verdict(key: str, cache_file: Path | None) -> str | None:
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
        if cache_file is not None:
            _load_disk(cache_file)
            return _MEMORY.get(key)
    return None


def store_verdict(key: str, verdict: str, cache_file: Path | None) -> None:
    with _LOCK:
        _remember(key, verdict)
    if cache_file is None:
        return
    line = (json.dumps({"key": key, "verdict": verdict, "time": round(time.time(), 3)}) + "\n").encode("utf-8")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one small O_APPEND write: lines from concurrent workers do not interleave
        finally:
            os.close(fd)
    except OSError:
        pass  # the cache is an optimisation; an unwritable folder only costs re-queries


# ---------------------------------------------------------------------------------------------- HTTP
def chat_completion(endpoint: str, payload: dict, timeout: float, retries: int = 0) -> dict:
    """POST <endpoint>/chat/completions and return the decoded JSON (raises OSError / ValueError / HTTPException)."""
    url = endpoint.rstrip("/") + "/chat/completions"
    data = json.dumps(payload).encode("utf-8")
    opener = _DIRECT if is_loopback(url) else urllib.request.build_opener()
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with opener.open(req, timeout=timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            e.close()
            if attempt == retries or e.code not in _RETRYABLE_STATUS:
                raise
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException):
            if attempt == retries:
                raise
        time.sleep(min(0.5 * 2**attempt, 4.0))
    raise AssertionError("unreachable")


def _reply_text(reply: Any) -> Any:
    try:
        return reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("malformed chat.completion reply") from None


# ---------------------------------------------------------------------------------------------- the reward
@register_reward("judge")
def judge(sample: Sample, completion: str, info: dict) -> RewardResult:
    """1.0 only if the judge says CORRECT for every subpart; any INCORRECT, unparseable or failed verdict -> 0."""
    endpoint = info.get("endpoint") or os.environ.get("SCIRL_JUDGE_ENDPOINT")
    if not endpoint:
        raise ScirlError("judge: no endpoint (set reward info endpoint=http://HOST:PORT/v1 or SCIRL_JUDGE_ENDPOINT)")
    model = info.get("model") or os.environ.get("SCIRL_JUDGE_MODEL") or None
    template = info.get("prompt_template") or DEFAULT_JUDGE_PROMPT
    timeout = float(info.get("timeout", 60.0))
    retries = int(info.get("retries", 0))
    cache_file = Path(info["cache_dir"]) / CACHE_FILE if info.get("cache_dir") else None
    response = strip_thinking(completion) if info.get("strip_thinking", True) else completion
    question = problem_text(sample)
    parts = subparts_of(sample, info)
    model_key = model if model else f"@{endpoint.rstrip('/')}"

    correct = unparseable = errors = 0
    for j, part in enumerate(parts):
        key = cache_key(model_key, template, question + "\n\x00" + part["question"], part["answer"], response, j)
        verdict = cached_verdict(key, cache_file)
        if verdict is None:
            prompt = render_prompt(template, question=question, subpart=subpart_text(j, len(parts), part["question"]),
                                   reference=part["answer"], response=response)
            payload: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}],
                                       "temperature": float(info.get("temperature", 0.0)),
                                       "max_tokens": int(info.get("max_tokens", 512)), "n": 1}
            if model:
                payload["model"] = model
            if info.get("seed") is not None:
                payload["seed"] = int(info["seed"])
            payload.update(info.get("extra_body") or {})
            try:
                text = _reply_text(chat_completion(endpoint, payload, timeout, retries))
            except (OSError, ValueError, http.client.HTTPException):
                errors += 1
                continue
            verdict = parse_verdict(text)
            if verdict is None:
                unparseable += 1
                continue
            store_verdict(key, verdict, cache_file)
        correct += verdict == "CORRECT"

    score = 1.0 if correct == len(parts) else 0.0
    components = {"acc": score, "subparts": float(len(parts)), "subparts_correct": float(correct),
                  "unparseable": float(unparseable), "judge_errors": float(errors)}
    return RewardResult(score, components, last_boxed(response))
