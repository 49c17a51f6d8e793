"""`scirl export` of a QLoRA run (model.quantization.load_in_4bit): the base quantised from model.path as in
training, dequantised to fp32, the adapter folded in; the merged fp32 folder has no quantization_config and its
logits equal the 4-bit base + adapter's (the trained policy) within 1e-5; --adapter-only still writes the adapter."""

import json
from pathlib import Path

import pytest
import torch

from conftest import small_overrides
from scirl.cli import main
from scirl.config import load_config
from scirl.export.adapter import load_base_and_adapter
from scirl.train.loop import run_training
from scirl.train.quantize import is_4bit

REWARD = Path(__file__).parent / "helpers" / "length_reward.py"
INPUT_IDS = [[5, 17, 42, 99, 3, 250, 7, 11], [9, 8, 7, 6, 5, 4, 3, 2]]


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qlora_export")
    run_training(load_config(None, small_overrides(tmp, **{
        "model.quantization.load_in_4bit": True, "model.quantization.bnb_4bit_quant_type": "nf4",
        "model.lora.rank": 8, "model.lora.alpha": 16, "model.lora.target_modules": "[q_proj,k_proj,v_proj,o_proj]",
        "trainer.total_steps": 1, "actor.lr": 3e-2, "data.train_size": 16, "rollout.max_new_tokens": 12,
        "data.val_size": 4, "rollout.val_n": 2, "reward.name": f"{REWARD}:score"})))
    return tmp / "t"


def test_merged_fp32_export_equals_the_4bit_base_plus_adapter(qlora_run, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert main(["export", str(qlora_run), "-o", str(out), "--dtype", "fp32"]) == 0
    assert "merged" in capsys.readouterr().out
    trained, _ = load_base_and_adapter(qlora_run / "checkpoints" / "step_1", dequantize=False)
    assert is_4bit(trained)  # the policy as trained: 4-bit nf4 base + fp32 adapter
    assert any(p.abs().max() > 0 for n, p in trained.named_parameters() if "lora_B" in n)
    expected = _logits(trained)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not is_4bit(merged) and not any("lora" in k for k in merged.state_dict())
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    # dequantising is exact: the fp32 base + the unmerged adapter compute the 4-bit policy's logits bit for bit
    # (bitsandbytes' 4-bit matmul multiplies by the same dequantize_4bit weights); what is left is the merge's fp32
    # rounding (W + s B A stored once), as for plain LoRA
    dequantised, _ = load_base_and_adapter(qlora_run / "checkpoints" / "step_1")
    assert not is_4bit(dequantised) and torch.equal(_logits(dequantised), expected)
    err = (expected - _logits(merged)).abs().max().item()
    assert err < 1e-5, err
    with torch.no_grad():  # the adapter is in the merged weights: the 4-bit base alone is far from it
        with trained.disable_adapter():
            assert (expected - _logits(trained)).abs().max().item() > 1e-3
    # and the merge started from the dequantised 4-bit base, not the fp32 model.path weights
    full = AutoModelForCausalLM.from_pretrained(trained.peft_config["default"].base_model_name_or_path)
    k = "model.layers.3.mlp.down_proj.weight"  # not adapted: the merged weight is the dequantised nf4 one
    assert not torch.equal(merged.state_dict()[k], full.state_dict()[k])
    assert (merged.state_dict()[k] - full.state_dict()[k]).abs().max() < 0.2 * full.state_dict()[k].abs().max()
    assert (out / "tokenizer_config.json").is_file()


def test_bf16_export_and_adapter_only(qlora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    bf16 = tmp_path / "bf16"
    assert main(["export", str(qlora_run), "-o", str(bf16), "--dtype", "bf16"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(bf16)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert "quantization_config" not in json.loads((bf16 / "config.json").read_text())
    out = tmp_path / "adapter"
    assert main(["export", str(qlora_run), "-o", str(out), "--adapter-only"]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    trained, _ = load_base_and_adapter(qlora_run / "checkpoints" / "step_1", dequantize=False)
    expected = _logits(trained)
    trained.load_adapter(str(out), adapter_name="again")
    trained.set_adapter("again")
    assert torch.equal(_logits(trained.eval()), expected)  # the written adapter is the trained one (same 4-bit base)
