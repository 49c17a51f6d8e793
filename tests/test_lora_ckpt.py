"""A LoRA run's checkpoint (one process) holds the trainable state only: dcp/ has the adapter (+ modules_to_save)
and its Adam moments, no frozen base tensor under any name; the whole checkpoint is 4.2% of a full-weight one on
the tiny model (measured); restoring it into a fresh base from model.path gives the adapter and moments back
bitwise and leaves the base as loaded; an older LoRA checkpoint whose dcp/ also holds the base still loads."""

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

from scirl.ckpt.checkpoint import save_checkpoint
from scirl.ckpt.resume import restore_modules
from scirl.ckpt.sharded import read_saved, saved_keys
from scirl.config import load_config
from scirl.train.lora import apply_lora
from scirl.train.model_loading import load_model_and_tokenizer

LORA = ["model.lora.rank=8", "model.lora.alpha=16", "model.lora.target_modules=[q_proj,v_proj]",
        "model.lora.modules_to_save=[norm]"]  # norm: the final RMSNorm (model.norm), trained in full


def _lora_model(seed: int):
    model, tok = load_model_and_tokenizer("builtin:tiny-qwen3")
    torch.manual_seed(seed)
    return apply_lora(model, load_config(None, LORA).model.lora), tok


def _trained(model, steps: int = 2):
    """AdamW on the trainable parameters after `steps` steps of a fixed LM loss."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def _bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _frozen_names(model) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def test_lora_checkpoint_holds_the_adapter_only_and_restores_bitwise(tmp_path):
    model, tok = _lora_model(seed=0)
    opt = _trained(model)
    lora = save_checkpoint(tmp_path / "lora", 2, model, tok, {"config": {}}, optimizer=opt)
    full_model, _ = load_model_and_tokenizer("builtin:tiny-qwen3")
    full = save_checkpoint(tmp_path / "full", 2, full_model, tok, {"config": {}}, optimizer=_trained(full_model))
    # size, measured: 596,091 bytes (dcp/ 460,189 for 15,744 trainable parameters and their moments) against
    # 14,358,576 (dcp/ 10,874,077): 4.2%
    small, big = _bytes(lora), _bytes(full)
    assert small < 0.10 * big and big > 10_000_000, (small, big)
    # no frozen base tensor under any name, in the model entry or the optimizer's
    keys = set(saved_keys(lora / "dcp"))
    frozen = _frozen_names(model)
    assert frozen and {"base_model.model.lm_head.weight", "base_model.model.model.embed_tokens.weight"} <= frozen
    leaked = [k for k in keys if k.split(".", 1)[1] in frozen or k.startswith("optimizer.state.") and
              k.split(".", 2)[2].rsplit(".", 1)[0] in frozen]
    assert not leaked, leaked[:3]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {k.split(".", 1)[1] for k in keys if k.startswith("model.")} == trainable
    assert any(".modules_to_save." in n for n in trainable) and any("lora_B" in n for n in trainable)
    adapter = load_file(lora / "model" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k or k.endswith("norm.weight") for k in adapter)
    assert not (lora / "model" / "model.safetensors").exists()
    # resume: a fresh base from model.path with a different adapter init, then the checkpoint restored
    again, _ = _lora_model(seed=1)
    base_before = {n: p.detach().clone() for n, p in again.named_parameters() if not p.requires_grad}
    opt2 = torch.optim.AdamW([p for p in again.parameters() if p.requires_grad], lr=1e-2)
    restore_modules(lora, {}, again, opt2)
    want = read_saved(lora / "dcp", "model")
    got = {n: p.detach() for n, p in again.named_parameters() if p.requires_grad}
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert all(torch.equal(got[n], p.detach()) for n, p in model.named_parameters() if p.requires_grad)
    assert all(torch.equal(p, base_before[n]) for n, p in again.named_parameters() if n in base_before)
    moments = {n: opt.state[p]["exp_avg_sq"] for n, p in model.named_parameters() if p.requires_grad}
    restored = {n: opt2.state[p]["exp_avg_sq"] for n, p in again.named_parameters() if p.requires_grad}
    assert all(torch.equal(moments[n], restored[n]) and moments[n].abs().sum() > 0 for n in moments)
    assert all(float(opt2.state[p]["step"]) == 2 for p in opt2.state)


def test_an_older_lora_checkpoint_with_the_base_in_dcp_still_loads(tmp_path):
    model, _ = _lora_model(seed=0)
    opt = _trained(model)
    msd, osd = get_state_dict(model, opt)
    assert len(msd) > len(get_model_state_dict(model)) // 2  # the whole model, frozen base included
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    (tmp_path / "trainer_state.pt").write_bytes(b"")
    again, _ = _lora_model(seed=1)
    opt2 = torch.optim.AdamW([p for p in again.parameters() if p.requires_grad], lr=1e-2)
    restore_modules(tmp_path, {}, again, opt2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
