"""4-bit QLoRA (model.quantization): config checks (one line naming the key), the 4-bit base re-quantised bit for
bit from model.path, gradients reaching the adapter through the 4-bit matmuls, the adapter-disabled reference
equal to the 4-bit base, and tiny_qlora.yaml trained 1 step + resumed to 2 bitwise equal to 2 uninterrupted
steps, the adapter moved and the base still 4-bit."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import scirl
from conftest import small_overrides
from scirl.ckpt.sharded import saved_keys
from scirl.config import load_config
from scirl.errors import ScirlError
from scirl.train.logprobs import batched_logprobs
from scirl.train.lora import AdapterDisabledReference, apply_lora
from scirl.train.model_loading import load_model_and_tokenizer
from scirl.train.quantize import is_4bit

RECIPE = Path(scirl.__file__).parent / "recipes" / "tiny_qlora.yaml"
REWARD = Path(__file__).parent / "helpers" / "length_reward.py"  # varies within a group: every step moves weights
Q4 = {"model.quantization.load_in_4bit": True, "model.lora.rank": 8, "model.lora.alpha": 16,
      "model.lora.target_modules": "[q_proj,v_proj]"}


def _cfg(**kw):
    return load_config(None, [f"{k}={v}" for k, v in {**Q4, **kw}.items()])


def _one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_bad_input_is_one_line_naming_the_key(monkeypatch):
    with pytest.raises(ScirlError) as e:
        _cfg(**{"model.lora.rank": 0})
    _one_line(e, "model.quantization.load_in_4bit", "model.lora.rank > 0")
    with pytest.raises(ScirlError) as e:
        _cfg(**{"model.quantization.bnb_4bit_quant_type": "int4"})
    _one_line(e, "model.quantization.bnb_4bit_quant_type", "int4", "nf4", "fp4")
    with pytest.raises(ScirlError) as e:
        _cfg(**{"model.quantization.bnb_4bit_compute_dtype": "float64"})
    _one_line(e, "model.quantization.bnb_4bit_compute_dtype", "bfloat16")
    with pytest.raises(ScirlError) as e:
        _cfg(**{"trainer.nproc_per_node": 2})
    _one_line(e, "model.quantization.load_in_4bit", "trainer.nproc_per_node=2")
    with pytest.raises(ScirlError) as e:
        _cfg(**{"rollout.engine": "vllm"})
    _one_line(e, "model.quantization.load_in_4bit", "rollout.engine=vllm")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(ScirlError) as e:
        _cfg()
    _one_line(e, "model.quantization.load_in_4bit", "pip install bitsandbytes")
    assert not load_config(None, ["model.quantization.bnb_4bit_quant_type=fp4"]).model.quantization.load_in_4bit


def test_4bit_base_is_requantised_bitwise_and_the_adapter_gets_gradients():
    q = _cfg().model.quantization
    model, _ = load_model_and_tokenizer("builtin:tiny-qwen3", quantization=q)
    again, _ = load_model_and_tokenizer("builtin:tiny-qwen3", quantization=q)
    a, b = model.state_dict(), again.state_dict()
    assert is_4bit(model) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["model.layers.0.self_attn.q_proj.weight"].dtype == torch.uint8  # two 4-bit codes a byte
    assert not any(p.requires_grad for p in model.parameters())  # prepare_model_for_kbit_training froze the base
    state = {k: v.clone() for k, v in a.items()}
    model.load_state_dict(state)  # a saved state of the same base loads (its quantisation constants checked)
    state["model.layers.1.mlp.up_proj.weight.absmax"][0] += 1e-3
    with pytest.raises(ScirlError) as e:  # a base that quantises differently is refused on resume
        model.load_state_dict(state)
    _one_line(e, "model.quantization", "model.layers.1.mlp.up_proj.weight.absmax", "differs")
    peft = apply_lora(model, _cfg().model.lora)
    peft.train()
    peft(torch.tensor([[5, 6, 7, 8, 9]])).logits.logsumexp(-1).sum().backward()
    grads = {n: p.grad for n, p in peft.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n for n in grads)
    assert all(g is not None for g in grads.values())
    assert all(g.abs().max() > 0 for n, g in grads.items() if "lora_B" in n)


def test_adapter_disabled_reference_equals_the_4bit_base():
    from test_lora import _traj

    q = _cfg().model.quantization
    base, tok = load_model_and_tokenizer("builtin:tiny-qwen3", quantization=q)
    base_lp = batched_logprobs(base, _traj(tok), 8, 1.0)
    full, _ = load_model_and_tokenizer("builtin:tiny-qwen3")
    assert (batched_logprobs(full, _traj(tok), 8, 1.0) - base_lp).abs().max() > 1e-4  # 4-bit is not the fp32 model
    peft = apply_lora(base, _cfg().model.lora)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    assert (batched_logprobs(peft.eval(), _traj(tok), 8, 1.0) - base_lp).abs().max() > 1e-3
    ref = AdapterDisabledReference(peft.train(), 8, 1.0)
    assert torch.equal(ref.logprobs(_traj(tok)), base_lp)
    assert peft.training


def test_tiny_qlora_recipe_trains_and_resumes_bitwise(tmp_path):
    cfg = load_config(RECIPE)
    q = cfg.model.quantization
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, cfg.model.lora.rank) == (True, "nf4", 16)
    extra = {"trainer.save_freq": 1, "trainer.total_steps": 2, "trainer.test_freq": 0, "actor.use_kl_loss": True,
             "data.train_size": 16, "data.train_batch_size": 4, "actor.ppo_mini_batch_size": 4,
             "rollout.n": 4, "rollout.max_new_tokens": 16, "reward.name": f"{REWARD}:score",
             "data.val_size": 4, "rollout.val_n": 2, "trainer.progress": False, "reward.workers": 1}
    from scirl.train.loop import run_training

    def over(name, **kw):
        return [f"{k}={v}" for k, v in {**extra, "trainer.output_dir": tmp_path, "trainer.run_name": name,
                                        **kw}.items()]

    run_training(load_config(RECIPE, over("full")))
    full = tmp_path / "full"
    step1 = load_file(full / "checkpoints" / "step_1" / "model" / "adapter_model.safetensors")
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_2")
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:1]) + "\n")
    summary = run_training(load_config(RECIPE, over("part", **{"trainer.resume": "auto"})))
    assert summary["resumed_from_step"] == 1
    a = load_file(full / "checkpoints" / "step_2" / "model" / "adapter_model.safetensors")
    b = load_file(part / "checkpoints" / "step_2" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], step1[k]) for k in a)  # the resumed step moved the adapter
    saved = saved_keys(part / "checkpoints" / "step_2" / "dcp")
    model_keys = [k for k in saved if k.startswith("model.")]
    assert model_keys and all("lora_" in k for k in model_keys)  # adapter only: the 4-bit base is re-made from
    assert not any("quant_state" in k or "base_layer" in k for k in saved)  # model.path on resume, never saved
    fresh = {k for k in a if "lora_B" in k}
    assert fresh and all(a[k].abs().max() > 0 for k in fresh)  # B starts at 0: training moved every B

    def last(run):
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
        return {k: v for k, v in row.items() if not k.startswith("timing/")}

    assert last(full) == last(part)
    kl = [k for k in last(full) if "kl" in k]
    assert kl and any(last(full)[k] != 0 for k in kl), last(full)  # KL against the 4-bit base is live


def test_qlora_rlsd_with_the_adapter_ema_teacher_resumes_bitwise(tmp_path):
    from conftest import full_and_resumed_runs

    extra = {**Q4, "trainer.save_freq": 1, "trainer.total_steps": 2, "actor.lr": 1e-2,
             "actor.policy_loss": "rlsd", "distill.teacher": "ema", "distill.teacher_update_rate": 0.5,
             "distill.teacher_context": "peer_solution", "data.train_size": 16, "rollout.max_new_tokens": 16,
             "data.val_size": 4, "rollout.val_n": 2, "reward.name": f"{REWARD}:score"}
    full, part, summary = full_and_resumed_runs(tmp_path, extra, stop_after=1)
    assert summary["resumed_from_step"] == 1
    a = load_file(full / "checkpoints" / "step_2" / "model" / "adapter_model.safetensors")
    b = load_file(part / "checkpoints" / "step_2" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads((run / "metrics.jsonl").read_text().splitlines()[1]) for run in (full, part)]
    same = [{k: v for k, v in row.items() if not k.startswith("timing/")} for row in rows]
    assert same[0] == same[1]
    assert any(k.startswith("rlsd/") or "teacher" in k for k in same[0]), sorted(same[0])
