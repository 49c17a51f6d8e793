"""Offline grading: score a JSONL file of responses with a registered reward (`scirl grade`).

Each input line is a JSON object with at least `response` (the completion, a string) and `answer` (the
reference: a string or a number, turned into a string). Every OTHER field of the row (e.g. `choices` for mcq,
`subparts` for judge, `num_turns` for tcr, `length` for overlong) is passed through twice: into `info` (on top of
the `--info` JSON, the row wins) and into `Sample.metadata`. The Sample gets prompt_id = row["id"] (or
"line<N>"), messages = [{"role": "user", "content": row["prompt"]}] when `prompt` is a string (else []),
answer_type / data_source from the row when present.

Blank lines are ignored. Malformed rows (bad JSON, not an object, missing/invalid `response` or `answer`) are
reported on stderr with their line number (the first 20, then a count) and skipped. A file with no gradable row
(empty, or every row malformed) is a ScirlError (exit 2) and no output is written. All good rows are scored in
ONE `RewardPool.score` call. Each good row is written back unchanged plus `score`, `pred` and `components`.
The reward is a registered name or a reward of your own (`module:function`, `path/to/file.py:function`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.progress import progress

MAX_REPORTED = 20
RESERVED = ("response", "answer")


@dataclass
class GradeSummary:
    rows: int
    skipped: int
    accuracy: float
    mean_score: float
    timeouts: int
    errors: int
    seconds: float
    output: str

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def default_output(path: str | os.PathLike) -> Path:
    """INPUT.jsonl -> INPUT.graded.jsonl (any other name gets `.graded.jsonl` appended)."""
    p = Path(path)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(stem + ".graded.jsonl")


def row_to_item(row: dict, line_no: int, base_info: dict) -> tuple[Sample, str, dict]:
    """(Sample, completion, info) for one valid row (see the module docstring for where fields go)."""
    extras = {k: v for k, v in row.items() if k not in RESERVED}
    prompt = row.get("prompt")
    sample = Sample(
        prompt_id=str(row.get("id", f"line{line_no}")),
        messages=[{"role": "user", "content": prompt}] if isinstance(prompt, str) else [],
        answer=_answer_str(row["answer"]),
        answer_type=str(row.get("answer_type", "numeric")),
        data_source=str(row.get("data_source", "grade")),
        metadata=extras,
    )
    return sample, row["response"], {**base_info, **extras}


def _answer_str(answer: Any) -> str:
    if isinstance(answer, float) and answer.is_integer():
        return str(int(answer)) if abs(answer) < 1e16 else repr(answer)
    return answer if isinstance(answer, str) else str(answer)


def _num(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _last_line(text: str | None) -> str | None:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else None


def _check_row(text: str) -> tuple[dict | None, str | None]:
    """(row, None) for a good row, (None, reason) for a malformed one."""
    try:
        row = json.loads(text)
    except ValueError as e:
        return None, f"bad JSON ({e})"
    except RecursionError:
        return None, "bad JSON (nested too deeply)"
    if not isinstance(row, dict):
        return None, f"not a JSON object (got {type(row).__name__})"
    if "response" not in row:
        return None, "missing 'response'"
    if "answer" not in row:
        return None, "missing 'answer'"
    if not isinstance(row["response"], str):
        return None, f"'response' must be a string, got {type(row['response']).__name__}"
    ans = row["answer"]
    bad_float = isinstance(ans, float) and not math.isfinite(ans)
    if isinstance(ans, bool) or not isinstance(ans, (str, int, float)) or bad_float:
        return None, f"'answer' must be a string or a number, got {ans!r:.40}"
    return row, None


def read_rows(path: Path, err: TextIO) -> tuple[list[tuple[int, dict]], int]:
    """([(line_no, row)], n_malformed); malformed lines are reported on `err` (the first MAX_REPORTED)."""
    rows: list[tuple[int, dict]] = []
    bad = 0
    # surrogateescape: undecodable bytes reach the reward as lone surrogates instead of failing the whole file
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row, reason = _check_row(line)
            if row is None:
                bad += 1
                if bad <= MAX_REPORTED:
                    print(f"scirl grade: {path}:{line_no}: skipped: {reason}", file=err)
                continue
            rows.append((line_no, row))
    if bad > MAX_REPORTED:
        print(f"scirl grade: ... and {bad - MAX_REPORTED} more malformed rows not shown", file=err)
    return rows, bad


def grade_file(reward: str, input_path: str | os.PathLike, output_path: str | os.PathLike | None = None,
               workers: int | None = None, timeout: float = 10.0, info: dict | None = None,
               out: TextIO | None = None, err: TextIO | None = None) -> GradeSummary:
    """Score every good row of `input_path` with reward `reward`, write OUT, print the summary on `out`."""
    from scirl.rewards import RewardPool, get_reward  # registers every built-in reward

    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    get_reward(reward)  # unknown name -> one-line ScirlError before touching any file
    if info is not None and not isinstance(info, dict):
        raise ScirlError(f"grade: --info must be a JSON object, got {type(info).__name__}")
    src = Path(input_path)
    if not src.is_file():
        raise ScirlError(f"grade: input file {str(src)!r} not found")
    dst = Path(output_path) if output_path is not None else default_output(src)
    if dst.resolve() == src.resolve():
        raise ScirlError(f"grade: output {str(dst)!r} would overwrite the input")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 0:
        raise ScirlError(f"grade: --workers must be >= 0, got {workers}")

    rows, skipped = read_rows(src, err)
    if not rows:  # nothing to grade: an accuracy of nan with exit 0 would pass for a result
        why = f"all {skipped} rows are malformed, see above" if skipped else "the file has no rows"
        raise ScirlError(f"grade: {src}: no gradable row ({why}); nothing written")
    items = [row_to_item(row, line_no, info or {}) for line_no, row in rows]
    start = time.perf_counter()
    with RewardPool(reward, workers=min(workers, len(items)), timeout=timeout) as pool, \
            progress(len(items), "grade", "rows") as bar:
        results, stats = pool.score(items, on_progress=bar.update)
        bar.update(len(results))
        first_error = _last_line(pool.first_error)
    seconds = time.perf_counter() - start
    if stats["errors"] and first_error:
        print(f"scirl grade: {stats['errors']} reward call(s) failed (scored 0); first: {first_error}", file=err)

    dst.parent.mkdir(parents=True, exist_ok=True)
    accs, scores = [], []
    # backslashreplace: a lone surrogate is written as the JSON escape \udcXX, so OUT stays valid UTF-8 JSON
    with open(dst, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as f:
        for (_, row), res in zip(rows, results):
            score = float(res.score)
            comps = {str(k): _num(v) for k, v in res.components.items()}
            accs.append(comps["acc"] if "acc" in comps else float(score >= 0.5))
            scores.append(score)
            f.write(json.dumps({**row, "score": score, "pred": res.pred, "components": comps},
                               ensure_ascii=False, default=str) + "\n")
    n = len(results)
    summary = GradeSummary(n, skipped, sum(accs) / n, sum(scores) / n, stats["timeouts"], stats["errors"], seconds,
                           str(dst))
    print(f"rows: {summary.rows}", file=out)
    print(f"skipped: {summary.skipped}", file=out)
    print(f"accuracy: {summary.accuracy:.4f}", file=out)
    print(f"mean_score: {summary.mean_score:.4f}", file=out)
    print(f"timeouts: {summary.timeouts}", file=out)
    print(f"errors: {summary.errors}", file=out)
    print(f"throughput: {summary.rows_per_s:.1f} rows/s", file=out)
    print(f"output: {summary.output}", file=out)
    return summary
