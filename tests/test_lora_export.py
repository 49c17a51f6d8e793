"""`scirl export` of a LoRA run: base (the run's model.path) + adapter merged into a plain HF folder whose fp32
logits equal base + adapter's within 1e-5; --adapter-only writes the peft adapter folder; a run folder means its
latest checkpoint; one-line errors for a run without checkpoints and --adapter-only on a full-weight checkpoint."""

from pathlib import Path

import pytest
import torch

from conftest import small_overrides
from scirl.cli import main
from scirl.config import load_config
from scirl.export.adapter import load_base_and_adapter
from scirl.train.loop import run_training

REWARD = Path(__file__).parent / "helpers" / "length_reward.py"
INPUT_IDS = [[5, 17, 42, 99, 3, 250, 7, 11]]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora_export")
    run_training(load_config(None, small_overrides(tmp, **{
        "model.lora.rank": 8, "model.lora.alpha": 16, "model.lora.target_modules": "[q_proj,k_proj,v_proj,o_proj]",
        "trainer.total_steps": 2, "actor.lr": 3e-2, "data.train_size": 16, "rollout.max_new_tokens": 16,
        "reward.name": f"{REWARD}:score"})))
    return tmp / "t"


def test_merged_export_equals_base_plus_adapter(lora_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert main(["export", str(lora_run), "-o", str(out), "--dtype", "fp32"]) == 0  # the run: its latest checkpoint
    assert "merged" in capsys.readouterr().out
    peft_model, _ = load_base_and_adapter(lora_run / "checkpoints" / "step_2")
    b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert b and any(p.abs().max() > 0 for p in b)  # training moved the adapter
    expected = _logits(peft_model)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not any("lora" in k for k in merged.state_dict())
    assert (expected - _logits(merged)).abs().max().item() < 1e-5
    base = AutoModelForCausalLM.from_pretrained(peft_model.peft_config["default"].base_model_name_or_path)
    assert (expected - _logits(base)).abs().max().item() > 1e-4  # the adapter is really in the merged weights
    assert (out / "tokenizer_config.json").is_file() and (out / "config.json").is_file()


def test_adapter_only_writes_the_peft_folder(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    assert main(["export", str(lora_run / "checkpoints" / "step_2"), "-o", str(out), "--adapter-only"]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    peft_model, _ = load_base_and_adapter(lora_run / "checkpoints" / "step_2")
    base = AutoModelForCausalLM.from_pretrained(peft_model.peft_config["default"].base_model_name_or_path)
    again = PeftModel.from_pretrained(base, str(out)).eval()
    assert torch.equal(_logits(again), _logits(peft_model))


def test_bad_inputs_are_one_line(tmp_path, capsys):
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "empty_run"), "-o", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err.strip()
    assert "no usable checkpoint" in err and "\n" not in err
    full = tmp_path / "step_1"  # a full-weight checkpoint: no model/adapter_config.json
    (full / "model").mkdir(parents=True)
    (full / "trainer_state.pt").write_bytes(b"")
    assert main(["export", str(full), "-o", str(tmp_path / "y"), "--adapter-only"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--adapter-only" in err and "no LoRA adapter" in err and "\n" not in err
