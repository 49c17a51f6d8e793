"""Reassembling one full tensor from the pieces that ranks saved: where a DTensor's local piece sits in the full
tensor (from its placements and the rank's mesh coordinate), where a ShardedTensor's pieces sit (from their
metadata), and filling the full tensor from pieces with a check that every element was covered.

Pure functions over plain tensors and numbers; no process group is needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from scirl.errors import ScirlError


@dataclass(frozen=True)
class Piece:
    """A block of a full tensor: `tensor` sits at `offsets` (one per dimension)."""

    offsets: tuple[int, ...]
    tensor: torch.Tensor


def chunk_size_and_offset(length: int, num_chunks: int, index: int) -> tuple[int, int]:
    """Size and start of chunk `index` when `length` is split like `torch.chunk` (what DTensor's Shard does):
    chunks of ceil(length / num_chunks), the last ones shorter or empty when it does not divide."""
    full = -(-length // num_chunks)
    start = min(full * index, length)
    return min(full, length - start), start


def mesh_coordinate(mesh_ranks: torch.Tensor, rank: int) -> tuple[int, ...] | None:
    """The coordinate of global `rank` in a device mesh's tensor of ranks, or None when it is not in the mesh."""
    hits = (mesh_ranks == rank).nonzero()
    return tuple(int(i) for i in hits[0]) if len(hits) else None


def placement_offsets(global_shape: Sequence[int], mesh_shape: Sequence[int], coordinate: Sequence[int],
                      placements: Sequence, key: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(local shape, global offsets) of the piece held at `coordinate` of a mesh, for placements made of Shard(d)
    and Replicate(). Shards apply left to right, each splitting what the previous ones left (torch.chunk rule).

    Written here because torch's equivalent needs an initialised process group (it asks the mesh for the current
    rank's coordinate); this one takes the coordinate of any rank, which is what merging saved files needs."""
    from torch.distributed.tensor import Replicate, Shard

    shape, offsets = list(global_shape), [0] * len(global_shape)
    for mesh_dim, placement in enumerate(placements):
        if type(placement).__name__ == "_StridedShard":
            raise ScirlError(f"{key}: strided sharding ({placement}, FSDP combined with tensor parallelism) is not "
                             "supported")
        if isinstance(placement, Shard):
            size, start = chunk_size_and_offset(shape[placement.dim], mesh_shape[mesh_dim], coordinate[mesh_dim])
            shape[placement.dim] = size
            offsets[placement.dim] += start
        elif not isinstance(placement, Replicate):
            raise ScirlError(f"{key}: placement {placement} cannot be merged (only Shard and Replicate can)")
    return tuple(shape), tuple(offsets)


def assemble(key: str, global_shape: Sequence[int], pieces: Sequence[Piece], source: str) -> torch.Tensor:
    """The full tensor of `global_shape` filled from `pieces`. Pieces with the same offsets are replicas: the first
    is kept (never concatenated). Raises one line naming `source` when the pieces do not cover the tensor exactly."""
    if not pieces:
        raise ScirlError(f"{source}: no piece of {key} was found")
    full = torch.empty(tuple(global_shape), dtype=pieces[0].tensor.dtype)
    filled = torch.zeros(tuple(global_shape), dtype=torch.bool)
    seen: dict[tuple[int, ...], tuple[int, ...]] = {}
    for piece in pieces:
        t = piece.tensor
        if t.dtype != full.dtype:
            raise ScirlError(f"{source}: the pieces of {key} have different dtypes ({full.dtype}, {t.dtype})")
        if len(piece.offsets) != full.dim() or any(o + s > g for o, s, g in zip(piece.offsets, t.shape, full.shape)):
            raise ScirlError(f"{source}: a piece of {key} ({tuple(t.shape)} at {piece.offsets}) does not fit in "
                             f"{tuple(full.shape)}")
        if piece.offsets in seen:  # a replica (a Replicate() mesh dimension): keep the first
            if seen[piece.offsets] != tuple(t.shape):
                raise ScirlError(f"{source}: two pieces of {key} start at {piece.offsets} with different shapes")
            continue
        seen[piece.offsets] = tuple(t.shape)
        region = tuple(slice(o, o + s) for o, s in zip(piece.offsets, t.shape))
        if filled[region].any():
            raise ScirlError(f"{source}: the saved pieces of {key} overlap at {piece.offsets}")
        full[region] = t
        filled[region] = True
    if not bool(filled.all()):
        raise ScirlError(f"{source}: the saved pieces of {key} cover {int(filled.sum())} of its {full.numel()} "
                         "elements (a rank's piece is missing)")
    return full
