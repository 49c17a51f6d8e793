"""The samples file, unit by unit: its path, committed batches on disk, what --resume keeps, and Ctrl-C mid-commit."""

import json
import os
import signal
from pathlib import Path

import pytest

from scirl.data.sample import Sample
from scirl.errors import ScirlError
from scirl.eval import samples as S

SETTINGS = {"--model": "m", "--n": 2, "--temperature": 0.6}
PROMPTS = [Sample(f"p{i}", [], str(i)) for i in range(4)]
FP = S.prompts_fingerprint(PROMPTS, [[i, 7] for i in range(4)])


def _rows(start, stop):
    return [{"prompt_id": f"p{i}", "data_source": "d", "sample": j, "response": f"r{i}{j}", "pred": None,
             "score": float(j), "correct": j == 1} for i in range(start, stop) for j in range(2)]


STATS = {"timeouts": 1, "errors": 0, "truncated": 2, "response_tokens": 40}


def test_paths_are_named_after_the_output():
    assert S.default_samples_path(Path("ev/aime.json")) == Path("ev/aime.samples.jsonl")
    assert S.default_samples_path(Path("ev/gsm8k")) == Path("ev/gsm8k.samples.jsonl")
    assert S.meta_path(Path("ev/aime.samples.jsonl")) == Path("ev/aime.samples.meta.json")


def test_fingerprint_changes_with_prompts_tokens_or_answers():
    ids = [[i, 7] for i in range(4)]
    assert S.prompts_fingerprint(PROMPTS, ids) == FP and FP["count"] == 4
    assert S.prompts_fingerprint(PROMPTS, [[i, 8] for i in range(4)]) != FP
    assert S.prompts_fingerprint([*PROMPTS[:3], Sample("p3", [], "other")], ids) != FP
    assert S.prompts_fingerprint(PROMPTS[::-1], ids[::-1]) != FP


def _two_batches(path):
    with S.SamplesStream(path, SETTINGS, FP, None, PROMPTS) as stream:
        stream.append(0, 2, _rows(0, 2), STATS)
        stream.append(2, 4, _rows(2, 4), STATS)
    return path


def test_each_batch_is_on_disk_and_committed(tmp_path):
    path = tmp_path / "e.samples.jsonl"
    with S.SamplesStream(path, SETTINGS, FP, None, PROMPTS) as stream:
        stream.append(0, 2, _rows(0, 2), STATS)
        # while the stream is still open: the rows are in the file and the batch in the record
        assert [json.loads(x) for x in path.read_text().splitlines()] == _rows(0, 2)
        meta = json.loads((tmp_path / "e.samples.meta.json").read_text())
        assert meta["settings"] == SETTINGS and meta["prompts"] == FP
        assert meta["batches"] == [{"start": 0, "stop": 2, "rows": 4, **STATS}]
        assert stream.done == 2 and stream.stats == STATS


def test_resume_keeps_committed_batches_and_drops_a_torn_line(tmp_path):
    path = _two_batches(tmp_path / "e.samples.jsonl")
    full = path.read_text()
    meta = json.loads(S.meta_path(path).read_text())
    # a crash while the second batch was being written: half its rows and a torn row, and no commit
    meta["batches"] = meta["batches"][:1]
    S.meta_path(path).write_text(json.dumps(meta))
    lines = full.split("\n")
    path.write_text("\n".join(lines[:6]) + "\n" + lines[6][:15])
    prior = S.check_start(path, SETTINGS, resume=True)
    with S.SamplesStream(path, SETTINGS, FP, prior, PROMPTS) as stream:
        assert stream.done == 2 and stream.records == _rows(0, 2) and stream.stats == STATS
        assert path.read_text() == "\n".join(lines[:4]) + "\n"  # whole batches only
        stream.append(2, 4, _rows(2, 4), STATS)
    assert path.read_text() == full
    assert json.loads(S.meta_path(path).read_text())["batches"][1] == {"start": 2, "stop": 4, "rows": 4, **STATS}


def test_resume_refusals_name_the_cause(tmp_path):
    path = _two_batches(tmp_path / "e.samples.jsonl")
    before = path.read_bytes()
    with pytest.raises(ScirlError, match=r"e.samples.jsonl already exists .*pass --resume"):
        S.check_start(path, SETTINGS, resume=False)
    with pytest.raises(ScirlError, match=r"made with --temperature 0\.6, this run has 1\.0; rerun with the same"):
        S.check_start(path, {**SETTINGS, "--temperature": 1.0}, resume=True)
    with pytest.raises(ScirlError, match=r"made with --limit \(unset\), this run has 5"):
        S.check_start(path, {**SETTINGS, "--limit": 5}, resume=True)
    prior = S.check_start(path, SETTINGS, resume=True)
    with pytest.raises(ScirlError, match="the prompts differ"):
        S.SamplesStream(path, SETTINGS, {**FP, "count": 5}, prior, PROMPTS)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], lines[2].replace('"p1"', '"p3"'), *lines[3:]]) + "\n")
    with pytest.raises(ScirlError, match=r"e.samples.jsonl line 3: prompt 'p3' is not one of prompts 0..1"):
        S.SamplesStream(path, SETTINGS, FP, prior, PROMPTS)
    path.write_bytes(before)
    S.meta_path(path).write_text('{"format": "scirl-eval-samples/1", "batch')  # never happens: written atomically
    with pytest.raises(ScirlError, match=r"e.samples.meta.json is not valid JSON"):
        S.check_start(path, SETTINGS, resume=True)
    assert path.read_bytes() == before
    assert S.check_start(tmp_path / "absent.jsonl", SETTINGS, resume=True) is None  # nothing to resume: start


def test_ctrl_c_during_a_commit_waits_for_it(tmp_path, monkeypatch):
    path = tmp_path / "e.samples.jsonl"
    real_fsync = os.fsync

    def fsync_then_ctrl_c(fd):
        real_fsync(fd)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the rows reach the disk

    with S.SamplesStream(path, SETTINGS, FP, None, PROMPTS) as stream:
        monkeypatch.setattr(os, "fsync", fsync_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            stream.append(0, 2, _rows(0, 2), STATS)
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert stream.done == 2  # the batch was committed before the interrupt was let through
    assert json.loads(S.meta_path(path).read_text())["batches"][0]["stop"] == 2
    assert [json.loads(x) for x in path.read_text().splitlines()] == _rows(0, 2)


def test_a_failed_write_leaves_whole_batches(tmp_path, monkeypatch):
    path = tmp_path / "e.samples.jsonl"
    with S.SamplesStream(path, SETTINGS, FP, None, PROMPTS) as stream:
        stream.append(0, 2, _rows(0, 2), STATS)

        def disk_full(fd):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space left"):
            stream.append(2, 4, _rows(2, 4), STATS)
        assert stream.done == 2
    assert [json.loads(x) for x in path.read_text().splitlines()] == _rows(0, 2)
    assert len(json.loads(S.meta_path(path).read_text())["batches"]) == 1
