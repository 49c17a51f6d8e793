"""trainer.best_metric: checkpoints/best/ holds the best validation step (not the last), pruning keeps the best and
the latest, a resume keeps the best, and a metric validation never writes is one line at config load."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, small_overrides
from scirl.ckpt.best import read_best
from scirl.config import load_config
from scirl.errors import ScirlError

# mean@4 per validation step, scripted: the best (max) is step 2, not the last
VALUES = {0: 0.1, 1: 0.5, 2: 0.9, 3: 0.3, 4: 0.2, 5: 0.4, 6: 0.6}


@pytest.fixture
def scripted_eval(monkeypatch):
    """Validation reports mean@4 = VALUES[step] (written into the eval JSON too, so the files agree)."""
    import scirl.train.loop as loop

    real = loop.write_eval

    def write_eval(run_dir, step, report, records):
        report["metrics"]["mean@4"] = VALUES[step]  # the same dict validate() returns
        return real(run_dir, step, report, records)

    monkeypatch.setattr(loop, "write_eval", write_eval)


def _train(tmp_path, steps, **extra):
    from scirl.train.loop import run_training

    cfg = load_config(None, small_overrides(tmp_path, **{
        "trainer.total_steps": steps, "trainer.test_freq": 1, "trainer.save_freq": 3, "trainer.keep_last": 1,
        "trainer.best_metric": "val/mean@4", "rollout.max_new_tokens": 16, "data.val_size": 4, **extra}))
    run_training(cfg)
    return cfg.run_dir


def test_best_is_kept_pruned_around_and_survives_resume(tmp_path, scripted_eval):
    run = _train(tmp_path, 4)
    ckpts = run / "checkpoints"
    best = read_best(run)
    assert best == {"step": 2, "metric": "val/mean@4", "value": 0.9, "mode": "max", "checkpoint": "step_2"}
    # step 2 was no save step (save_freq 3): checkpointed for the best; keep_last=1 keeps the best and the latest
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "step_2", "step_4"]
    weights = ckpts / "best" / "model" / "model.safetensors"
    assert weights.read_bytes() == (ckpts / "step_2" / "model" / "model.safetensors").read_bytes()
    assert weights.stat().st_ino == (ckpts / "step_2" / "model" / "model.safetensors").stat().st_ino  # linked
    assert json.loads((run / "eval" / "step_2.json").read_text())["metrics"]["mean@4"] == best["value"]

    run = _train(tmp_path, 6)  # resume: 0.4 and 0.6 do not beat 0.9
    assert read_best(run)["step"] == 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "step_2", "step_6"]


def test_min_mode_and_off_by_default(tmp_path, scripted_eval):
    run = _train(tmp_path, 3, **{"trainer.best_mode": "min", "trainer.keep_last": 0})
    assert read_best(run)["step"] == 3 and read_best(run)["value"] == 0.3
    assert (run / "checkpoints" / "best" / "trainer_state.pt").is_file()
    assert load_config(None, []).trainer.best_metric == ""


def test_bad_best_metric_is_one_line(tmp_path):
    with pytest.raises(ScirlError) as e:
        load_config(None, ["rollout.val_n=4", "trainer.best_metric=mean@16"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("trainer.best_metric:") and "mean@4, std@4, pass@1" in msg
    with pytest.raises(ScirlError, match="trainer.best_mode"):
        load_config(None, ["trainer.best_metric=mean@4", "rollout.val_n=4", "trainer.best_mode=up"])
    out = subprocess.run([sys.executable, "-m", "scirl", "config", "trainer.best_metric=accuracy"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "trainer.best_metric" in out.stderr and "pass@" in out.stderr
