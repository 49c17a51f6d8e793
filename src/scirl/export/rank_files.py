"""Reading one rank's `torch.save`d state dict without a process group, and turning each of its values into the
pieces of a full tensor: a DTensor (FSDP2) gives its `_local_tensor` at the offsets its placements and the rank's
mesh coordinate say; an FSDP1 `ShardedTensor` gives its local shards at the offsets their metadata say; a plain
tensor is the whole tensor (world size 1, or a replicated buffer)."""

from __future__ import annotations

import logging
import pickle
import types
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from scirl.errors import ScirlError
from scirl.export.shards import Piece, mesh_coordinate, placement_offsets

_SHARDED_TENSOR = ("torch.distributed._shard.sharded_tensor.api", "ShardedTensor")


class SavedShardedTensor(torch.Tensor):
    """What an FSDP1 ShardedTensor unpickles into here. ShardedTensor's own unpickling insists on an initialised
    process group with the saving rank's number; its pickled state (local shards with offsets, global metadata)
    is all a merge needs, so this stand-in keeps that state and nothing else."""

    local_shards: list
    global_shape: tuple[int, ...]

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise TypeError("a saved ShardedTensor stand-in holds shards only; use .local_shards")

    def __setstate__(self, state):
        local_shards, metadata = state[0], state[1]
        self.local_shards = list(local_shards)
        self.global_shape = tuple(metadata.size)


def _stand_in_class():
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    SavedShardedTensor.ProcessGroupState = ShardedTensor.ProcessGroupState  # pickled as ShardedTensor.<this>
    return SavedShardedTensor


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == _SHARDED_TENSOR:
            return _stand_in_class()
        return super().find_class(module, name)


_PICKLE = types.SimpleNamespace(Unpickler=_Unpickler, load=pickle.load, __name__="pickle")


@contextmanager
def _quiet_device_mesh():
    """DeviceMesh warns on every unpickle without process groups (about torch.compile); nothing here compiles."""
    log = logging.getLogger("torch.distributed.device_mesh")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def load_rank_file(path: Path) -> dict:
    """A rank's saved state dict on the CPU (DTensors stay DTensors; ShardedTensors become stand-ins)."""
    try:
        with _quiet_device_mesh():
            state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, AttributeError) as e:
        raise ScirlError(f"{path}: cannot be read ({str(e).strip().splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise ScirlError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def is_sharded(value) -> bool:
    """Whether a saved value is one rank's piece of a larger tensor (DTensor or ShardedTensor)."""
    from torch.distributed.tensor import DTensor

    return isinstance(value, (DTensor, SavedShardedTensor))


def global_shape_of(value) -> tuple[int, ...]:
    return tuple(value.global_shape if isinstance(value, SavedShardedTensor) else value.shape)


def pieces_of(value, rank: int, key: str, source: Path) -> list[Piece]:
    """The pieces of the full tensor `key` that rank `rank` saved as `value` (a DTensor or ShardedTensor)."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, SavedShardedTensor):
        return [Piece(tuple(int(o) for o in s.metadata.shard_offsets), s.tensor) for s in value.local_shards]
    if not isinstance(value, DTensor):
        raise TypeError(f"not a sharded value: {type(value).__name__}")
    mesh = value.device_mesh
    coordinate = mesh_coordinate(mesh.mesh, rank)
    if coordinate is None:
        raise ScirlError(f"{source}: {key} is on a device mesh of ranks {mesh.mesh.flatten().tolist()}, "
                         f"which does not hold rank {rank}")
    local = value._local_tensor
    shape, offsets = placement_offsets(value.shape, tuple(mesh.mesh.shape), coordinate, value.placements,
                                       f"{source}: {key}")
    if tuple(local.shape) != shape:
        raise ScirlError(f"{source}: {key}'s local piece has shape {tuple(local.shape)}, but {value.placements} on "
                         f"mesh {tuple(mesh.mesh.shape)} gives rank {rank} the shape {shape}")
    return [Piece(offsets, local)]
