"""A local sandbox for untrusted Python (the code_interpreter tool, code rewards): `Sandbox(cfg).run(code)`.

See scirl.sandbox.tiers for the isolation tiers, scirl.sandbox.runner for the launch path and limits,
scirl.sandbox.seccomp for the syscall filter and scirl.sandbox.battery for the escape battery `scirl sandbox
selftest` runs."""

from scirl.sandbox.runner import Result, Sandbox

__all__ = ["Result", "Sandbox"]
