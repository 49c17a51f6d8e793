"""FSDP2 sharding of a causal LM (torch.distributed.fsdp.fully_shard): each decoder layer, then the root, with the
mixed-precision, CPU-offload and resharding policy of `actor.fsdp`; gradient checkpointing; and the helpers that
keep every rank's FSDP collectives in step (the same number of forwards on every rank)."""

from __future__ import annotations

import torch

from scirl import dist
from scirl.config import FsdpConfig
from scirl.errors import ScirlError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def param_dtype(choice: str, device: str | torch.device) -> torch.dtype:
    """actor.fsdp.param_dtype: 'auto' is float32 on CPU (gloo has no fast bf16 math) and bfloat16 on CUDA."""
    if choice == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if choice not in DTYPES:
        raise ScirlError(f"actor.fsdp.param_dtype='{choice}' must be one of auto, {', '.join(DTYPES)}")
    return DTYPES[choice]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of an HF causal LM (`model.model.layers` for Qwen / Llama / Mistral families), also
    inside a peft PeftModel (model.lora: the blocks of its wrapped model, adapter layers and all)."""
    unwrap = getattr(model, "get_base_model", None)
    if unwrap is not None:
        model = unwrap()
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        layers = getattr(getattr(inner, "decoder", None), "layers", None)
    if layers is None:
        raise ScirlError(f"cannot shard {type(model).__name__}: no decoder layers at model.model.layers")
    return list(layers)


def shard_model(model: torch.nn.Module, fsdp: FsdpConfig, device: str | torch.device) -> torch.nn.Module:
    """fully_shard every decoder layer, then the root, over all ranks (in place; returns the model). Call it on
    the policy, and the same way on the frozen reference and the teachers."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    dev = torch.device(device)
    mesh = init_device_mesh(dev.type, (dist.world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=param_dtype(fsdp.param_dtype, dev),
                                  reduce_dtype=DTYPES.get(fsdp.reduce_dtype, torch.float32))
    kwargs = dict(mesh=mesh, mp_policy=policy, reshard_after_forward=fsdp.reshard_after_forward)
    if fsdp.offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def sum_gradients_over_ranks(model: torch.nn.Module) -> None:
    """Make FSDP's gradient reduce-scatter a SUM instead of a mean over ranks: the actor's losses are already
    normalised by global (all-reduced) token / sequence counts, so averaging again would scale by 1/world."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM); /1.0 is exact


def reshard(model: torch.nn.Module) -> None:
    """Free the unsharded parameters an inference-only root forward left behind (FSDP2 keeps the root's)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor parameter; a plain tensor as is."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict (HF names) on every rank: one all-gather per parameter."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=False))


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (HF's own implementation, non-reentrant so it
    composes with FSDP2's hooks); works with or without sharding."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "config"):
        model.config.use_cache = False


def is_checkpointing(model: torch.nn.Module) -> bool:
    """Gradient checkpointing is on and the model is training (HF then drops the KV cache)."""
    if not model.training:
        return False
    unwrap = getattr(model, "get_base_model", None)  # a peft PeftModel (model.lora): ask the wrapped model
    if unwrap is not None:
        model = unwrap()
    flag = getattr(type(model), "is_activation_checkpointing", None)
    return bool(model.is_activation_checkpointing if flag is not None else getattr(model, "is_gradient_checkpointing", False))


def same_on_all_ranks(model: torch.nn.Module, flag: bool) -> bool:
    """`flag` where every rank agrees, else False on all: for a choice that changes how many forwards a sharded
    model runs (each forward is a collective: ranks that ran different counts would hang)."""
    if not is_sharded(model):
        return flag
    return dist.all_ranks(flag)


def compute_device(model: torch.nn.Module) -> torch.device:
    """Where a model's inputs go: its parameters' device, or this rank's device when sharded (with CPU offload
    the sharded parameters live in CPU memory but compute runs on the GPU)."""
    if is_sharded(model):
        return dist.device()
    return next(model.parameters()).device
