"""`scirl export`: a scirl checkpoint folder, saved as an HF folder (step_N/model/, or step_N/ itself in older
checkpoints) or only as DCP shards (step_N/dcp/ + hf_meta/, from one process or from 2 FSDP2 gloo ranks), becomes an
HF folder that AutoModelForCausalLM loads with fp32 logits equal to the checkpoint's exactly, the tied embedding
stored once; output folders are written atomically and never silently replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from helpers.sharded_fixtures import INPUT_IDS, perturbed_model, shared_build
from scirl.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # dcp.save in one process, meant

TIED, EMB = "lm_head.weight", "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def trained():
    """The tiny Qwen3 with every weight moved (a stand-in for a trained policy) and its tokenizer."""
    return perturbed_model(seed=21)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits


def _export(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what building the checkpoint printed
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _hf_meta(folder: Path, model, tokenizer) -> None:
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _assert_exported(out: Path, model, tokenizer) -> None:
    """Loads, fp32 logits equal exactly, tied embedding written once, tokenizer / chat template / generation config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = load_file(out / "model.safetensors")
    assert TIED not in saved and EMB in saved and set(saved) == set(model.state_dict()) - {TIED}
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.dtype == torch.float32
    assert torch.equal(_logits(loaded), _logits(model))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and tok.chat_template == tokenizer.chat_template
    assert tok("x = 3")["input_ids"] == tokenizer("x = 3")["input_ids"]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id


def test_export_hf_model_folder(trained, tmp_path, capsys):
    model, tokenizer = trained
    ckpt = tmp_path / "run" / "checkpoints" / "step_4"
    model.save_pretrained(ckpt / "model")
    tokenizer.save_pretrained(ckpt / "model")
    torch.save({"step": 4}, ckpt / "trainer_state.pt")
    code, out, err = _export(capsys, ckpt, "-o", tmp_path / "export")
    assert code == 0, err
    assert "(hf)" in out
    _assert_exported(tmp_path / "export", model, tokenizer)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]


def test_export_older_checkpoint_with_hf_files_at_its_root(trained, tmp_path, capsys):
    model, tokenizer = trained
    ckpt = tmp_path / "step_2"
    model.save_pretrained(ckpt)
    tokenizer.save_pretrained(ckpt)
    torch.save({"step": 2}, ckpt / "trainer_state.pt")
    (ckpt / "manifest.json").write_text("{}")
    code, _, err = _export(capsys, ckpt, "-o", tmp_path / "export")
    assert code == 0, err
    _assert_exported(tmp_path / "export", model, tokenizer)
    left = {p.name for p in (tmp_path / "export").iterdir()}
    assert "trainer_state.pt" not in left and "manifest.json" not in left


@pytest.mark.parametrize("tied_stored_once", [False, True])
def test_export_dcp_only_checkpoint_saved_without_a_process_group(trained, tmp_path, capsys, tied_stored_once):
    model, tokenizer = trained
    ckpt = tmp_path / "step_5"
    state = dict(model.state_dict())
    if tied_stored_once:
        del state[TIED]
    optim = torch.optim.AdamW(model.parameters())
    dcp.save({"model": state, "optimizer": {"lr": torch.tensor(1e-3)}}, checkpoint_id=str(ckpt / "dcp"))
    _hf_meta(ckpt / "hf_meta", model, tokenizer)
    del optim
    code, out, err = _export(capsys, ckpt, "-o", tmp_path / "export")
    assert code == 0, err
    assert "(dcp)" in out
    _assert_exported(tmp_path / "export", model, tokenizer)


def test_export_dcp_saved_by_two_fsdp2_ranks(tmp_path, capsys):
    fx = shared_build()
    ckpt = fx / "dcp_fsdp2" / "step_3"
    assert len(list((ckpt / "dcp").glob("*.distcp"))) == 2  # one shard file per rank
    code, _, err = _export(capsys, ckpt, "-o", tmp_path / "export")
    assert code == 0, err
    full = torch.load(fx / "fsdp2" / "full.pt")  # gathered by FSDP from the same model
    saved = load_file(tmp_path / "export" / "model.safetensors")
    assert set(saved) == set(full) - {TIED}
    assert all(torch.equal(saved[k], full[k]) for k in saved)


