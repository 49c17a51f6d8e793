"""Bad input on the command line: one line on stderr naming the key or path, exit code 2, no traceback."""

import subprocess
import sys

import pytest


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "scirl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "trainer.totl_steps=3"], "trainer.total_steps"),
        (["train", "no_such_recipe.yaml"], "no_such_recipe.yaml"),
        (["train", "model.path=/no/such/model"], "/no/such/model"),
        (["train", "data.train_size=0"], "data.train_size=0 must be >= 1"),
        (["train", "rollout.n=1"], "rollout.n"),
        (["train", "actor.ppo_mini_batch_size=3"], "actor.ppo_mini_batch_size"),
        (["train", "data.train=tiny_physic"], "tiny_physics"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, expected, tmp_path):
    proc = run_cli(*args, f"trainer.output_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("scirl: error:") and expected in lines[0]
    assert "Traceback" not in proc.stderr


def test_help_lists_train():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "train" in proc.stdout
