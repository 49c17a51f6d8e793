"""`scirl sft` on 2 processes (trainer.nproc_per_node=2: the launcher re-invokes `-m scirl sft` under torchrun;
FSDP2 over gloo, the tiny model): the same per-step losses and weights as one process on the same batches, the
rollout evaluation sharded over the ranks, and its checkpoint (written by 2 ranks) resumes in one process to the
same weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers.sft_data import sft_args
from scirl.cli import main

REPO = Path(__file__).resolve().parent.parent
EXTRA = {"sft.max_steps": 3, "trainer.save_freq": 1, "trainer.num_threads": 1}


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["sft/loss"] for r in rows if "sft/loss" in r]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step}" / "model" / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    """Over the common tensors (a model/ gathered from FSDP shards also lists the tied lm_head.weight)."""
    common = a.keys() & b.keys()
    assert len(common) >= min(len(a), len(b)) > 10
    return max(float((a[k] - b[k]).abs().max()) for k in common)


def test_two_ranks_match_one_and_their_checkpoint_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    rollout_eval = {"sft.rollout_eval": True, "data.val": "tiny_physics", "data.val_size": 4, "rollout.val_n": 2,
                    "rollout.max_new_tokens": 8, "reward.workers": 0}  # sharded: from a full-weight copy per rank
    args = sft_args(tmp_path, **{**EXTRA, **rollout_eval, "trainer.run_name": "two", "trainer.nproc_per_node": 2})
    proc = subprocess.run([sys.executable, "-m", "scirl", "sft", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final model:") == 1 and proc.stdout.count("sft: 12 conversations") == 1  # rank 0 talks
    assert main(["sft", *sft_args(tmp_path, **{**EXTRA, "trainer.run_name": "one"})]) == 0
    two, one = tmp_path / "two", tmp_path / "one"
    summary = json.loads((two / "summary.json").read_text())
    assert summary["before"]["num_prompts"] == summary["after"]["num_prompts"] == 4  # both ranks' shares gathered
    assert len(_losses(two)) == 3 and all(abs(a - b) < 1e-5 for a, b in zip(_losses(two), _losses(one)))
    # Adam at lr 1e-3 moves each weight by ~1e-3 a step whatever the gradient's size: the summation-order noise of
    # FSDP's reduce-scatter shows at 1e-5, two orders below what one step moves
    assert _max_diff(_weights(two, 3), _weights(one, 3)) < 1e-4
    assert _max_diff(_weights(two, 3), _weights(two, 2)) > 5e-4
    # the 2-rank checkpoint of step 2 resumes in one process (DCP reshards) to the same step-3 weights
    part = tmp_path / "part"
    shutil.copytree(two, part)
    shutil.rmtree(part / "checkpoints" / "step_3")
    (part / "summary.json").unlink()
    assert main(["sft", *sft_args(tmp_path, **{**EXTRA, **rollout_eval, "trainer.run_name": "part"})]) == 0
    assert _max_diff(_weights(part, 3), _weights(two, 3)) < 1e-4
    assert json.loads((part / "summary.json").read_text())["resumed_from_step"] == 2
