"""`scirl merge --from verl`: verl FSDP actor checkpoints written by 2 real gloo processes (FSDP2 Shard(0) with an
uneven split, Shard(1), a ("ddp", "fsdp") mesh, FSDP1 ShardedTensors, a persistent buffer, LoRA) and by one process
(W = 1) merge into an HF folder equal bit for bit to the state dict FSDP itself gathers; bad folders are refused
with one line naming the file (exit 2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.tensor import Replicate, Shard

from helpers.sharded_fixtures import BUFFER_NAME, INPUT_IDS, LORA_ALPHA, shared_build
from scirl.cli import main
from scirl.export.rank_files import SavedShardedTensor, load_rank_file
from scirl.export.shards import chunk_size_and_offset
from scirl.export.verl_merge import load_verl_state_dict, merge_rank_files

TIED = "lm_head.weight"


@pytest.fixture(scope="module")
def fx() -> Path:
    return shared_build()


def _rank_files(folder: Path, world: int = 2) -> tuple[Path, ...]:
    return tuple(folder / f"model_world_size_{world}_rank_{r}.pt" for r in range(world))


def _assert_folder_equals(out: Path, full: dict) -> None:
    """The merged safetensors hold every key of the gathered state dict, bit for bit, the tied lm_head once."""
    saved = load_file(out / "model.safetensors")
    assert TIED not in saved and TIED in full  # tied: written once, under the embedding's name
    assert set(saved) == set(full) - {TIED}
    for key, value in full.items():
        got = saved.get(key, saved["model.embed_tokens.weight"] if key == TIED else None)
        assert got.dtype == torch.float32 and torch.equal(got, value), key


def _merge(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()  # drop what building the folder printed
    code = main(["merge", "--from", "verl", *map(str, args)])
    return code, capsys.readouterr().err


def test_help_of_both_commands_without_loading_torch():
    for command, first in (("merge", "scirl merge --from verl DIR -o OUT"), ("export", "scirl export CKPT_OR_RUN -o DIR")):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "scirl", command, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith(first)
        assert "| torch" not in proc.stderr  # --help stays instant


def test_chunk_offsets_follow_torch_chunk():
    for length in range(0, 12):
        for n in range(1, 5):
            chunks = torch.arange(length).chunk(n) if length else ()
            for i in range(n):
                size, start = chunk_size_and_offset(length, n, i)
                expect = chunks[i].tolist() if i < len(chunks) else []
                assert list(range(start, start + size)) == expect, (length, n, i)


def test_fsdp2_uneven_shard0_merges_bit_for_bit(fx, tmp_path, capsys):
    folder = fx / "fsdp2"
    rank0, rank1 = (load_rank_file(f) for f in _rank_files(folder))
    emb = "model.embed_tokens.weight"
    assert tuple(rank0[emb].placements) == (Shard(0),)
    assert rank0[emb]._local_tensor.shape[0] == 259 and rank1[emb]._local_tensor.shape[0] == 258  # 517 rows
    out = tmp_path / "merged"
    capsys.readouterr()
    assert main(["merge", "--from", "verl", str(folder), "-o", str(out)]) == 0
    assert "merged 2 rank file(s)" in capsys.readouterr().out
    full = torch.load(folder / "full.pt")
    _assert_folder_equals(out, full)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.lm_head.weight is model.model.embed_tokens.weight and torch.equal(model.lm_head.weight, full[TIED])
    tok = AutoTokenizer.from_pretrained(out)
    source_template = AutoTokenizer.from_pretrained(folder / "huggingface").chat_template
    assert tok.chat_template and tok.chat_template == source_template
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert (out / "generation_config.json").is_file()
    assert not list(tmp_path.glob(".tmp_*")) and not list(tmp_path.glob(".old_*"))


@pytest.mark.parametrize("layout, placement", [
    ("fsdp2_shard1", (Shard(1),)),
    ("hsdp_1x2", (Replicate(), Shard(0))),  # ("ddp", "fsdp") mesh (1, 2): shards on fsdp
    ("hsdp_2x1", (Replicate(), Shard(0))),  # mesh (2, 1): whole replicas on ddp, taken once
    ("fsdp1", "ShardedTensor"),
])
def test_each_sharding_layout_merges_bit_for_bit(fx, tmp_path, capsys, layout, placement):
    folder = fx / layout
    saved = load_rank_file(_rank_files(folder)[1])["model.layers.0.self_attn.q_proj.weight"]
    kind = "ShardedTensor" if isinstance(saved, SavedShardedTensor) else tuple(saved.placements)
    assert kind == placement
    code, err = _merge(capsys, folder, "-o", tmp_path / "out")
    assert code == 0, err
    _assert_folder_equals(tmp_path / "out", torch.load(folder / "full.pt"))


def test_hand_built_placements_on_1d_and_2d_meshes(fx):
    folder = fx / "placements"
    rank1 = load_rank_file(_rank_files(folder)[1])
    assert tuple(rank1["uneven_shard1"].placements) == (Shard(1),)
    assert rank1["uneven_shard1"]._local_tensor.shape == (4, 3)  # 7 columns split 4 / 3
    assert rank1["mesh2d_shard1"].device_mesh.mesh_dim_names == ("ddp", "fsdp")
    assert tuple(rank1["mesh2d_shard1"].placements) == (Replicate(), Shard(1))
    merged = merge_rank_files(_rank_files(folder))
    full = torch.load(folder / "full.pt")
    assert set(merged) == set(full)
    for key in full:
        assert torch.equal(merged[key], full[key]), key


def test_persistent_buffer_is_taken_once_not_concatenated(fx):
    folder = fx / "fsdp2_buffer"
    merged = merge_rank_files(_rank_files(folder))
    full = torch.load(folder / "full.pt")
    assert torch.equal(merged[BUFFER_NAME], torch.arange(6, dtype=torch.float32))  # 6 values, not 12
    assert set(merged) == set(full) and all(torch.equal(merged[k], full[k]) for k in full)


def test_world_size_1_plain_tensors(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from helpers.sharded_fixtures import perturbed_model, write_verl_meta

    model, tokenizer = perturbed_model(seed=11)
    folder = tmp_path / "actor"
    write_verl_meta(folder, model, tokenizer, world_size=1, fsdp_version=2)
    torch.save(model.state_dict(), folder / "model_world_size_1_rank_0.pt")
    code, err = _merge(capsys, folder, "-o", tmp_path / "out")
    assert code == 0, err
    _assert_folder_equals(tmp_path / "out", model.state_dict())
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.tensor(INPUT_IDS)
    with torch.no_grad():
        assert torch.equal(merged(ids).logits, model(ids).logits)


def test_lora_is_merged_with_the_saved_alpha(fx, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    folder = fx / "lora"
    code, err = _merge(capsys, folder, "-o", tmp_path / "out")
    assert code == 0, err
    saved = load_file(tmp_path / "out" / "model.safetensors")
    assert not [k for k in saved if "lora_" in k or "base_layer" in k or k.startswith("base_model.")]
    expected = torch.load(folder / "lora_logits.pt")  # the LoRA model's own forward (base + B A x alpha / r)
    ids = torch.tensor(INPUT_IDS)
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "out")(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the alpha matters: half of it gives other logits
    wrong = tmp_path / "wrong_alpha"
    shutil.copytree(folder, wrong)
    (wrong / "lora_train_meta.json").write_text(json.dumps({"r": 4, "lora_alpha": LORA_ALPHA / 2}))
    state, _ = load_verl_state_dict(wrong)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        assert (model(ids).logits - expected).abs().max() > 1e-3


def test_dtype_bf16_casts_only_when_asked(fx, tmp_path, capsys):
    code, err = _merge(capsys, fx / "fsdp2", "-o", tmp_path / "out", "--dtype", "bf16")
    assert code == 0, err
    saved = load_file(tmp_path / "out" / "model.safetensors")
    full = torch.load(fx / "fsdp2" / "full.pt")
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, full[k].bfloat16()) for k, v in saved.items())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("full.pt"))
    return dst


def _no_fsdp_config(d: Path) -> str:
    (d / "fsdp_config.json").unlink()
    return "fsdp_config.json is missing"


def _missing_rank(d: Path) -> str:
    (d / "model_world_size_2_rank_1.pt").unlink()
    return "model_world_size_2_rank_1.pt is missing"


def _mixed_world_sizes(d: Path) -> str:
    shutil.copy(d / "model_world_size_2_rank_0.pt", d / "model_world_size_4_rank_0.pt")
    return "model_world_size_4_rank_0.pt: world size 4, but fsdp_config.json says 2"


def _truncated_rank_file(d: Path) -> str:
    f = d / "model_world_size_2_rank_1.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "model_world_size_2_rank_1.pt: cannot be read"


def _unknown_model_type(d: Path) -> str:
    cfg = json.loads((d / "huggingface" / "config.json").read_text())
    (d / "huggingface" / "config.json").write_text(json.dumps({**cfg, "model_type": "no_such_model"}))
    return "config.json: transformers cannot build this model"


def _lora_without_alpha(d: Path) -> str:
    (d / "lora_train_meta.json").write_text(json.dumps({"r": 4, "task_type": "CAUSAL_LM"}))
    return "lora_train_meta.json: 'lora_alpha' is missing"


def _lora_without_meta(d: Path) -> str:
    (d / "lora_train_meta.json").unlink()
    return "lora_train_meta.json is missing"


@pytest.mark.parametrize("layout, damage", [
    ("fsdp2", _no_fsdp_config), ("fsdp2", _missing_rank), ("fsdp2", _mixed_world_sizes),
    ("fsdp2", _truncated_rank_file),
    ("fsdp2", _unknown_model_type), ("lora", _lora_without_alpha), ("lora", _lora_without_meta),
])
def test_bad_folders_are_refused_in_one_line(fx, tmp_path, capsys, layout, damage):
    folder = _copy(fx / layout, tmp_path / "actor")
    expected = damage(folder)
    code, err = _merge(capsys, folder, "-o", tmp_path / "out")
    assert code == 2
    assert err.count("\n") == 1 and expected in err and str(folder) in err, err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_refused_unless_force(fx, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _merge(capsys, fx / "fsdp2", "-o", out)
    assert code == 2 and err.count("\n") == 1 and "pass --force" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, err = _merge(capsys, fx / "fsdp2", "-o", out, "--force")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or moved-aside folder left
