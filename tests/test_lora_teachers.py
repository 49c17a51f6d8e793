"""LoRA runs keep one copy of the base: the EMA self-teacher averages the adapter only (scored by standing its
tensors in for the student's trainable parameters), and the KL reference is the same module with the adapter disabled —
its memory growth is measured against a FrozenReference copy in a fresh process."""

import copy
import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import REPO, full_and_resumed_runs
from scirl.train.lora import apply_lora
from scirl.train.model_loading import load_model_and_tokenizer
from scirl.train.teachers import AdapterEMATeacher, EMATeacher
from test_lora import LORA, _lora_cfg, _traj


def _student():
    model, tok = load_model_and_tokenizer("builtin:tiny-qwen3")
    torch.manual_seed(0)
    return apply_lora(model, _lora_cfg(**{"model.lora.target_modules": "[q_proj,v_proj,down_proj]"})), tok


def _nudge(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_adapter_ema_equals_an_ema_of_the_whole_peft_model_and_holds_only_the_adapter():
    student, tok = _student()
    whole = EMATeacher(copy.deepcopy(student))  # the full-copy teacher: the reference semantics
    ema = AdapterEMATeacher(student)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    held = sum(t.numel() for t in ema.state_module.buffers())
    total = sum(p.numel() for p in student.parameters())
    assert held == trainable and held < 0.1 * total, (held, total)
    traj = _traj(tok)
    for seed, rate in ((1, 0.5), (2, 0.25), (3, 1.0), (4, 0.1)):
        _nudge(student, seed)
        ema.update(student, rate)
        whole.update(student, rate)
    student.train()
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    got, want = ema.logprobs(traj), whole.logprobs(traj)
    assert torch.allclose(got, want, atol=1e-6, rtol=0), (got - want).abs().max()
    student.eval()
    from scirl.train.logprobs import batched_logprobs

    own = batched_logprobs(student, traj, 8, 1.0)
    assert (own - got).abs().max() > 1e-3  # the teacher is not the student
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())  # bitwise restored
    p, m, r = traj.prompt_ids, traj.prompt_mask, traj.response_ids
    assert torch.allclose(ema.log_softmax(p, m, r), whole.log_softmax(p, m, r), atol=1e-6, rtol=0)
    assert all(torch.equal(p, before[n]) for n, p in student.named_parameters())


def test_lora_rlsd_run_checkpoints_the_adapter_ema_and_resumes_bitwise(tmp_path):
    extra = {**LORA, "trainer.save_freq": 2, "trainer.total_steps": 3, "actor.lr": 1e-2,
             "actor.policy_loss": "rlsd", "distill.teacher": "ema", "distill.teacher_update_rate": 0.5,
             "distill.teacher_context": "peer_solution", "data.train_size": 16, "rollout.max_new_tokens": 16,
             "data.val_size": 4, "rollout.val_n": 2}
    full, part, summary = full_and_resumed_runs(tmp_path, extra, stop_after=2)
    assert summary["resumed_from_step"] == 2
    a = load_file(full / "checkpoints" / "step_3" / "model" / "adapter_model.safetensors")
    b = load_file(part / "checkpoints" / "step_3" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def last(run):
        row = json.loads((run / "metrics.jsonl").read_text().splitlines()[2])
        return {k: v for k, v in row.items() if not k.startswith("timing/")}
    assert last(full) == last(part)
    assert any(k.startswith("rlsd/") or "teacher" in k for k in last(full)), sorted(last(full))


_PEAK = r"""
import sys, torch
from scirl.train.model_loading import load_model_and_tokenizer
from scirl.train.lora import apply_lora, AdapterDisabledReference
from scirl.train.teachers import FrozenReference
from scirl.config import load_config
from test_lora import _traj

def status(key):  # kB -> bytes
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(key + ":"))
    return int(line.split()[1]) * 1024

path, kind = sys.argv[1], sys.argv[2]
model, tok = load_model_and_tokenizer(path)  # bf16 on disk, fp32 in memory: the policy's own pages
model = apply_lora(model, load_config(None, ["model.lora.rank=8", "model.lora.target_modules=[q_proj,v_proj]"]).model.lora)
traj = _traj(tok, b=2, p=4, r=4)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: measure from here on
start = status("VmRSS")
ref = AdapterDisabledReference(model, 2, 1.0) if kind == "adapter" else FrozenReference(path, "float32", "cpu", "sdpa", 2, 1.0)
ref.logprobs(traj)
print(status("VmHWM") - start)
"""


def test_adapter_disabled_reference_adds_no_model_copy_to_peak_memory(tmp_path):
    """Peak RSS of a process that loads a 100 MB policy, wraps it in LoRA and scores a batch with its reference:
    the adapter-disabled reference must not grow it by a model copy; a FrozenReference (the control) does. The
    folder holds bf16 weights loaded as fp32 (a hub checkpoint trained in fp32): an fp32 file would be mmapped and
    its pages shared between the two loads, hiding the copy from RSS."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = REPO / "src" / "scirl" / "assets" / "tiny-qwen3"
    config = AutoConfig.from_pretrained(src)
    config.update({"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8, "head_dim": 64,
                   "num_attention_heads": 8, "num_key_value_heads": 4, "layer_types": ["full_attention"] * 8})
    torch.manual_seed(0)
    big = AutoModelForCausalLM.from_config(config)
    folder = tmp_path / "big"
    big.to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    model_bytes = sum(p.numel() * 4 for p in big.parameters())  # fp32 in memory
    assert model_bytes > 80e6
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{REPO / 'src'}:{REPO / 'tests'}",
           "OMP_NUM_THREADS": "1"}

    def peak_growth(kind):
        res = subprocess.run([sys.executable, "-c", _PEAK, str(folder), kind], capture_output=True, text=True,
                             env=env, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        return int(res.stdout.split()[-1])
    adapter, frozen = peak_growth("adapter"), peak_growth("frozen")
    print(f"peak RSS growth from building the reference and scoring a batch: adapter-disabled {adapter / 1e6:.1f} "
          f"MB, a frozen copy (control) {frozen / 1e6:.1f} MB; model {model_bytes / 1e6:.0f} MB")
    assert adapter < 0.3 * model_bytes, (adapter, model_bytes)
    assert frozen - adapter > 0.8 * model_bytes, (adapter, frozen, model_bytes)  # the control sees the copy
