"""Builds the sharded checkpoints that tests/test_verl_merge.py and tests/test_export.py read, in ONE torchrun
launch of 2 gloo processes (CPU), so no binary fixture is committed:

  fsdp2/         verl's FSDP2 layout: every rank torch.save's model.state_dict() (DTensors, Shard(0); the
                 517-row embedding splits unevenly 259 / 258), fsdp_config.json, huggingface/; full.pt is the
                 state dict gathered with get_model_state_dict(full_state_dict=True, cpu_offload=True)
  fsdp2_buffer/  the same model with a persistent buffer (FSDP keeps buffers whole on every rank)
  fsdp2_shard1/  FSDP2 with shard_placement_fn = Shard(1) for matrices (Shard(0) for vectors)
  hsdp_1x2/      fully_shard on a ("ddp", "fsdp") mesh of shape (1, 2): (Replicate(), Shard(0))
  hsdp_2x1/      the same mesh shape (2, 1): every rank holds whole replicas
  placements/    hand-made DTensors (distribute_tensor): uneven Shard(1) and Shard(0) on a 1-D mesh,
                 (Replicate(), Shard(1)) on a 2-D ("ddp", "fsdp") mesh; full.pt holds the full tensors
  lora/          a PEFT-shaped LoRA model (base_layer, lora_A/B.default, base_model.model. prefix), FSDP2 sharded,
                 lora_train_meta.json (r=4, lora_alpha=8); lora_logits.pt: the LoRA model's logits on input_ids
  fsdp1/         FSDP1 with SHARDED_STATE_DICT: ShardedTensors
  dcp_fsdp2/step_3/  a scirl checkpoint with only dcp/ (saved by both ranks from the FSDP2 model) + hf_meta/

Run as `torchrun --standalone --nproc-per-node 2 tests/helpers/sharded_fixtures.py OUT`; `build(out)` does that.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LORA_R, LORA_ALPHA = 4, 8.0
BUFFER_NAME = "model.norm.scirl_test_counts"
INPUT_IDS = [[5, 17, 99, 3, 250, 42, 7, 300], [11, 12, 13, 14, 15, 16, 17, 18]]


_BUILT: dict[str, Path] = {}


def shared_build() -> Path:
    """The fixtures, built once per pytest process (both test modules use them) and removed at exit."""
    if "out" not in _BUILT:
        tmp = Path(tempfile.mkdtemp(prefix="scirl_sharded_fixtures_"))
        atexit.register(shutil.rmtree, tmp, True)
        _BUILT["out"] = build(tmp / "fx")
    return _BUILT["out"]


def build(out: Path, timeout: float = 300) -> Path:
    """Launch the 2-process build into `out` (fails loudly with the children's output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           __file__, str(out)], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not (out / "DONE").is_file():
        raise RuntimeError(f"fixture build failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return out


def perturbed_model(seed: int):
    """The tiny Qwen3 with every weight moved (same on every rank), so nothing equals the bundled asset by luck."""
    import torch

    from scirl.train.model_loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("builtin:tiny-qwen3")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.01)
    return model, tokenizer


def write_verl_meta(folder: Path, model, tokenizer, world_size: int, fsdp_version: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fsdp_config.json").write_text(json.dumps({"FSDP_version": fsdp_version, "world_size": world_size}))
    model.config.save_pretrained(folder / "huggingface")
    model.generation_config.save_pretrained(folder / "huggingface")
    tokenizer.save_pretrained(folder / "huggingface")


def _save_ranks(folder: Path, state: dict, rank: int, world_size: int) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / f"model_world_size_{world_size}_rank_{rank}.pt")


def _full(model):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _fsdp2(model, mesh=None, shard_placement_fn=None):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, shard_placement_fn=shard_placement_fn)
    fully_shard(model, mesh=mesh, shard_placement_fn=shard_placement_fn)
    return model


