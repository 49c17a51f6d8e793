"""The process group of a data-parallel run, and the few collectives scirl uses outside FSDP.

A process is a rank of a group when torchrun's environment variables are set (`WORLD_SIZE` > 1, `RANK`,
`LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; the Ray launcher sets the same ones). `init_from_env()` joins that
group: gloo on CPU, nccl on CUDA with the device `cuda:LOCAL_RANK`. Every helper here is the identity (or a
no-op) when no process group is initialised, so one process never touches torch.distributed.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as torch_dist

from scirl.errors import ScirlError


def env_world_size() -> int:
    """WORLD_SIZE from the environment (1 when unset): known before the group exists."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(raw))
    except ValueError:
        raise ScirlError(f"environment variable WORLD_SIZE={raw!r} is not an integer") from None


def is_initialized() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def init_from_env(timeout_s: float = 1800.0) -> bool:
    """Join the process group described by the environment when WORLD_SIZE > 1 (idempotent). True when this
    process is now a rank of a group of more than one process."""
    if is_initialized():
        return True
    if env_world_size() <= 1:
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    torch_dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return True


def destroy() -> None:
    """Leave the process group (end of a run); nothing when there is none."""
    if is_initialized():
        torch_dist.destroy_process_group()


def rank() -> int:
    return torch_dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return torch_dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """The device collectives run on: this rank's GPU under nccl, else the CPU."""
    if is_initialized() and torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_initialized():
        torch_dist.barrier()


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    if not is_initialized():
        return t
    buf = t.detach().to(device(), copy=True)
    torch_dist.all_reduce(buf, op=op)
    return buf.to(t.device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over ranks (a new tensor on t's device); `t` itself at world size 1."""
    return _all_reduce(t, torch_dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, torch_dist.ReduceOp.MAX)


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, torch_dist.ReduceOp.MIN)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (e.g. a stop request, a non-finite loss)."""
    if not is_initialized():
        return bool(flag)
    return bool(all_reduce_max(torch.tensor(float(bool(flag)))).item() > 0)


def all_ranks(flag: bool) -> bool:
    """True on every rank when `flag` is true on all of them."""
    return not any_rank(not flag)


def all_gather_object(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects); [obj] at world size 1."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank; `obj` at world size 1."""
    if not is_initialized():
        return obj
    box = [obj if rank() == src else None]
    torch_dist.broadcast_object_list(box, src=src, device=device())
    return box[0]


def check_divisible(train_batch_size: int, ppo_mini_batch_size: int, world: int) -> None:
    """Both global prompt counts must split evenly over `world` ranks (one-line error naming the key)."""
    for key, value in (("data.train_batch_size", train_batch_size), ("actor.ppo_mini_batch_size", ppo_mini_batch_size)):
        if value % world:
            raise ScirlError(f"{key}={value} is not divisible by the world size {world} (each rank trains on "
                             "whole prompt groups; choose a multiple of the number of processes)")


def rank_groups(num_groups: int, mini_groups: int, rank_: int, world: int) -> list[int]:
    """Which of a step's `num_groups` prompt groups rank `rank_` trains on: of every mini-batch of `mini_groups`
    consecutive groups, its contiguous share (with one mini-batch, simply its contiguous slice of the batch).

    So the i-th optimizer step of every rank together covers exactly the groups of the i-th mini-batch of one
    process, and a run's updates do not depend on the world size."""
    per_rank = mini_groups // world
    out: list[int] = []
    for start in range(0, num_groups, mini_groups):
        block = min(mini_groups, num_groups - start)
        share = block // world if block < mini_groups else per_rank
        out += range(start + rank_ * share, start + (rank_ + 1) * share)
    return out
