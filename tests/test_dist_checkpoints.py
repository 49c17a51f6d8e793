"""Checkpoints of real multi-process runs (`torchrun --nproc-per-node 2 -m scirl train`: gloo, FSDP2, the tiny
model): a rank SIGKILLed mid-save leaves the previous checkpoint usable and the rerun, resumed from it, ends
bitwise equal to the uninterrupted 2-rank run (weights, Adam moments); the HF folder written from the rollout copy
loads and equals the DCP weights; a run's checkpoint resumes at another world size (2 -> 1 here, 1 -> 2 in
spawned ranks) with weights, Adam moments and the rollout copy equal to what was saved; a checkpoint that does not
fit the model is one line, exit 2."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from conftest import small_overrides
from scirl.ckpt.checkpoint import checkpoint_problem, load_trainer_state
from scirl.ckpt.sharded import read_saved, save_sharded
from scirl.config import load_config

pytest.importorskip("scirl.train.build", reason="the multi-process training path (train/build.py) is not here yet")
REPO = Path(__file__).resolve().parent.parent
REWARD = Path(__file__).parent / "helpers" / "length_reward.py"
OVERRIDES = {"reward.name": f"{REWARD}:score", "trainer.total_steps": 4, "trainer.save_freq": 2, "data.val_size": 4, "rollout.val_n": 2,
             "rollout.val_temperature": 0.0, "rollout.max_new_tokens": 16, "data.train_batch_size": 4,
             "actor.ppo_mini_batch_size": 2, "actor.ppo_micro_batch_size": 4, "rollout.n": 4,
             "trainer.num_threads": 1, "actor.lr": 1e-3}
TIMEOUT = 400


def train(tmp: Path, name: str, nproc: int = 2, **extra) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N -m scirl train` (N > 1) or `scirl train` with the small overrides in
    `tmp/<name>`; `SCIRL_*` environment variables via extra."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SCIRL_FAULT", "SCIRL_FAULT_RANK"):
        env.pop(key, None)
    env.update({k: v for k, v in extra.items() if k.startswith("SCIRL_")})
    keys = {k: v for k, v in extra.items() if not k.startswith("SCIRL_")}
    args = small_overrides(tmp, **{**OVERRIDES, "trainer.run_name": name, **keys})
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    return subprocess.run([sys.executable, *launch, "-m", "scirl", "train", *args], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def moments(ckpt: Path) -> dict:
    return {k: v for k, v in read_saved(ckpt / "dcp", "optimizer").items() if k.startswith("state.")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 2-rank run: 4 steps, checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("dist_ckpt")
    out = train(tmp, "ref")
    assert out.returncode == 0, out.stderr[-4000:]
    return tmp / "ref"


def test_a_rank_killed_mid_save_keeps_the_previous_checkpoint_and_the_rerun_is_bitwise(reference, tmp_path):
    killed = train(tmp_path, "r", SCIRL_FAULT="ckpt:mid_save@2", SCIRL_FAULT_RANK="1")  # rank 1, step 4's save
    assert killed.returncode != 0 and "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    ckpts = tmp_path / "r" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".tmp_")) == ["step_2"]
    assert checkpoint_problem(ckpts / "step_2") is None and list(ckpts.glob(".tmp_step_4_*"))
    rerun = train(tmp_path, "r")  # the same command again
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "removed .tmp_step_4_" in rerun.stdout and "(step 2)" in rerun.stdout
    assert "random generators seeded" not in rerun.stdout  # same world size: every rank's RNG restored
    assert not list(ckpts.glob(".tmp_*"))
    a, b = load_file(ckpts / "step_4" / "model" / "model.safetensors"), \
        load_file(reference / "checkpoints" / "step_4" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = moments(ckpts / "step_4"), moments(reference / "checkpoints" / "step_4")
    assert ma.keys() == mb.keys() and len(ma) > 100 and all(torch.equal(ma[k], mb[k]) for k in ma)
    before = load_file(ckpts / "step_2" / "model" / "model.safetensors")  # the steps did train
    assert all(not torch.equal(a[k], before[k]) for k in a if k.endswith("q_proj.weight"))
    assert all(ma[k].abs().sum() > 0 for k in ma if k.endswith("exp_avg_sq"))
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_the_hf_folder_of_a_2_rank_checkpoint_loads_and_equals_its_dcp_weights(reference):
    from transformers import AutoModelForCausalLM

    ckpt = reference / "checkpoints" / "step_2"
    state = load_trainer_state(ckpt)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and "optimizer" not in state
    hf = AutoModelForCausalLM.from_pretrained(ckpt / "model").state_dict()
    saved = read_saved(ckpt / "dcp", "model")
    assert hf.keys() == saved.keys() and all(torch.equal(hf[k], saved[k]) for k in hf)
    start = AutoModelForCausalLM.from_pretrained(REPO / "src/scirl/assets/tiny-qwen3").state_dict()
    assert not torch.equal(start["model.norm.weight"], hf["model.norm.weight"])  # trained, not the initial weights


def _full_state(parts) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(parts.model, parts.actor.optimizer,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    rollout = {k: v.detach().clone() for k, v in parts.engine.model.state_dict().items()}
    return {"model": msd, "state": osd.get("state", {}), "rollout": rollout, "lr": parts.actor.optimizer.param_groups[0]["lr"]}


def _resume_parts(run_dir: Path, ckpt: Path, name: str):
    """This rank's run components built and restored as `scirl train` does (train/loop.py), from `ckpt`."""
    from scirl.ckpt.resume import init_weights_path
    from scirl.train.build import build_run
    from scirl.train.loop import _restore
    from scirl.train.run_folder import RunStart

    cfg = load_config(None, small_overrides(run_dir, **{**OVERRIDES, "trainer.run_name": name,
                                                        "reward.workers": 1}))
    parts = build_run(cfg, init_weights_path(ckpt, cfg.model.path))
    _restore(RunStart(ckpt, load_trainer_state(ckpt)), cfg, parts)
    return parts


