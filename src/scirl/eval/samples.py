"""The samples file of `scirl eval`: one JSON row per graded sample, streamed batch by batch, resumable, regradable.

Where: `-o ev/aime.json` writes its rows to `ev/aime.samples.jsonl` (`--samples` chooses another path) and its
settings record to `ev/aime.samples.meta.json`, so two evals into one folder never share a samples file.

A row: prompt_id, data_source, sample (index), response, pred, score, correct, and what a reward needs to grade
the response again: answer (the reference), answer_type, reward and reward_info (the dataset's own grader and its
options, e.g. OlympiadBench's precision), meta (the grading keys of the sample's metadata: choices for mcq,
subparts for judge, correct_threshold) and, on each prompt's sample-0 row only, question (the prompt's last user
message, which the judge shows).

Streaming: `SamplesStream` appends each batch's rows as soon as they are graded (one write, flush, fsync), then
commits the batch in the settings record (atomic rewrite: batch bounds, row count, pool stats). A crash or Ctrl-C
keeps every committed batch; `--resume` keeps the committed rows (a torn last line or rows of an uncommitted batch
are dropped), checks that every setting and the prompts themselves are those of the interrupted run, and
continues with the next batch. The per-batch seeds depend on the batch start only, so the resumed file is the one
an uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.fsutil import atomic_write_json, atomic_write_text

FORMAT = "scirl-eval-samples/1"
GRADING_META = ("choices", "subparts", "correct_threshold")  # the metadata keys rewards (and `correct`) read
REQUIRED = ("prompt_id", "data_source", "sample", "score")
STAT_KEYS = ("timeouts", "errors", "truncated", "response_tokens")


# ------------------------------------------------------------------------------------------------ paths
def default_samples_path(out: Path) -> Path:
    """`ev/aime.json` -> `ev/aime.samples.jsonl`."""
    return out.with_name(out.stem + ".samples.jsonl")


def meta_path(samples: Path) -> Path:
    """`ev/aime.samples.jsonl` -> `ev/aime.samples.meta.json` (the settings record beside the rows)."""
    name = samples.name[: -len(".jsonl")] if samples.name.endswith(".jsonl") else samples.name
    return samples.with_name(name + ".meta.json")


# ------------------------------------------------------------------------------------------------ rows
def grading_fields(s: Sample, first: bool) -> dict[str, Any]:
    """What a reward reads of `s`, to store in each of its rows (the question only when `first`)."""
    out: dict[str, Any] = {"answer": s.answer, "answer_type": s.answer_type, "reward": s.reward}
    if s.reward_info:
        out["reward_info"] = s.reward_info
    meta = {k: s.metadata[k] for k in GRADING_META if k in (s.metadata or {})}
    if meta:
        out["meta"] = meta
    if first:
        from scirl.rewards.judge import problem_text

        out["question"] = problem_text(s)
    return out


def add_grading_fields(records: list[dict], samples: list[Sample]) -> list[dict]:
    """Extend each record (of generate_and_grade) in place with its prompt's grading fields."""
    by_id = {s.prompt_id: s for s in samples}
    for r in records:
        r.update(grading_fields(by_id[r["prompt_id"]], int(r["sample"]) == 0))
    return records


def is_correct(score: float, row: dict) -> bool:
    """A sample is correct when its score reaches its dataset's threshold (meta.correct_threshold, else 0.5)."""
    return bool(score >= float((row.get("meta") or {}).get("correct_threshold", 0.5)))


def row_sample(row: dict, question: str | None) -> Sample:
    """The Sample a reward needs to grade `row` again (prompt messages: the stored question, when any)."""
    return Sample(prompt_id=str(row["prompt_id"]),
                  messages=[{"role": "user", "content": question}] if question is not None else [],
                  answer=None if row.get("answer") is None else str(row["answer"]),
                  answer_type=str(row.get("answer_type") or "numeric"), data_source=str(row["data_source"]),
                  metadata=dict(row.get("meta") or {}), reward=row.get("reward"),
                  reward_info=dict(row.get("reward_info") or {}))


