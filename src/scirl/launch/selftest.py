"""A tiny worker to test the launchers without training: `python -m scirl.launch.selftest` as a rank (torchrun's
env vars set) joins the gloo process group from the env vars, all-reduces its rank and prints one line; it then
fails at once with exit code 3 when SCIRL_SELFTEST_FAIL_RANK is its rank, else sleeps SCIRL_SELFTEST_SLEEP
seconds (a signal ends the sleep: it prints which and exits 128 + signal).

`python -m scirl.launch.selftest LAUNCHER N [key=value ...]` starts N such ranks with scirl's launcher (torchrun
or ray; the overrides are config keys such as ray.address=auto) and exits with the launcher's status."""

from __future__ import annotations

import os
import signal
import sys
import time


def worker() -> int:
    from scirl.launch import die_with_launcher
    from scirl.launch.rank_report import write_report

    die_with_launcher()
    got: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: got.append(s))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)
    # one write per line: print() writes the text and the newline separately, and unbuffered ranks sharing one
    # pipe then interleave ("...pid 11629selftest rank 1/2 ...")
    sys.stdout.write(f"selftest rank {rank}/{world} local {os.environ.get('LOCAL_RANK')}/"
                     f"{os.environ.get('LOCAL_WORLD_SIZE')} sum {int(total.item())} "
                     f"omp {os.environ.get('OMP_NUM_THREADS')} cuda_visible {os.environ.get('CUDA_VISIBLE_DEVICES', '-')} "
                     f"pid {os.getpid()}\n")
    sys.stdout.flush()
    if os.environ.get("SCIRL_SELFTEST_FAIL_RANK") == str(rank):
        write_report(3, f"selftest failure injected on rank {rank}")
        print(f"scirl: error: selftest failure injected on rank {rank}", file=sys.stderr, flush=True)
        os._exit(3)  # no process-group teardown: the peers must learn it from the launcher
    deadline = time.monotonic() + float(os.environ.get("SCIRL_SELFTEST_SLEEP", "0"))
    while time.monotonic() < deadline and not got:
        time.sleep(0.05)
    dist.destroy_process_group()
    if got:
        sys.stdout.write(f"selftest rank {rank} stopped by {signal.Signals(got[0]).name}\n")
        sys.stdout.flush()
        write_report(128 + got[0], f"stopped by {signal.Signals(got[0]).name}")
        return 0 if os.environ.get("SCIRL_LAUNCHER_PID") else 128 + got[0]
    write_report(0, "")
    return 0


def launch(launcher: str, nproc: int, overrides: list[str]) -> int:
    from scirl.cli import _run
    from scirl.config import load_config
    from scirl.launch import threads_per_rank

    def go(_args: list[str]) -> int:
        cfg = load_config(None, [f"trainer.launcher={launcher}", f"trainer.nproc_per_node={nproc}", *overrides])
        argv = ["-m", "scirl.launch.selftest"]
        if launcher == "ray":
            from scirl.launch.ray_launcher import launch_ray

            return launch_ray(cfg, argv)
        from scirl.launch.torchrun import launch_torchrun

        return launch_torchrun(nproc, argv, threads_per_rank(cfg, (os.cpu_count() or 1) / nproc))

    return _run(go, [])[0]


if __name__ == "__main__":
    if "WORLD_SIZE" in os.environ:
        sys.exit(worker())
    sys.exit(launch(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