def test_export_bf16_casts_every_weight(trained, tmp_path, capsys):
    model, tokenizer = trained
    ckpt = tmp_path / "step_1"
    model.save_pretrained(ckpt / "model")
    tokenizer.save_pretrained(ckpt / "model")
    code, _, err = _export(capsys, ckpt, "-o", tmp_path / "export", "--dtype", "bf16")
    assert code == 0, err
    saved = load_file(tmp_path / "export" / "model.safetensors")
    state = model.state_dict()
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, state[k].bfloat16()) for k, v in saved.items())
    assert json.loads((tmp_path / "export" / "config.json").read_text())["dtype"] == "bfloat16"


def test_existing_output_is_refused_unless_force(trained, tmp_path, capsys):
    model, tokenizer = trained
    ckpt = tmp_path / "ckpts" / "step_1"
    model.save_pretrained(ckpt / "model")
    tokenizer.save_pretrained(ckpt / "model")
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = _export(capsys, ckpt, "-o", out)
    assert code == 2 and err.count("\n") == 1 and "pass --force" in err and str(out) in err
    assert (out / "notes.txt").read_text() == "mine"
    code, _, err = _export(capsys, ckpt, "-o", out, "--force")
    assert code == 0, err
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpts", "export"]  # no temp / moved-aside folder left
    code, _, err = _export(capsys, ckpt, "-o", ckpt, "--force")  # would replace its own input
    assert code == 2 and "would replace the input" in err and (ckpt / "model" / "config.json").is_file()


def _not_a_checkpoint(ckpt: Path, model, tokenizer) -> str:
    ckpt.mkdir(parents=True)
    (ckpt / "notes.txt").write_text("x")
    return "not a scirl checkpoint"


def _dcp_without_hf_meta(ckpt: Path, model, tokenizer) -> str:
    dcp.save({"model": dict(model.state_dict())}, checkpoint_id=str(ckpt / "dcp"))
    return "hf_meta/config.json is missing"


def _dcp_of_another_model(ckpt: Path, model, tokenizer) -> str:
    dcp.save({"model": dict(model.state_dict())}, checkpoint_id=str(ckpt / "dcp"))
    _hf_meta(ckpt / "hf_meta", model, tokenizer)
    cfg = json.loads((ckpt / "hf_meta" / "config.json").read_text())
    (ckpt / "hf_meta" / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 256}))
    return "model.model.layers.0.mlp.gate_proj.weight has shape (384, 128), the model in"


@pytest.mark.parametrize("damage", [_not_a_checkpoint, _dcp_without_hf_meta, _dcp_of_another_model])
def test_bad_checkpoints_are_refused_in_one_line(trained, tmp_path, capsys, damage):
    model, tokenizer = trained
    ckpt = tmp_path / "step_9"
    expected = damage(ckpt, model, tokenizer)
    code, _, err = _export(capsys, ckpt, "-o", tmp_path / "export")
    assert code == 2 and err.count("\n") == 1 and expected in err and str(ckpt) in err, err
    assert not (tmp_path / "export").exists()


def test_export_a_real_training_checkpoint_from_its_dcp_shards_alone(tmp_path, capsys):
    """scirl train's own checkpoint (model/ + dcp/ + hf_meta/): exporting it from dcp/ alone gives model/ exactly."""
    import shutil

    from conftest import small_overrides

    args = small_overrides(tmp_path, **{"trainer.total_steps": 1, "trainer.save_freq": 1, "rollout.max_new_tokens": 8})
    assert main(["train", *args]) == 0
    step = tmp_path / "t" / "checkpoints" / "step_1"
    assert (step / "model" / "config.json").is_file() and (step / "dcp" / ".metadata").is_file()
    dcp_only = tmp_path / "dcp_only" / "step_1"
    shutil.copytree(step, dcp_only, ignore=shutil.ignore_patterns("model"))
    code, out, err = _export(capsys, dcp_only, "-o", tmp_path / "export")
    assert code == 0, err
    assert "(dcp)" in out
    reference = load_file(step / "model" / "model.safetensors")
    saved = load_file(tmp_path / "export" / "model.safetensors")
    assert set(saved) == set(reference) - {TIED}
    assert all(torch.equal(saved[k], reference[k]) for k in saved)
