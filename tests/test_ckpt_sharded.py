"""DCP checkpoints at any world size, on real gloo process groups and FSDP2 (`fully_shard`) on the tiny Qwen3:
saved by 2 ranks and loaded by 1, saved by 1 and loaded by 2 (weights and Adam moments equal to 1e-6), a world
size 1 round trip exact, the layout (dcp/ shards of both ranks in the manifest, hf_meta/ without weights, a
loadable model/ gathered on rank 0, one RNG state per rank), and checkpoints that do not fit refused in one line
on every rank. One 2-process launch serves every 2-rank assertion."""

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port
from scirl.ckpt.checkpoint import checkpoint_problem, dcp_dir, load_trainer_state, save_checkpoint
from scirl.ckpt.resume import restore_modules
from scirl.ckpt.sharded import load_sharded, save_sharded
from scirl.errors import ScirlError
from scirl.train.model_loading import load_model_and_tokenizer

TOL = 1e-6


def build(world_size: int, lr: float = 1e-2, path: str = "builtin:tiny-qwen3"):
    """The tiny Qwen3 with AdamW; FSDP2-sharded (each decoder layer, then the root) when world_size > 1."""
    model, tokenizer = load_model_and_tokenizer(path)
    if world_size > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    return model, tokenizer, optimizer


def train_steps(model, optimizer, seed: int, n: int = 2) -> None:
    """n optimizer steps on a fixed batch (the same on every rank: data parallel on equal data)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 500, (2, 12), generator=g)
    for _ in range(n):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def full_state(model, optimizer) -> dict:
    """Weights and Adam moments, unsharded, on CPU (rank 0 gets them; every rank calls this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": msd, "optim": osd["state"]} if msd else {}  # cpu_offload: ranks > 0 get empty dicts


def assert_close_state(a: dict, b: dict, tol: float = TOL) -> None:
    assert a["model"].keys() == b["model"].keys() and len(a["model"]) > 40
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=tol, rtol=0), k
    assert a["optim"].keys() == b["optim"].keys() and a["optim"].keys() <= a["model"].keys()
    for k, s in a["optim"].items():
        assert set(s) == {"step", "exp_avg", "exp_avg_sq"}, k
        for m in s:
            assert torch.allclose(s[m].float(), b["optim"][k][m].float(), atol=tol, rtol=0), (k, m)


