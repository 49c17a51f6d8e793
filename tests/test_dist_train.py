"""`scirl train` on 2 processes (torchrun, gloo, the tiny model): one launch with DAPO dynamic sampling checks that
each step is written once, that exactly train_batch_size groups are trained on, that the step-0 eval JSON equals one
process's, a single console summary and a rank-0 checkpoint; a world size that does not divide the batch is a
one-line error (exit 2); a rank killed mid-step ends the whole run quickly, leaving no process behind."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import small_overrides

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = {
    "trainer.total_steps": 2, "data.val_size": 4, "rollout.val_n": 2, "rollout.val_temperature": 0.0,
    "rollout.max_new_tokens": 16, "data.train_batch_size": 4, "actor.ppo_mini_batch_size": 2,
    "actor.ppo_micro_batch_size": 4, "rollout.n": 4, "trainer.num_threads": 1,
    "algorithm.filter_groups.enable": True, "algorithm.filter_groups.max_num_gen_batches": 8,
    "reward.name": str(REPO / "tests" / "helpers" / "parity_reward.py") + ":score",
}


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **extra}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return {**env, **extra}


def _torchrun(args: list[str], timeout: float, **env) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run `torchrun --nproc-per-node 2 -m scirl train ARGS` in its own session: (result, seconds, session id)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", "-m", "scirl",
           "train", *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not end within {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), time.monotonic() - t0, proc.pid


def _left_in_session(sid: int) -> list[str]:
    left = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
        except (ProcessLookupError, psutil.Error, PermissionError):
            pass
    return left


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist_train")
    args = small_overrides(tmp, **OVERRIDES)
    result, seconds, _ = _torchrun(args, timeout=300)
    (tmp / "torchrun.stderr").write_text(result.stderr)
    assert result.returncode == 0, f"see {tmp / 'torchrun.stderr'}: " + result.stderr[-2000:]
    return tmp / "t", result, args


def test_two_ranks_write_each_step_once_and_keep_exactly_the_batch(two_rank_run):
    run, result, _ = two_rank_run
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 alone writes
    for row in rows:
        assert row["dapo/train_groups"] == 4  # data.train_batch_size groups over both ranks, not per rank
        assert row["dapo/num_gen_batches"] >= 1 and row["actor/applied_updates"] == 2  # 2 mini-batches
        assert row["actor/grad_norm"] > 0
    assert result.stdout.count("2 steps in ") == 1  # exactly one console summary
    assert result.stdout.count("step 0 validation:") == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 2
    ckpt = run / "checkpoints" / "step_2"
    assert (ckpt / "trainer_state.pt").is_file() and (ckpt / "model" / "model.safetensors").is_file()
    assert not list((run / "checkpoints").glob(".tmp_*"))


def test_two_rank_eval_equals_one_process(two_rank_run):
    from scirl.config import load_config
    from scirl.eval.runner import evaluate
    from scirl.eval.samples import rows_text
    from scirl.rollout.base import SamplingParams
    from scirl.train.build import build_run

    run, _, args = two_rank_run
    cfg = load_config(None, args)
    parts = build_run(cfg, cfg.model.path)
    r = cfg.rollout
    with parts.pool:
        report, records = evaluate(parts.engine, parts.pool, parts.val_ps.samples, parts.val_ps.ids,
                                   SamplingParams(r.val_n, r.val_temperature, r.val_top_p, r.max_new_tokens),
                                   f"{cfg.data.val}-val", seed=cfg.trainer.seed + 7919, reward_info=cfg.reward.kwargs)
    report["step"] = 0
    assert json.loads((run / "eval" / "step_0.json").read_text()) == json.loads(json.dumps(report))
    assert (run / "eval" / "step_0_samples.jsonl").read_text() == rows_text(records)
    assert report["num_prompts"] == 4 and len(records) == 8


@pytest.mark.parametrize("batch,mini,key,launch", [
    (3, 3, "data.train_batch_size=3", {"WORLD_SIZE": "2"}),  # a rank (torchrun by hand): refused before joining
    (4, 1, "actor.ppo_mini_batch_size=1", {"WORLD_SIZE": "2"}),
    (4, 4, "data.train_batch_size=4", {"trainer.nproc_per_node": 3}),  # scirl's own launcher: before any rank
])
def test_world_size_must_divide_the_batch(tmp_path, batch, mini, key, launch):
    env = _env(**({"RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", **launch}
                  if "WORLD_SIZE" in launch else {}))
    extra = {k: v for k, v in launch.items() if "." in k}
    args = small_overrides(tmp_path, **{"data.train_batch_size": batch, "actor.ppo_mini_batch_size": mini, **extra})
    result = subprocess.run([sys.executable, "-m", "scirl", "train", *args], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    world = launch.get("WORLD_SIZE") or launch["trainer.nproc_per_node"]
    assert len(lines) == 1 and key in lines[0] and f"world size {world}" in lines[0], result.stderr
    assert not (tmp_path / "t").exists()  # refused before anything was written


def test_a_rank_dying_mid_step_ends_the_run(tmp_path):
    args = small_overrides(tmp_path, **{**OVERRIDES, "algorithm.filter_groups.enable": False, "data.val_size": 2,
                                        "rollout.val_n": 1, "rollout.max_new_tokens": 8})
    result, seconds, sid = _torchrun(args, timeout=180, SCIRL_FAULT="actor:before_clip", SCIRL_FAULT_RANK="1")
    assert result.returncode != 0
    assert "Signal 9" in result.stderr or "SIGKILL" in result.stderr, result.stderr[-3000:]
    assert seconds < 150
    time.sleep(1.0)
    assert _left_in_session(sid) == []  # no rank, no reward worker survives
    assert not (tmp_path / "t" / "metrics.jsonl").exists() or not (tmp_path / "t" / "metrics.jsonl").read_text()