def lora_wrap(model, r: int = LORA_R, alpha: float = LORA_ALPHA, seed: int = 7):
    """PEFT's LoRA structure by hand (peft is not a dependency): q_proj and v_proj of every layer become
    base_layer + lora_B.default(lora_A.default(x)) * alpha / r, under base_model.model. (B is random, not zero,
    so the merge matters)."""
    import torch
    from torch import nn

    class LoraLinear(nn.Module):
        def __init__(self, base: nn.Linear):
            super().__init__()
            self.base_layer = base
            self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, r, bias=False)})
            self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base.out_features, bias=False)})
            self.scaling = alpha / r

        def forward(self, x):
            return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x)) * self.scaling

    class Inner(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, input_ids):
            return self.model(input_ids=input_ids)

    class PeftShaped(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.base_model = Inner(m)

        def forward(self, input_ids):
            return self.base_model(input_ids)

    torch.manual_seed(seed)
    for layer in model.model.layers:
        layer.self_attn.q_proj = LoraLinear(layer.self_attn.q_proj)
        layer.self_attn.v_proj = LoraLinear(layer.self_attn.v_proj)
    return PeftShaped(model)


def main(out: Path) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    model, tokenizer = perturbed_model(seed=1)
    if rank == 0:
        for name in ("fsdp2", "fsdp2_buffer", "fsdp2_shard1", "hsdp_1x2", "hsdp_2x1", "lora", "fsdp1"):
            write_verl_meta(out / name, model, tokenizer, world, fsdp_version=1 if name == "fsdp1" else 2)
        meta = out / "dcp_fsdp2" / "step_3" / "hf_meta"
        model.config.save_pretrained(meta)
        model.generation_config.save_pretrained(meta)
        tokenizer.save_pretrained(meta)
    _fsdp2(model)
    _save_ranks(out / "fsdp2", model.state_dict(), rank, world)
    full = _full(model)
    dcp.save({"model": model.state_dict(), "optimizer": {"step": torch.tensor(3.0)}},
             checkpoint_id=str(out / "dcp_fsdp2" / "step_3" / "dcp"))
    model.model.norm.register_buffer("scirl_test_counts", torch.arange(6, dtype=torch.float32), persistent=True)
    _save_ranks(out / "fsdp2_buffer", model.state_dict(), rank, world)
    if rank == 0:
        torch.save(full, out / "fsdp2" / "full.pt")
        torch.save(_full_with_buffer(full, model), out / "fsdp2_buffer" / "full.pt")
    del model

    model, _ = perturbed_model(seed=2)
    _fsdp2(model, shard_placement_fn=lambda p: Shard(1) if p.ndim == 2 else Shard(0))
    _save_ranks(out / "fsdp2_shard1", model.state_dict(), rank, world)
    full = _full(model)
    if rank == 0:
        torch.save(full, out / "fsdp2_shard1" / "full.pt")

    for shape, name in (((1, world), "hsdp_1x2"), ((world, 1), "hsdp_2x1")):
        model, _ = perturbed_model(seed=3)
        mesh = init_device_mesh("cpu", shape, mesh_dim_names=("ddp", "fsdp"))
        _fsdp2(model, mesh=mesh)
        _save_ranks(out / name, model.state_dict(), rank, world)
        full = _full(model)
        if rank == 0:
            torch.save(full, out / name / "full.pt")

    gen = torch.Generator().manual_seed(4)
    tensors = {"uneven_shard1": torch.randn(4, 7, generator=gen), "uneven_shard0": torch.randn(5, 3, generator=gen),
               "mesh2d_shard1": torch.randn(3, 5, generator=gen), "mesh2d_shard0": torch.randn(6, 2, generator=gen)}
    mesh1 = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    mesh2 = init_device_mesh("cpu", (1, world), mesh_dim_names=("ddp", "fsdp"))
    saved = {"uneven_shard1": distribute_tensor(tensors["uneven_shard1"], mesh1, [Shard(1)]),
             "uneven_shard0": distribute_tensor(tensors["uneven_shard0"], mesh1, [Shard(0)]),
             "mesh2d_shard1": distribute_tensor(tensors["mesh2d_shard1"], mesh2, [Replicate(), Shard(1)]),
             "mesh2d_shard0": distribute_tensor(tensors["mesh2d_shard0"], mesh2, [Replicate(), Shard(0)])}
    _save_ranks(out / "placements", saved, rank, world)
    if rank == 0:
        torch.save(tensors, out / "placements" / "full.pt")

    model, _ = perturbed_model(seed=5)
    lora = lora_wrap(model)
    with torch.no_grad():
        logits = lora(torch.tensor(INPUT_IDS)).logits
    _fsdp2(model)
    fully_shard(lora)
    _save_ranks(out / "lora", lora.state_dict(), rank, world)
    if rank == 0:
        torch.save(logits, out / "lora" / "lora_logits.pt")
        (out / "lora" / "lora_train_meta.json").write_text(
            json.dumps({"r": LORA_R, "lora_alpha": LORA_ALPHA, "task_type": "CAUSAL_LM"}))
    del model, lora

    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardedStateDictConfig, StateDictType

    model, _ = perturbed_model(seed=6)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)
    with FSDP.state_dict_type(wrapped, StateDictType.SHARDED_STATE_DICT, ShardedStateDictConfig(offload_to_cpu=True)):
        state = wrapped.state_dict()
    _save_ranks(out / "fsdp1", state, rank, world)
    if rank == 0:
        torch.save(full, out / "fsdp1" / "full.pt")

    dist.barrier()
    if rank == 0:
        (out / "DONE").write_text("ok\n")
    dist.destroy_process_group()


def _full_with_buffer(full: dict, model) -> dict:
    return {**full, BUFFER_NAME: model.model.norm.scirl_test_counts.clone()}


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    main(Path(sys.argv[1]))
