"""`scirl train` of a LoRA run on 2 processes (torchrun, gloo, FSDP2 on the PeftModel, KL against the
adapter-disabled reference): the merged plain rollout copy samples what the sharded policy scores (rollout vs
trainer log-probs within 1e-5 at every step), the KL term is live; dcp/ holds the adapter and its moments only;
2 steps + a 2-rank resume of 1 equal 3 steps straight bit for bit (adapter, moments, metrics); the 2-rank
checkpoint's adapter folder is the one a single process writes, `scirl export` merges it like a 1-rank one, and one
process resumes it (the adapter-only dcp/ resharded onto an unsharded PeftModel)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_overrides
from scirl.ckpt.sharded import read_saved, saved_keys

REPO = Path(__file__).resolve().parent.parent
REWARD = Path(__file__).parent / "helpers" / "length_reward.py"
OVERRIDES = {"model.lora.rank": 8, "model.lora.alpha": 16, "model.lora.target_modules": "[q_proj,v_proj]",
             "actor.use_kl_loss": True, "actor.lr": 1e-2, "reward.name": f"{REWARD}:score",
             "trainer.total_steps": 3, "trainer.save_freq": 2, "data.train_size": 16, "data.val_size": 4,
             "rollout.val_n": 2, "rollout.max_new_tokens": 16, "data.train_batch_size": 4,
             "actor.ppo_mini_batch_size": 2, "actor.ppo_micro_batch_size": 4, "rollout.n": 4,
             "trainer.num_threads": 1}


def _train(tmp: Path, name: str, **extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SCIRL_FAULT", "SCIRL_FAULT_RANK"):
        env.pop(key, None)
    args = small_overrides(tmp, **{**OVERRIDES, "trainer.run_name": name, **extra})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "scirl",
           "train", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("timing/")}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """3 steps on 2 ranks, checkpoints at steps 2 and 3."""
    tmp = tmp_path_factory.mktemp("lora_dist_train")
    _train(tmp, "straight")
    return tmp / "straight"


def test_two_rank_lora_resume_is_bitwise(straight, tmp_path):
    part = tmp_path / "part"
    shutil.copytree(straight, part)
    shutil.rmtree(part / "checkpoints" / "step_3")
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    out = _train(tmp_path, "part", **{"trainer.resume": "auto"})
    assert "(step 2)" in out.stdout and "random generators seeded" not in out.stdout  # every rank's RNG restored
    a, b = (run / "checkpoints" / "step_3" for run in (straight, part))
    fa, fb = (load_file(c / "model" / "adapter_model.safetensors") for c in (a, b))
    assert fa.keys() == fb.keys() and len(fa) == 16 and all(torch.equal(fa[k], fb[k]) for k in fa)
    for name in ("model", "optimizer"):
        sa, sb = read_saved(a / "dcp", name), read_saved(b / "dcp", name)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _rows(straight)[2] == _rows(part)[2]
    before = load_file(a.parent / "step_2" / "model" / "adapter_model.safetensors")
    assert any(not torch.equal(fa[k], before[k]) for k in fa)  # step 3 moved the adapter


def test_two_rank_lora_samples_merged_saves_the_adapter_and_exports(straight, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from scirl.cli import main
    from scirl.config import load_config
    from scirl.export.adapter import load_base_and_adapter
    from scirl.train.lora import apply_lora
    from scirl.train.model_loading import load_model_and_tokenizer

    rows = _rows(straight)
    # the rollout copy (plain, merged) sampled; the sharded PeftModel rescored: the same log-probs
    assert all(r["rollout/logprob_diff_max"] < 1e-5 for r in rows), [r["rollout/logprob_diff_max"] for r in rows]
    assert rows[-1]["actor/kl_loss"] > 1e-6  # the adapter-disabled reference differs from the trained policy
    ckpt = straight / "checkpoints" / "step_3"
    keys = saved_keys(ckpt / "dcp")
    tensors = [k for k, shape in keys.items() if shape is not None and k.split(".")[0] in ("model", "optimizer")]
    assert len(tensors) == 16 * 4 and all("lora_" in k for k in tensors)  # weights; step, exp_avg, exp_avg_sq
    assert json.loads((ckpt / "manifest.json").read_text())["files"].keys() >= {"dcp/__0_0.distcp",
                                                                                "dcp/__1_0.distcp"}
    # the adapter folder is the one a single process writes for this config
    one = tmp_path / "one"
    model, _ = load_model_and_tokenizer("builtin:tiny-qwen3")
    apply_lora(model, load_config(None, small_overrides(tmp_path, **OVERRIDES)).model.lora).save_pretrained(one)
    mine, theirs = (json.loads((d / "adapter_config.json").read_text()) for d in (one, ckpt / "model"))
    for config in (mine, theirs):  # peft keeps target_modules as a set: its order follows the hash seed
        config["target_modules"] = sorted(config["target_modules"])
    assert mine == theirs and mine["r"] == 8 and mine["lora_alpha"] == 16
    saved, fresh = load_file(ckpt / "model" / "adapter_model.safetensors"), load_file(one / "adapter_model.safetensors")
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in fresh.items()}
    # scirl export: merged into a plain model whose logits equal base + adapter's
    out = tmp_path / "merged"
    assert main(["export", str(straight), "-o", str(out), "--dtype", "fp32"]) == 0
    assert "merged" in capsys.readouterr().out
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])
    peft_model, base = load_base_and_adapter(ckpt)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        expected, got = peft_model(ids).logits, merged(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base if not base.startswith("builtin:") else
                                                     REPO / "src/scirl/assets/tiny-qwen3")(ids).logits
    assert float((expected - got).abs().max()) < 1e-5
    assert float((expected - plain).abs().max()) > 1e-4  # the trained adapter is in the merged weights
    assert isinstance(peft_model, PeftModel) and not any("lora" in k for k in merged.state_dict())


def test_a_two_rank_lora_checkpoint_resumes_in_one_process(straight, tmp_path, capsys):
    from scirl.config import load_config
    from scirl.train.loop import run_training

    one = tmp_path / "one"
    shutil.copytree(straight, one)
    shutil.rmtree(one / "checkpoints" / "step_2")
    args = small_overrides(tmp_path, **{**OVERRIDES, "trainer.run_name": "one", "trainer.total_steps": 4,
                                        "reward.workers": 1})
    summary = run_training(load_config(None, args))
    assert summary["resumed_from_step"] == 3
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().out
    a, b = (load_file(one / "checkpoints" / f"step_{s}" / "model" / "adapter_model.safetensors") for s in (3, 4))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # step 4 trained the adapter
    state = read_saved(one / "checkpoints" / "step_4" / "dcp", "optimizer")
    assert {float(v) for k, v in state.items() if k.endswith(".step")} == {8.0}  # 2 mini-batches a step, from 6 on
    assert [r["step"] for r in _rows(one)] == [1, 2, 3, 4]