def _save(parts, run_dir: Path, step: int) -> Path:
    """A checkpoint of `parts` written as train/loop.py writes one."""
    from scirl.ckpt.checkpoint import save_checkpoint

    actor = parts.actor
    return save_checkpoint(run_dir, step, parts.model, parts.tokenizer, {
        "scheduler": actor.scheduler.state_dict(), "sampler": parts.sampler.state_dict(),
        "skipped_updates": actor.skipped_updates, "config": {}, "kl_ctrl": None,
    }, optimizer=actor.optimizer, save_hf=False)


def assert_equal_state(got: dict, saved_model: dict, saved_moments: dict, tol: float = 1e-6) -> None:
    assert got["model"].keys() == saved_model.keys()
    for k, v in got["model"].items():
        assert torch.allclose(v, saved_model[k], atol=tol, rtol=0), k
        assert torch.allclose(got["rollout"][k], saved_model[k], atol=tol, rtol=0), k  # the rollout copy too
    flat = {f"state.{p}.{m}": t for p, s in got["state"].items() for m, t in s.items()}
    assert flat.keys() == saved_moments.keys() and len(flat) > 100
    assert all(torch.allclose(flat[k].float(), saved_moments[k].float(), atol=tol, rtol=0) for k in flat)


def one_to_two_worker(rank: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        tmp = Path(tmp)
        parts = _resume_parts(tmp / f"rank{rank}", tmp / "one" / "checkpoints" / "step_3", "two")
        got = _full_state(parts)
        if rank == 0:
            torch.save(got, tmp / "one_to_two.pt")
        parts.pool.close()
    finally:
        dist.destroy_process_group()


def test_resume_2_to_1_and_1_to_2_restores_weights_moments_and_rollout_copy(reference, tmp_path, capsys):
    # 2 -> 1: the 2-rank checkpoint restored into one process, compared right after loading
    ckpt2 = reference / "checkpoints" / "step_2"
    parts = _resume_parts(tmp_path, ckpt2, "one")
    assert ("note: the checkpoint was written by 2 process(es), this run has 1: random generators seeded per rank "
            "from trainer.seed and step 2 instead of restored") in capsys.readouterr().out
    assert_equal_state(_full_state(parts), read_saved(ckpt2 / "dcp", "model"), moments(ckpt2))
    assert parts.sampler.state_dict() == load_trainer_state(ckpt2)["sampler"]
    # 1 -> 2: this process writes a checkpoint (world size 1: no process group), 2 spawned ranks restore it
    ckpt1 = _save(parts, tmp_path / "one", 3)
    parts.pool.close()
    assert load_trainer_state(ckpt1)["world_size"] == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(one_to_two_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "one_to_two.pt", weights_only=False)
    assert_equal_state(got, read_saved(ckpt1 / "dcp", "model"), moments(ckpt1))


def test_a_checkpoint_of_another_model_is_one_line_exit_2(reference, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = tmp_path / "other" / "checkpoints" / "step_2"
    shutil.copytree(reference / "checkpoints" / "step_2", ckpt)
    config = AutoConfig.from_pretrained(ckpt / "hf_meta", num_hidden_layers=2)
    shutil.rmtree(ckpt / "dcp")
    save_sharded(ckpt / "dcp", {"model": AutoModelForCausalLM.from_config(config)}, None)
    (ckpt / "manifest.json").unlink()  # sizes changed: the manifest would (rightly) call it damaged
    out = train(tmp_path, "branch", nproc=1, **{"trainer.resume": str(ckpt)})
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"scirl: error: trainer.resume: checkpoint does not fit this model: {ckpt / 'dcp' / '.metadata'} has no "
        "model.model.layers.2.self_attn.q_proj.weight")