def worker(rank: int, world_size: int, port: int, tmp: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    tmp = Path(tmp)
    try:
        # 1 -> 2: the checkpoint the parent wrote alone, loaded into 2 shards
        model, _, optimizer = build(world_size)
        load_sharded(tmp / "one" / "dcp", {"model": model}, optimizer)
        got = full_state(model, optimizer)
        if rank == 0:
            torch.save(got, tmp / "one_loaded_by_two.pt")
        # the older layout (weights in model/, a plain optimizer.state_dict() in trainer_state.pt), into 2 shards
        old = tmp / "old" / "checkpoints" / "step_1"
        model, _, optimizer = build(world_size, path=str(old / "model"))
        restore_modules(old, load_trainer_state(old), model, optimizer)
        got = full_state(model, optimizer)
        if rank == 0:
            torch.save(got, tmp / "old_loaded_by_two.pt")
        # 2 -> 1: train sharded, write a whole checkpoint at world size 2 (all ranks write their shards)
        model, tokenizer, optimizer = build(world_size)
        train_steps(model, optimizer, seed=2)
        torch.manual_seed(100 + rank)  # each rank's generator differs: the checkpoint keeps each one
        path = save_checkpoint(tmp / "run", 3, model, tokenizer, {"config": {}}, optimizer=optimizer)
        assert path == tmp / "run" / "checkpoints" / "step_3"
        got = full_state(model, optimizer)
        if rank == 0:
            torch.save(got, tmp / "two_saved.pt")
        # a layout that cannot be resharded (a wrapper's prefix on every key): one line, on every rank, no hang
        try:
            load_sharded(tmp / "wrapped", {"model": model}, optimizer)
        except ScirlError as e:
            (tmp / f"wrapped_error_{rank}.txt").write_text(str(e))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Write the world-size-1 inputs, run the 2-rank worker once, hand the folder to the tests."""
    tmp = tmp_path_factory.mktemp("dcp")
    torch.manual_seed(0)
    model, _, optimizer = build(1)
    train_steps(model, optimizer, seed=1)
    save_sharded(tmp / "one" / "dcp", {"model": model}, optimizer)
    torch.save(full_state(model, optimizer), tmp / "one_saved.pt")
    old = tmp / "old" / "checkpoints" / "step_1"  # the layout before dcp/, as older runs wrote it
    model.save_pretrained(old / "model")
    load_model_and_tokenizer("builtin:tiny-qwen3")[1].save_pretrained(old / "model")
    torch.save({"optimizer": optimizer.state_dict(), "step": 1, "config": {}}, old / "trainer_state.pt")
    wrapped = {f"_fsdp_wrapped_module.{k}": v for k, v in model.state_dict().items()}
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": wrapped}, checkpoint_id=str(tmp / "wrapped"), no_dist=True)
    env = {"OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mp.spawn(worker, args=(2, free_port(), str(tmp)), nprocs=2, join=True)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return tmp


def test_saved_by_one_process_loads_into_two_shards(two_ranks):
    assert_close_state(torch.load(two_ranks / "one_loaded_by_two.pt"), torch.load(two_ranks / "one_saved.pt"))


def test_an_older_checkpoint_loads_into_one_process_and_into_two_shards(two_ranks):
    expected = torch.load(two_ranks / "one_saved.pt")
    assert_close_state(torch.load(two_ranks / "old_loaded_by_two.pt"), expected)
    old = two_ranks / "old" / "checkpoints" / "step_1"
    assert checkpoint_problem(old) is None
    model, _, optimizer = build(1, path=str(old / "model"))
    restore_modules(old, load_trainer_state(old), model, optimizer)
    assert_close_state(full_state(model, optimizer), expected, tol=0)


def test_saved_by_two_ranks_loads_into_one_process(two_ranks):
    ckpt = two_ranks / "run" / "checkpoints" / "step_3"
    model, _, optimizer = build(1)
    restore_modules(ckpt, load_trainer_state(ckpt), model, optimizer)
    expected = torch.load(two_ranks / "two_saved.pt")
    assert_close_state(full_state(model, optimizer), expected)
    fresh, _, _ = build(1)  # the load changed something: the moments are not zero and the weights moved
    assert not torch.equal(fresh.state_dict()["model.norm.weight"], model.state_dict()["model.norm.weight"])


def test_a_two_rank_checkpoint_has_the_layout(two_ranks):
    ckpt = two_ranks / "run" / "checkpoints" / "step_3"
    assert checkpoint_problem(ckpt) is None
    assert sorted(p.name for p in ckpt.iterdir()) == ["dcp", "hf_meta", "manifest.json", "model", "trainer_state.pt"]
    assert sorted(p.name for p in (ckpt / "dcp").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    manifest = json.loads((ckpt / "manifest.json").read_text())["files"]
    assert manifest["dcp/__1_0.distcp"] == (ckpt / "dcp" / "__1_0.distcp").stat().st_size > 0
    meta = sorted(p.name for p in (ckpt / "hf_meta").iterdir())
    assert "config.json" in meta and "generation_config.json" in meta and "tokenizer.json" in meta
    assert not any(n.endswith((".safetensors", ".bin", ".pt")) for n in meta)
    state = load_trainer_state(ckpt)
    assert state["step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert "optimizer" not in state and not list(ckpt.parent.glob(".tmp_*"))
    # model/: gathered on rank 0, a loadable HF folder equal to the trained weights
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(ckpt / "model").state_dict()
    expected = torch.load(two_ranks / "two_saved.pt")["model"]
    assert hf.keys() == expected.keys() and all(torch.equal(hf[k], expected[k]) for k in hf)


def test_a_layout_that_cannot_be_resharded_is_one_line_on_every_rank(two_ranks):
    errors = {(two_ranks / f"wrapped_error_{r}.txt").read_text() for r in (0, 1)}
    assert errors == {f"trainer.resume: checkpoint does not fit this model: {two_ranks / 'wrapped' / '.metadata'} "
                      "has no model.model.embed_tokens.weight (it holds model._fsdp_wrapped_module.model.embed_tokens.weight "
                      "instead)"}


def test_a_checkpoint_of_another_model_is_one_line(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from scirl.train.model_loading import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path("builtin:tiny-qwen3"), intermediate_size=256)
    other = AutoModelForCausalLM.from_config(config)
    save_sharded(tmp_path / "dcp", {"model": other}, None)
    model, _, optimizer = build(1)
    with pytest.raises(ScirlError) as e:
        load_sharded(tmp_path / "dcp", {"model": model}, None)
    assert str(e.value) == (f"trainer.resume: checkpoint does not fit this model: {tmp_path / 'dcp' / '.metadata'}: "
                            "model.model.layers.0.mlp.gate_proj.weight has shape [256, 128], this model's is [384, 128]")
    save_sharded(tmp_path / "weights_only", {"model": model}, None)
    with pytest.raises(ScirlError, match=r"weights_only/.metadata has no optimizer.state.model.embed_tokens.weight."):
        load_sharded(tmp_path / "weights_only", {"model": model}, optimizer)  # no optimizer state to resume


def test_world_size_1_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model, tokenizer, optimizer = build(1)
    train_steps(model, optimizer, seed=3)
    ema = build(1)[0]
    for p in ema.parameters():
        p.data.mul_(0.5)
    ckpt = save_checkpoint(tmp_path, 5, model, tokenizer, {"config": {}}, optimizer=optimizer,
                           modules={"ema_teacher": ema}, save_hf=False)
    assert not (ckpt / "model").exists() and dcp_dir(ckpt) is not None and checkpoint_problem(ckpt) is None
    model2, _, optimizer2 = build(1)
    ema2 = build(1)[0]
    restore_modules(ckpt, load_trainer_state(ckpt), model2, optimizer2, {"ema_teacher": ema2})
    assert_close_state(full_state(model2, optimizer2), full_state(model, optimizer), tol=0)
    assert all(torch.equal(a, b) for a, b in zip(ema2.state_dict().values(), ema.state_dict().values()))
    a, b = optimizer.state_dict(), optimizer2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i][m], b["state"][i][m]) for i in a["state"] for m in a["state"][i])
