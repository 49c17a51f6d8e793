"""`scirl sft` with model.lora.rank > 0: only the adapter trains, checkpoints' model/ is the peft adapter folder
(as scirl train writes it), a resume continues it bitwise, and `scirl export` merges it into the base: the
targeted projections changed, every other weight is the base's."""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file

from helpers.sft_data import sft_args
from scirl.cli import main
from scirl.train.model_loading import resolve_model_path

LORA = {"model.lora.rank": 4, "model.lora.alpha": 8, "model.lora.target_modules": "[q_proj,v_proj]",
        "sft.max_steps": 3, "trainer.save_freq": 2, "actor.lr": 1e-2}


def _adapter(run, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step}" / "model" / "adapter_model.safetensors"))


def test_lora_sft_trains_the_adapter_resumes_and_exports(tmp_path):
    assert main(["sft", *sft_args(tmp_path, **{**LORA, "trainer.run_name": "full"})]) == 0
    full = tmp_path / "full"
    model_dir = full / "checkpoints" / "step_3" / "model"
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "model.safetensors").exists()
    a3 = _adapter(full, 3)
    assert a3 and all("lora_" in k for k in a3)
    b_keys = [k for k in a3 if "lora_B" in k]
    assert b_keys and all(float(a3[k].abs().max()) > 0 for k in b_keys)  # B starts at 0: it trained
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_3")
    (part / "summary.json").unlink()
    assert main(["sft", *sft_args(tmp_path, **{**LORA, "trainer.run_name": "part"})]) == 0
    p3 = _adapter(part, 3)
    assert p3.keys() == a3.keys() and all(torch.equal(p3[k], a3[k]) for k in a3)
    out = tmp_path / "merged"
    assert main(["export", str(full), "-o", str(out)]) == 0
    merged = load_file(str(out / "model.safetensors"))
    base = load_file(str(resolve_model_path("builtin:tiny-qwen3") + "/model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    assert "model.layers.0.mlp.up_proj.weight" not in changed
