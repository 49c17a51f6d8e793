"""The `code_interpreter` tool's runner: programs run in the sandbox (`scirl.sandbox.SandboxPool`), their outcome
turned into the text the model reads. `use_sandbox(cfg.sandbox)` builds the pool (failing in one line where no safe
tier is available) and installs the runner (`agent.tools.set_code_runner`)."""

from __future__ import annotations

from scirl.sandbox.pool import SandboxPool
from scirl.sandbox.runner import Result


def result_text(result: Result, timeout: float) -> tuple[str, bool]:
    """(what the model reads, is_error): stdout, then stderr, then what stopped the program. An error is a non-zero
    status, a timeout or output past the sandbox's cap; a program that prints nothing says so, so that the tool turn
    is never empty."""
    parts = [p.rstrip("\n") for p in (result.stdout, result.stderr) if p.strip()]
    if result.timed_out:
        parts.append(f"TimeoutError: the program ran past {timeout:g} s and was stopped")
    elif result.truncated:
        parts.append("[output truncated: the program printed more than the sandbox keeps, and was stopped]")
    elif result.returncode != 0 and not result.stderr.strip():
        parts.append(f"[exit status {result.returncode}]")
    return ("\n".join(parts) if parts else "[no output]"), not result.ok


def sandbox_code_runner(pool: SandboxPool):
    """`run_code(code, timeout) -> (text, is_error)` over `pool` (for `agent.tools.set_code_runner`)."""
    def run_code(code: str, timeout: float) -> tuple[str, bool]:
        return result_text(pool.run(code, timeout=timeout), timeout)
    return run_code


def use_sandbox(sandbox_cfg) -> SandboxPool:
    """A pool for `sandbox_cfg` (config.SandboxConfig) installed as code_interpreter's runner, with the sandbox's
    own timeout (the tool-call timeout of the rollout should be a little longer, so the sandbox stops the program
    and the model reads why)."""
    from scirl.agent.tools import set_code_runner

    pool = SandboxPool(sandbox_cfg)
    set_code_runner(sandbox_code_runner(pool), sandbox_cfg.timeout)
    return pool
