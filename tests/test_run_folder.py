"""The run folder rules: reusing a name never loses data, finished runs say so, resume refuses what cannot take
effect, a lock per folder, damaged checkpoints are skipped, torn files are repaired, checkpoints are pruned."""

import json
import os

import pytest
import torch

from conftest import small_overrides
from scirl.ckpt.checkpoint import list_checkpoints
from scirl.config import load_config
from scirl.errors import ScirlError
from scirl.train.loop import run_training
from scirl.train.run_folder import RunLock


def train(tmp_path, **extra):
    return run_training(load_config(None, small_overrides(tmp_path, **extra)))


def steps_of(run):
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run with checkpoints at steps 1 and 2, copied fresh for each test that changes it."""
    root = tmp_path_factory.mktemp("finished")
    train(root, **{"trainer.save_freq": 1})
    return root


def copy_of(finished, tmp_path):
    import shutil

    shutil.copytree(finished / "t", tmp_path / "t")
    return tmp_path / "t"


def test_rerunning_a_finished_run_does_nothing_and_keeps_everything(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    summary = train(tmp_path, **{"trainer.save_freq": 1})
    assert "already finished at step 2" in capsys.readouterr().out
    assert summary["status"] == "finished" and summary["steps"] == 2
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_disable_refuses_a_folder_that_holds_a_run(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    with pytest.raises(ScirlError) as e:
        train(tmp_path, **{"trainer.resume": "disable"})
    assert str(e.value) == (f"run folder {run} already holds a run (latest checkpoint step_2, finished); continue it "
                            "with trainer.resume=auto, move it aside with trainer.overwrite=true, or choose another "
                            "trainer.run_name")


def test_overwrite_moves_the_old_run_aside(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    old_metrics = (run / "metrics.jsonl").read_text()
    train(tmp_path, **{"trainer.overwrite": "true", "trainer.total_steps": 1})
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("t.old-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").read_text() == old_metrics
    assert [p.name for p in list_checkpoints(aside[0])] == ["step_1", "step_2"]
    assert steps_of(run) == [1] and [p.name for p in list_checkpoints(run)] == ["step_1"]


def test_a_checkpoint_past_total_steps_is_an_error(finished, tmp_path):
    copy_of(finished, tmp_path)
    with pytest.raises(ScirlError, match=r"is at step 2, past trainer.total_steps=1; raise trainer.total_steps"):
        train(tmp_path, **{"trainer.total_steps": 1})


def test_extending_a_finished_run_trains_on_and_records_the_change(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    summary = train(tmp_path, **{"trainer.total_steps": 3, "trainer.save_freq": 1})
    assert summary["resumed_from_step"] == 2 and summary["status"] == "finished"
    assert steps_of(run) == [1, 2, 3]
    (row,) = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert row["step"] == 2 and row["changed"]["trainer.total_steps"] == [2, 3]
    assert set(row["changed"]) == {"trainer.total_steps", "trainer.output_dir"}  # the folder was copied
    moved = list((run / "superseded").iterdir())
    assert len(moved) == 1 and json.loads((moved[0] / "summary.json").read_text())["steps"] == 2


def test_changed_keys_that_cannot_take_effect_are_refused(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    with pytest.raises(ScirlError) as e:
        train(tmp_path, **{"trainer.total_steps": 3, "actor.lr": 2e-6})
    assert str(e.value) == (f"cannot resume {run / 'checkpoints' / 'step_2'} with changed actor.lr (0.0001 -> 2e-06): "
                            f"to change them, branch: trainer.resume={run / 'checkpoints' / 'step_2'} "
                            "trainer.run_name=<new name>")
    with pytest.raises(ScirlError, match=r"changed model.path .* they fix the model and the data order"):
        train(tmp_path, **{"trainer.total_steps": 3, "model.path": "builtin:tiny-qwen3-teacher"})
    assert not (run / "resumes.jsonl").exists()  # nothing was touched


def test_a_branch_applies_a_new_learning_rate(finished, tmp_path):
    ckpt = finished / "t" / "checkpoints" / "step_2"
    summary = train(tmp_path, **{"trainer.run_name": "branch", "trainer.resume": str(ckpt),
                                 "trainer.total_steps": 3, "actor.lr": 3e-4})
    assert summary["resumed_from_step"] == 2
    (row,) = [json.loads(x) for x in (tmp_path / "branch" / "metrics.jsonl").read_text().splitlines()]
    assert row["step"] == 3 and row["actor/lr"] == 3e-4  # not the 1e-4 the optimizer state carried
    state = torch.load(tmp_path / "branch" / "checkpoints" / "step_3" / "trainer_state.pt", weights_only=False)
    assert state["config"]["actor"]["lr"] == 3e-4
    changed = json.loads((tmp_path / "branch" / "resumes.jsonl").read_text())["changed"]
    assert changed["actor.lr"] == [1e-4, 3e-4] and changed["trainer.run_name"] == ["t", "branch"]


def test_resume_auto_without_a_checkpoint_starts_over_and_keeps_the_old_files(tmp_path):
    run = tmp_path / "t"
    train(tmp_path, **{"trainer.total_steps": 1, "trainer.save_freq": 0})
    import shutil

    shutil.rmtree(run / "checkpoints")  # as if killed before the first checkpoint
    old = (run / "metrics.jsonl").read_text()
    train(tmp_path, **{"trainer.total_steps": 1})
    (moved,) = (run / "superseded").iterdir()
    assert moved.name.endswith("-restart") and (moved / "metrics.jsonl").read_text() == old
    assert (moved / "eval" / "step_0.json").is_file() and steps_of(run) == [1]


def test_resume_moves_later_rows_and_a_torn_line_aside(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_2")  # killed after step 2's row, before its checkpoint
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "reward/me')  # and then torn mid-write
    summary = train(tmp_path, **{"trainer.save_freq": 1})
    assert summary["resumed_from_step"] == 1 and steps_of(run) == [1, 2]
    (moved,) = (run / "superseded").iterdir()
    dropped = (moved / "metrics.jsonl").read_text().splitlines()
    assert json.loads(dropped[0])["step"] == 2 and dropped[1] == '{"step": 3, "reward/me'
    assert (moved / "eval" / "step_2.json").is_file()


def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    weights = run / "checkpoints" / "step_2" / "model" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    summary = train(tmp_path, **{"trainer.total_steps": 3})
    out = capsys.readouterr().out
    assert f"warning: skipping checkpoint step_2: {weights} has" in out
    assert summary["resumed_from_step"] == 1


def test_a_truncated_trainer_state_is_skipped_and_resume_path_to_it_is_one_line(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    state = run / "checkpoints" / "step_2" / "trainer_state.pt"
    os.truncate(state, 1000)
    with pytest.raises(ScirlError) as e:
        train(tmp_path, **{"trainer.run_name": "other", "trainer.resume": str(state.parent)})
    assert str(e.value).startswith(f"trainer.resume: checkpoint {state.parent} is damaged: {state} has 1000 bytes")
    assert train(tmp_path, **{"trainer.total_steps": 3})["resumed_from_step"] == 1


def test_a_torn_step_0_eval_does_not_stop_a_resume(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    (run / "eval" / "step_0.json").write_text('{"dataset": "tiny')
    summary = train(tmp_path, **{"trainer.total_steps": 3})
    assert "cannot read" in capsys.readouterr().out and summary["before"] is None and summary["steps"] == 3


def test_temp_folders_of_killed_saves_are_removed(tmp_path):
    leftover = tmp_path / "t" / "checkpoints" / ".tmp_step_7_12345"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"x" * 10)
    train(tmp_path, **{"trainer.total_steps": 1})
    assert not leftover.exists()


def test_keep_last_prunes_old_checkpoints_but_never_the_newest(tmp_path):
    train(tmp_path, **{"trainer.total_steps": 3, "trainer.save_freq": 1, "trainer.keep_last": 2})
    assert [p.name for p in list_checkpoints(tmp_path / "t")] == ["step_2", "step_3"]


def test_a_locked_run_folder_is_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    with RunLock(tmp_path / "t"):
        with pytest.raises(ScirlError) as e:
            train(tmp_path)
    import socket

    msg = str(e.value)
    assert msg.startswith(f"run folder {tmp_path / 't'} is in use by another run (pid {os.getpid()} on host "
                          f"{socket.gethostname()}, since ")
    assert not (tmp_path / "t").exists()  # refused before anything was written
    (tmp_path / ".t.lock").write_text('{"pid": 999999, "host": "gone", "since": "2026-01-01 00:00:00"}')
    train(tmp_path, **{"trainer.total_steps": 1})
    assert "stale lock of a run that did not exit cleanly (pid 999999 on host gone" in capsys.readouterr().out
    assert (tmp_path / ".t.lock").read_text() == ""  # released cleanly
