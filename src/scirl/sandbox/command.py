"""`scirl sandbox selftest` (the escape battery, tier and outcome per attack) and `scirl sandbox exec FILE.py`
(one program run exactly as the code_interpreter tool runs it)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scirl.errors import ScirlError

USAGE = """scirl sandbox selftest|exec [FILE.py] [--timeout S] [--stdin FILE] [--worker N] [sandbox.KEY=VALUE ...]

selftest: run the escape battery (scirl.sandbox.battery: host files, /usr writes, the network to a 127.0.0.1
server it starts, fork / memory bombs, disk fill, ptrace, a secret planted in this process's environment, killing
the parent, /proc, persistence, refused syscalls ...) in the strongest tier available; print the tier and each
attack's outcome; exit 1 if any attack escaped. exec FILE.py: run one program in the sandbox with the same tier,
limits and environment as the code_interpreter tool; print its stdout and stderr and exit with its status (124
on timeout). Overrides like sandbox.tier=bwrap or sandbox.memory_mb=512 change the limits (`scirl config`
lists the sandbox.* keys); with neither bubblewrap nor Landlock the command refuses in one line naming the tier
and the package (.ci/run installs bubblewrap and the scirl-sbx users)."""


def sandbox_config(overrides: list[str]):
    """SandboxConfig with `sandbox.KEY=VALUE` overrides applied and range-checked (one line per bad key)."""
    from scirl.config import SandboxConfig, _apply, parse_override
    from scirl.config_ranges import RANGES, check_value

    cfg = SandboxConfig()
    for item in overrides:
        key, value = parse_override(item)
        if not key.startswith("sandbox."):
            raise ScirlError(f"scirl sandbox takes sandbox.* overrides only, got '{key}'")
        _apply(cfg, {key.removeprefix("sandbox."): value}, "sandbox.", " on the command line")
    for key, rng in RANGES.items():
        if key.startswith("sandbox."):
            check_value(key, getattr(cfg, key.removeprefix("sandbox.")), rng)
    return cfg


def sandbox_main(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="scirl sandbox", usage=USAGE.splitlines()[0])
    p.add_argument("action", choices=["selftest", "exec"])
    p.add_argument("rest", nargs="*")
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--stdin", default=None)
    p.add_argument("--worker", type=int, default=0)
    ns = p.parse_args(args)
    files = [a for a in ns.rest if "=" not in a]
    cfg = sandbox_config([a for a in ns.rest if "=" in a])
    from scirl.sandbox import Sandbox

    sandbox = Sandbox(cfg, worker=ns.worker)
    if ns.action == "selftest":
        return _selftest(sandbox)
    if len(files) != 1:
        raise ScirlError("scirl sandbox exec takes one FILE.py")
    path = Path(files[0])
    if not path.is_file():
        raise ScirlError(f"sandbox exec: file not found: {path}")
    stdin = Path(ns.stdin).read_text(errors="surrogateescape") if ns.stdin else ""
    r = sandbox.run(path.read_text(errors="surrogateescape"), stdin=stdin, timeout=ns.timeout)
    sys.stdout.write(r.stdout)
    sys.stdout.flush()
    sys.stderr.write(r.stderr)
    if r.timed_out:
        print(f"scirl sandbox: timed out after {r.duration:.1f} s (tier {r.tier})", file=sys.stderr)
    if r.truncated:
        print(f"scirl sandbox: output passed {cfg.max_output_bytes} bytes: truncated and killed", file=sys.stderr)
    return r.returncode


def _selftest(sandbox) -> int:
    from scirl.sandbox import battery

    print(f"tier: {sandbox.tier.name} (worker {sandbox.worker}, uid {sandbox.tier.user or 'of the trainer'})")
    with battery.context(str(Path.cwd())) as ctx:
        escaped, gaps = battery.run_all(sandbox, ctx, report=lambda line: print(line, flush=True))
    n = len(battery.ATTACKS)
    print(f"{n - escaped - gaps} of {n} attacks contained" + (f"; {gaps} known gap(s) of tier {sandbox.tier.kind}"
                                                              if gaps else "") + (f"; {escaped} ESCAPED" if escaped else ""))
    return 1 if escaped else 0
