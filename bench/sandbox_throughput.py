"""Sandbox throughput: milliseconds per run of a small program, sequentially and with `workers` in parallel.

    PYTHONPATH=src python bench/sandbox_throughput.py [--n 50] [--workers 4] [--ballast-mb 0] [sandbox.KEY=VALUE ...]

Each run is `print(sum(i * i for i in range(1000)))` in a fresh sandbox (scirl.sandbox.Sandbox, the strongest
tier here): spawn of the /bin/sh wrapper, rlimits, setpriv, bubblewrap's namespaces and seccomp, the system
python3's start, the program, teardown. Also times the bare `/usr/bin/python3 -I -B -c ...` for the same
program, so the sandbox's own cost is the difference. --ballast-mb makes this process as big as a trainer first:
the launch path (posix_spawn of /bin/sh, no preexec_fn) should not slow down with it. Every run's output is
checked. No timing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CODE = "print(sum(i * i for i in range(1000)))"
WANT = f"{sum(i * i for i in range(1000))}\n"


def _noop() -> None:
    pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--ballast-mb", type=int, default=0, help="touch this much memory first (a big trainer's RSS)")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    ballast = bytearray(a.ballast_mb << 20)
    ballast[::4096] = b"x" * len(range(0, len(ballast), 4096))  # resident, not just reserved
    from scirl.sandbox import Sandbox, SandboxPool
    from scirl.sandbox.command import sandbox_config

    cfg = sandbox_config(a.overrides)
    cfg = replace(cfg, workers=a.workers or cfg.workers)
    box = Sandbox(cfg)
    print(f"tier: {box.tier.name}; n={a.n}, workers={cfg.workers}, ballast {a.ballast_mb} MB resident")
    box.run(CODE)  # warm-up: the seccomp program is compiled once per process

    for label, kw in (("no preexec_fn (vfork / posix_spawn)", {}), ("preexec_fn (fork)", {"preexec_fn": _noop})):
        t = time.perf_counter()
        for _ in range(a.n):
            subprocess.run(["/bin/true"], check=True, **kw)
        print(f"spawn /bin/true, {label:<36} {(time.perf_counter() - t) / a.n * 1000:6.2f} ms")

    t = time.perf_counter()
    for _ in range(a.n):
        subprocess.run(["/usr/bin/python3", "-I", "-B", "-c", CODE], capture_output=True, check=True)
    bare = (time.perf_counter() - t) / a.n * 1000
    print(f"bare /usr/bin/python3, sequential: {bare:6.1f} ms/run")

    t = time.perf_counter()
    per = []
    for _ in range(a.n):
        r = box.run(CODE)
        assert r.stdout == WANT and r.returncode == 0, r
        per.append(r.duration * 1000)
    seq = (time.perf_counter() - t) / a.n * 1000
    print(f"sandbox, sequential:               {seq:6.1f} ms/run ({1000 / seq:5.1f} runs/s; "
          f"median {statistics.median(per):.1f} ms, sandbox overhead {seq - bare:+.1f} ms)")

    pool = SandboxPool(cfg)
    t = time.perf_counter()
    results = pool.map([CODE] * a.n)
    par = (time.perf_counter() - t) / a.n * 1000
    assert all(r.stdout == WANT and r.returncode == 0 for r in results)
    print(f"sandbox, {cfg.workers} workers in parallel:    {par:6.1f} ms/run ({1000 / par:5.1f} runs/s)")


if __name__ == "__main__":
    main()
