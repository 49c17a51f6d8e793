"""Starting the ranks of a multi-process run: `scirl train ... trainer.nproc_per_node=N` decides here whether this
process trains itself (one process, or it already is a rank: torchrun's / our env vars are set) or starts the
ranks with torchrun (one machine) or Ray (`trainer.launcher=ray`, one machine or many).

Every rank runs the same `python -m scirl train <the same args>` (SPMD); a launcher only places and starts the
processes, sets the torchrun env vars (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT),
forwards SIGTERM / SIGINT to the ranks, and passes their exit status through.

Threads per rank (OMP_NUM_THREADS, read by torch at start): `trainer.num_threads` when set; else an
OMP_NUM_THREADS already in the launcher's environment; else the rank's share of the CPU (torchrun: cores //
processes per node, Ray: `ray.num_cpus_per_worker`), at least 1. torchrun by hand sets 1 when unset, as torchrun
always does; `trainer.num_threads` still sets torch's threads inside each rank.
"""

from __future__ import annotations

import os
import signal

from scirl.config import Config
from scirl.errors import ScirlError

RANK_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCHER_PID = "SCIRL_LAUNCHER_PID"  # set by scirl's launchers in every rank: the process the run dies with


def is_rank() -> bool:
    """This process was started as one rank of a group (by torchrun, by hand or by scirl, or by scirl's Ray
    launcher): it trains, it does not launch."""
    return "WORLD_SIZE" in os.environ


def world_size_of(cfg: Config) -> int:
    return cfg.trainer.nnodes * cfg.trainer.nproc_per_node


def threads_per_rank(cfg: Config, cpu_share: float) -> int:
    if cfg.trainer.num_threads:
        return cfg.trainer.num_threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, int(cpu_share))


def die_with_launcher() -> None:
    """Run first in a rank started by torchrun or by scirl's Ray actor: the rank dies with the process that started
    it (torchrun starts each rank in a session of its own, so nothing else would end it after kill -9 of torchrun),
    and at once when scirl's launcher is already gone (the race between the start and the request)."""
    from scirl.procs import die_with_parent

    if not (os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get(LAUNCHER_PID)):
        return  # WORLD_SIZE set by something else (a scheduler): its lifetime rules apply
    die_with_parent()
    launcher = os.environ.get(LAUNCHER_PID, "")
    if launcher.isdigit() and not _alive(int(launcher)):
        os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def launch_if_needed(cfg: Config, train_args: list[str], command: str = "train") -> int | None:
    """Start the ranks when this configuration asks for more than one process and this process is not a rank
    already; return the run's exit status then, or None when this process should train by itself. Each rank runs
    `python -m scirl <command> <train_args>` (train, or sft)."""
    if is_rank():
        return None
    t = cfg.trainer
    if t.launcher == "ray":
        from scirl.launch.ray_launcher import launch_ray

        return launch_ray(cfg, ["-m", "scirl", command, *train_args])
    if world_size_of(cfg) == 1:
        return None
    if t.nnodes > 1:
        raise ScirlError(
            f"trainer.nnodes={t.nnodes} with trainer.launcher=torchrun: start torchrun on each machine yourself, "
            f"`torchrun --nnodes {t.nnodes} --nproc-per-node {t.nproc_per_node} --node-rank <0..{t.nnodes - 1}> "
            f"--rdzv-backend c10d --rdzv-endpoint <first machine>:29500 -m scirl {command} {' '.join(train_args)}`, "
            "or use trainer.launcher=ray")
    from scirl.launch.torchrun import launch_torchrun

    cores = os.cpu_count() or 1
    return launch_torchrun(t.nproc_per_node, ["-m", "scirl", command, *train_args],
                           threads=threads_per_rank(cfg, cores / t.nproc_per_node))
