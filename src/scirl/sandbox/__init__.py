"""A local sandbox for untrusted Python (the code_interpreter tool, code rewards): `Sandbox(cfg).run(code)`, or
`SandboxPool(cfg).run(code)` / `.map(codes)` from many threads.

See scirl.sandbox.tiers for the isolation tiers, scirl.sandbox.runner for the launch path and limits,
scirl.sandbox.seccomp for the syscall filter and scirl.sandbox.battery for the escape battery `scirl sandbox
selftest` runs."""

from scirl.sandbox.pool import SandboxPool
from scirl.sandbox.runner import Result, Sandbox

__all__ = ["Result", "Sandbox", "SandboxPool"]
