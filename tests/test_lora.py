"""LoRA on the policy (model.lora): config checks, the peft wrapping (only the adapter trains), generate and
log-probs through peft, the adapter-disabled reference equal to the base model, and a 2 + 1 step resume bitwise
equal to an uninterrupted 3-step run, with the adapter folder in the checkpoint's model/."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import small_overrides
from scirl.config import load_config
from scirl.errors import ScirlError
from scirl.rollout.base import Trajectories
from scirl.train.logprobs import batched_logprobs
from scirl.train.lora import AdapterDisabledReference, apply_lora, linear_layer_names
from scirl.train.loop import run_training
from scirl.train.model_loading import load_model_and_tokenizer

REWARD = Path(__file__).parent / "helpers" / "length_reward.py"  # varies within a group: every step moves weights
LORA = {"model.lora.rank": 8, "model.lora.alpha": 16, "model.lora.target_modules": "[q_proj,v_proj]"}


def _lora_cfg(**kw):
    return load_config(None, [f"{k}={v}" for k, v in {**LORA, **kw}.items()]).model.lora


def _traj(tokenizer, b=3, p=5, r=6) -> Trajectories:
    g = torch.Generator().manual_seed(0)
    v = tokenizer.vocab_size if hasattr(tokenizer, "vocab_size") else 100
    ids = torch.randint(3, min(v, 400), (b, p + r), generator=g)
    mask = torch.ones(b, p, dtype=torch.long)
    return Trajectories(prompt_ids=ids[:, :p], prompt_mask=mask, response_ids=ids[:, p:],
                        response_mask=torch.ones(b, r), rollout_logprobs=torch.zeros(b, r),
                        uid=[str(i) for i in range(b)], sample_index=[0] * b,
                        truncated=torch.zeros(b, dtype=torch.bool))


def test_config_ranges_and_defaults():
    cfg = load_config(None, [])
    assert cfg.model.lora.rank == 0  # off by default
    with pytest.raises(ScirlError, match="model.lora.rank"):
        load_config(None, ["model.lora.rank=-1"])
    with pytest.raises(ScirlError, match="model.lora.dropout"):
        load_config(None, ["model.lora.dropout=1.5"])


def test_unknown_target_module_lists_the_linear_layers():
    model, _ = load_model_and_tokenizer("builtin:tiny-qwen3")
    names = linear_layer_names(model)
    assert {"q_proj", "v_proj", "lm_head"} <= set(names)
    with pytest.raises(ScirlError) as e:
        apply_lora(model, _lora_cfg(**{"model.lora.target_modules": "[q_proj,qkv]"}))
    msg = str(e.value)
    assert "\n" not in msg and "model.lora.target_modules" in msg and "qkv" in msg
    assert all(n in msg for n in names)


def test_only_the_adapter_trains_and_generate_and_logprobs_work_through_peft():
    model, tok = load_model_and_tokenizer("builtin:tiny-qwen3")
    base_lp = batched_logprobs(model, _traj(tok), 8, 1.0)
    peft = apply_lora(model, _lora_cfg())
    trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # a fresh adapter (B = 0) leaves the policy unchanged
    assert torch.equal(batched_logprobs(peft, _traj(tok), 8, 1.0), base_lp)
    out = peft.generate(input_ids=torch.tensor([[5, 6, 7]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                        max_new_tokens=4, min_new_tokens=4, do_sample=True, pad_token_id=tok.pad_token_id)
    assert out.shape == (1, 7)  # min_new_tokens: a sampled early EOS cannot shorten it


def test_adapter_disabled_reference_equals_the_base_model():
    model, tok = load_model_and_tokenizer("builtin:tiny-qwen3")
    base_lp = batched_logprobs(model, _traj(tok), 8, 1.0)
    peft = apply_lora(model, _lora_cfg(**{"model.lora.dropout": 0.1}))
    with torch.no_grad():  # a trained adapter: B != 0
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft.train()
    policy_lp = batched_logprobs(peft.eval(), _traj(tok), 8, 1.0)
    assert not torch.allclose(policy_lp, base_lp)
    peft.train()
    ref = AdapterDisabledReference(peft, 8, 1.0)
    before = sum(p.numel() for p in peft.parameters())
    assert torch.allclose(ref.logprobs(_traj(tok)), base_lp, atol=1e-6)
    assert peft.training  # the mode is restored
    assert sum(p.numel() for p in peft.parameters()) == before  # no second copy
    assert torch.equal(batched_logprobs(peft.eval(), _traj(tok), 8, 1.0), policy_lp)  # adapter back on


def test_lora_run_with_kl_resumes_bitwise_and_saves_the_adapter(tmp_path):
    extra = {**LORA, "trainer.save_freq": 2, "trainer.total_steps": 3, "actor.lr": 1e-2, "actor.use_kl_loss": True,
             "data.train_size": 16, "rollout.max_new_tokens": 16, "reward.name": f"{REWARD}:score",
             "data.val_size": 4, "rollout.val_n": 2}
    run_training(load_config(None, small_overrides(tmp_path, **{**extra, "trainer.run_name": "full"})))
    full = tmp_path / "full"
    model_dir = full / "checkpoints" / "step_2" / "model"
    assert (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").exists()
    adapter = load_file(model_dir / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "checkpoints" / "step_3")
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    summary = run_training(load_config(None, small_overrides(tmp_path, **{**extra, "trainer.run_name": "part",
                                                                          "trainer.resume": "auto"})))
    assert summary["resumed_from_step"] == 2
    a = load_file(full / "checkpoints" / "step_3" / "model" / "adapter_model.safetensors")
    b = load_file(part / "checkpoints" / "step_3" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], adapter[k]) for k in a)  # step 3 moved the adapter
    def last(run):
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[2])
        return {k: v for k, v in row.items() if not k.startswith("timing/")}
    assert last(full) == last(part)
    kl = [k for k in last(full) if "kl" in k]
    assert kl and any(last(full)[k] != 0 for k in kl), last(full)  # the KL term against the base is live


def test_tiny_lora_recipe_loads():
    import scirl

    cfg = load_config(Path(scirl.__file__).parent / "recipes" / "tiny_lora.yaml")
    assert cfg.model.lora.rank == 16 and cfg.model.path == "builtin:tiny-qwen3"
    assert set(cfg.model.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"}


def test_gradients_reach_the_adapter_with_gradient_checkpointing():
    from scirl.train.fsdp import enable_gradient_checkpointing, is_checkpointing

    model, _ = load_model_and_tokenizer("builtin:tiny-qwen3")
    peft = apply_lora(model, _lora_cfg())
    enable_gradient_checkpointing(peft)
    peft.train()
    assert is_checkpointing(peft)  # seen through the peft wrapper (the log-prob path's shared-prefix switch)
    peft(torch.tensor([[5, 6, 7, 8, 9]])).logits.logsumexp(-1).sum().backward()
    grads = {n: p.grad for n, p in peft.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(g.abs().max() > 0 for n, g in grads.items() if "lora_B" in n)