def _check_row(row: Any, path: Path, line_no: int) -> dict:
    if not isinstance(row, dict):
        raise ScirlError(f"{path} line {line_no}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ScirlError(f"{path} line {line_no}: missing field(s) {', '.join(missing)}")
    try:
        row["score"] = float(row["score"])
        row["sample"] = int(row["sample"])
    except (TypeError, ValueError):
        raise ScirlError(f"{path} line {line_no}: 'score' must be a number and 'sample' an int") from None
    if not math.isfinite(row["score"]):
        raise ScirlError(f"{path} line {line_no}: score {row['score']} is not finite")
    return row


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of every row of a samples file; a malformed row is an error naming its line."""
    from scirl.data.local_files import read_jsonl

    rows = [(n, _check_row(row, path, n)) for n, row in read_jsonl(path, "--from-samples")]
    if not rows:
        raise ScirlError(f"--from-samples: {path} has no rows")
    return rows


def read_samples(path: Path) -> list[dict]:
    """Rows of a samples file; a malformed row is an error naming its line."""
    return [row for _, row in read_rows(path)]


def rows_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# ------------------------------------------------------------------------------------------------ resume
def prompts_fingerprint(samples: list[Sample], ids: list[list[int]]) -> dict:
    """Count and sha256 of the prompts (id, token ids, reference answer) in order: same data, same prompts."""
    h = hashlib.sha256()
    for s, toks in zip(samples, ids):
        h.update(json.dumps([s.prompt_id, list(toks), s.answer], ensure_ascii=False).encode() + b"\n")
    return {"count": len(samples), "sha256": h.hexdigest()}


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, ensure_ascii=False)


def check_start(samples: Path, settings: dict, resume: bool) -> dict | None:
    """Before any work: the settings record to resume (None: start afresh). Without --resume an existing samples
    file is refused; with it, a record made with other settings is refused, naming the first differing flag."""
    if not samples.exists():
        return None
    if not resume:
        raise ScirlError(f"scirl eval: {samples} already exists (an earlier eval into this -o); pass --resume to "
                         f"continue it, or choose another -o / --samples")
    mpath = meta_path(samples)
    if not mpath.exists() and samples.stat().st_size == 0:  # killed between creating the file and its record
        samples.unlink()
        return None
    try:
        meta = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScirlError(f"scirl eval --resume: {samples} has no settings record {mpath.name}, so it cannot be "
                         f"resumed safely; choose another -o / --samples") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ScirlError(f"scirl eval --resume: {mpath} is not valid JSON ({e}); choose another -o") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("batches"), list):
        raise ScirlError(f"scirl eval --resume: {mpath} is not a {FORMAT} settings record; choose another -o")
    old = meta.get("settings") or {}
    for flag in dict.fromkeys([*settings, *old]):
        if old.get(flag) != settings.get(flag):
            raise ScirlError(f"scirl eval --resume: {samples} was made with {flag} {_show(old.get(flag))}, this run "
                             f"has {_show(settings.get(flag))}; rerun with the same {flag}, or choose another -o")
    return meta


class SamplesStream:
    """The samples file being written: rows appended per batch (flush + fsync), each batch then committed in the
    settings record. `records`, `stats` and `done` (prompts done) cover every committed batch."""

    def __init__(self, path: Path, settings: dict, fingerprint: dict, prior: dict | None,
                 samples: list[Sample]) -> None:
        self.path, self.meta_path = path, meta_path(path)
        self.records: list[dict] = []
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.done = 0
        self.meta = {"format": FORMAT, "settings": settings, "prompts": fingerprint, "batches": []}
        path.parent.mkdir(parents=True, exist_ok=True)
        if prior is None:
            try:
                self._file = open(path, "x", encoding="utf-8")  # "x": never clobber a file that appeared meanwhile
            except FileExistsError:
                raise ScirlError(f"scirl eval: {path} appeared while this eval started (another eval into the "
                                 f"same -o?); choose another -o / --samples") from None
        else:
            if prior.get("prompts") != fingerprint:
                raise ScirlError(f"scirl eval --resume: the prompts differ from those {path} was made with (the data "
                                 f"files or the tokenizer changed); choose another -o")
            lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # what follows the last newline is torn
            kept, batches = self._committed(lines, prior["batches"], samples)
            atomic_write_text(path, "".join(line + "\n" for line in lines[: len(kept)]))  # whole batches only
            self.meta["batches"] = batches
            self.records = kept
            for b in batches:
                for k in STAT_KEYS:
                    self.stats[k] += int(b.get(k, 0))
            self.done = batches[-1]["stop"] if batches else 0
            self._file = open(path, "a", encoding="utf-8")
        atomic_write_json(self.meta_path, self.meta)

    def _committed(self, lines: list[str], batches: list[dict], samples: list[Sample]) -> tuple[list[dict], list[dict]]:
        """The rows of the leading committed batches whose rows are all in `lines`, and those batches."""
        kept: list[dict] = []
        good: list[dict] = []
        expect_start = 0
        for b in batches:
            try:
                start, stop, count = int(b["start"]), int(b["stop"]), int(b["rows"])
            except (KeyError, TypeError, ValueError):
                raise ScirlError(f"scirl eval --resume: {self.meta_path} has a malformed batch {b!r}") from None
            if start != expect_start or len(kept) + count > len(lines):
                break
            ids = {s.prompt_id for s in samples[start:stop]}
            rows = []
            for offset in range(len(kept), len(kept) + count):
                try:
                    row = _check_row(json.loads(lines[offset]), self.path, offset + 1)
                except json.JSONDecodeError as e:
                    raise ScirlError(f"{self.path} line {offset + 1}: invalid JSON ({e.msg}) in a committed "
                                     f"batch; the file was edited, so it cannot be resumed") from None
                if row["prompt_id"] not in ids:
                    raise ScirlError(f"{self.path} line {offset + 1}: prompt {row['prompt_id']!r} is not one of "
                                     f"prompts {start}..{stop - 1}; the file was edited, so it cannot be resumed")
                rows.append(row)
            kept += rows
            good.append(b)
            expect_start = stop
        return kept, good

    def append(self, start: int, stop: int, rows: list[dict], stats: dict) -> None:
        """Write one graded batch (rows of prompts start..stop-1) to disk, then commit it. A Ctrl-C meanwhile waits
        until the batch is committed; a failed write is cut off again, so the file holds whole batches only."""
        entry = {"start": start, "stop": stop, "rows": len(rows), **{k: int(stats.get(k, 0)) for k in STAT_KEYS}}
        with _sigint_deferred():
            pos = self._file.tell()
            try:
                self._file.write(rows_text(rows))
                self._file.flush()
                os.fsync(self._file.fileno())
                atomic_write_json(self.meta_path, {**self.meta, "batches": [*self.meta["batches"], entry]})
            except BaseException:
                self._file.truncate(pos)
                raise
            self.meta["batches"].append(entry)
            self.records += rows
            for k in STAT_KEYS:
                self.stats[k] += entry[k]
            self.done = stop

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SamplesStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then deliver it to the
    handler it was meant for (Python's default raises KeyboardInterrupt there)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(signal.SIGINT)
