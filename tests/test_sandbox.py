"""Sandbox behaviour for ordinary programs: output, stdin, exit codes, timeouts (124), output cap, non-UTF-8,
rlimits as configured, and the one-line refusal naming the tier and the package when bubblewrap is missing."""

from __future__ import annotations

import pytest

from scirl.config import SandboxConfig
from scirl.errors import ScirlError


@pytest.fixture(scope="module")
def sandbox():
    from scirl.sandbox import Sandbox

    try:
        return Sandbox(SandboxConfig(tier="bwrap", max_output_bytes=100_000))
    except ScirlError as e:
        pytest.skip(str(e))


def test_print_stdin_exit_code(sandbox):
    r = sandbox.run("import sys\nx = int(input())\nprint(x * 2)\nprint('err', file=sys.stderr)\nsys.exit(7)",
                    stdin="21\n", timeout=5)
    assert (r.stdout, r.stderr, r.returncode, r.timed_out, r.truncated) == ("42\n", "err\n", 7, False, False)


def test_numeric_computation_with_the_stdlib(sandbox):
    code = "import math, fractions, statistics\n" \
           "print(math.factorial(20), fractions.Fraction(1, 3) + fractions.Fraction(1, 6), statistics.mean([1, 2, 4]))"
    r = sandbox.run(code, timeout=5)
    assert r.stdout == "2432902008176640000 1/2 2.3333333333333335\n" and r.ok


def test_runs_the_system_python_with_a_fixed_environment(sandbox):
    r = sandbox.run("import os, sys\nprint(sys.executable, os.getcwd(), sorted(os.environ))", timeout=5)
    assert r.stdout.split(" ", 2)[:2] == ["/usr/bin/python3", "/work"]
    assert "VIRTUAL_ENV" not in r.stdout and "PYTHONPATH" not in r.stdout


def test_payload_has_no_capabilities_a_seccomp_filter_and_only_three_fds(sandbox):
    r = sandbox.run("import os\nst = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines())\n"
                    "print(st['CapEff'], st['CapBnd'], st['NoNewPrivs'], st['Seccomp'], os.getgroups(),"
                    " sorted(os.listdir('/proc/self/fd')))", timeout=5)
    assert r.stdout == "0000000000000000 0000000000000000 1 2 [] ['0', '1', '2', '3']\n", r.stderr  # 3: listdir's


def test_lone_surrogates_in_code_and_stdin_do_not_crash_the_caller(sandbox):
    r = sandbox.run("print(input())  # \ud800", stdin="a\ud83db\udcff\n", timeout=5)
    assert (r.stdout, r.returncode) == ("a?b?\n", 0)  # encoded with errors="replace": each surrogate is "?"


def test_exception_exit_code_and_traceback(sandbox):
    r = sandbox.run("1 / 0", timeout=5)
    assert r.returncode == 1 and "ZeroDivisionError" in r.stderr


def test_large_stdin_round_trip(sandbox):
    data = "x" * 300_000 + "\n"
    r = sandbox.run("import sys\nprint(len(sys.stdin.read()))", stdin=data, timeout=5)
    assert r.stdout == "300001\n"


def test_timeout_kills_and_returns_124(sandbox):
    r = sandbox.run("import time\nprint('start', flush=True)\nwhile True: time.sleep(0.01)", timeout=1.0)
    assert r.timed_out and r.returncode == 124 and r.stdout == "start\n"
    assert 1.0 <= r.duration < 4.0


def test_cpu_limit_kills_a_spinning_program():
    from scirl.sandbox import Sandbox

    try:
        sb = Sandbox(SandboxConfig(tier="bwrap", cpu_seconds=1))
    except ScirlError as e:
        pytest.skip(str(e))
    r = sb.run("while True: pass", timeout=10)
    assert not r.timed_out and r.returncode in (128 + 9, 128 + 24) and r.duration < 6  # SIGXCPU / SIGKILL


def test_huge_output_is_truncated_and_the_run_killed(sandbox):
    r = sandbox.run("import sys\nwhile True: sys.stdout.write('y' * 65536)", timeout=10)
    assert r.truncated and not r.timed_out and len(r.stdout) == 100_000 and set(r.stdout) == {"y"}
    assert r.duration < 5


def test_a_100_mb_print_costs_the_caller_only_the_cap(sandbox):
    r = sandbox.run("print('x' * 100_000_000)", timeout=10)
    assert r.truncated and r.returncode == 137 and len(r.stdout) == 100_000 and r.duration < 5


def test_non_utf8_output_is_replaced(sandbox):
    r = sandbox.run("import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')", timeout=5)
    assert r.stdout == "ok \ufffd\ufffd end\n"


def test_memory_limit_is_the_configured_one(sandbox):
    r = sandbox.run("import resource as r\nprint(r.getrlimit(r.RLIMIT_AS)[0] >> 20, r.getrlimit(r.RLIMIT_NPROC)[0],"
                    " r.getrlimit(r.RLIMIT_FSIZE)[0] >> 20, r.getrlimit(r.RLIMIT_NOFILE)[0],"
                    " r.getrlimit(r.RLIMIT_CPU)[0])", timeout=5)
    nproc = 64 + (8 if sandbox.tier.cgroup else 0)  # with a cgroup, pids.max=64 holds; RLIMIT_NPROC is a backstop
    assert r.stdout.split() == ["1024", str(nproc), "64", "256", "5"]


def test_workers_run_as_different_uids():
    import os

    from scirl.sandbox import Sandbox

    if os.geteuid() != 0:
        pytest.skip("a uid per worker needs root")
    try:
        uids = {Sandbox(SandboxConfig(tier="bwrap"), worker=w).run("import os; print(os.getuid())").stdout
                for w in (0, 1)}
    except ScirlError as e:
        pytest.skip(str(e))
    assert len(uids) == 2 and "0\n" not in uids


def test_missing_bwrap_is_one_line_naming_tier_and_package():
    from scirl.sandbox import Sandbox

    with pytest.raises(ScirlError) as e:
        Sandbox(SandboxConfig(tier="bwrap", bwrap="/nonexistent/bwrap"))
    msg = str(e.value)
    assert "\n" not in msg
    assert "bwrap+seccomp" in msg and "/nonexistent/bwrap not found" in msg and "apt-get install -y bubblewrap" in msg
    assert "sandbox.allow_unsafe=true" in msg


def test_unsafe_tier_only_when_allowed():
    from scirl.sandbox import Sandbox

    with pytest.raises(ScirlError, match="refusing to run untrusted code with only timeouts"):
        Sandbox(SandboxConfig(tier="bwrap", bwrap="/nonexistent/bwrap"))
    sb = Sandbox(SandboxConfig(tier="bwrap", bwrap="/nonexistent/bwrap", allow_unsafe=True))
    assert sb.tier.name.startswith("unsafe")
    r = sb.run("print(6 * 7)", timeout=5)
    assert (r.stdout, r.returncode, r.tier) == ("42\n", 0, sb.tier.name)


def test_bad_tier_is_one_line():
    from scirl.sandbox import Sandbox

    with pytest.raises(ScirlError, match=r"sandbox.tier='docker' must be one of auto, bwrap, landlock, unsafe"):
        Sandbox(SandboxConfig(tier="docker"))


@pytest.mark.parametrize("tier", ["landlock", "unsafe"])
def test_fallback_tiers_run_programs_the_same_way(tier):
    from scirl.sandbox import Sandbox

    try:
        sb = Sandbox(SandboxConfig(tier=tier, max_output_bytes=1000))
    except ScirlError as e:
        pytest.skip(str(e))
    r = sb.run("import os, sys\nprint(int(input()) * 2, sorted(os.environ)[:2])\nsys.exit(3)  # \ud800", stdin="21\n",
               timeout=5)
    assert (r.stdout, r.returncode, r.tier) == ("42 ['HOME', 'LANG']\n", 3, sb.tier.name)
    r = sb.run("import time\nwhile True: time.sleep(0.01)", timeout=1.0)
    assert r.timed_out and r.returncode == 124
    r = sb.run("while True: print('z' * 100)", timeout=5)
    assert r.truncated and len(r.stdout) == 1000


def test_auto_falls_back_to_landlock_and_logs_it(caplog):
    import logging

    from scirl.sandbox import Sandbox
    from scirl.sandbox.tiers import landlock_abi

    if landlock_abi() < 6:
        pytest.skip("no Landlock ABI 6 on this kernel")
    with caplog.at_level(logging.WARNING, logger="scirl.sandbox"):
        sb = Sandbox(SandboxConfig(bwrap="/nonexistent/bwrap"))
    assert sb.tier.kind == "landlock+seccomp"
    assert "/nonexistent/bwrap not found" in caplog.text and "apt-get install -y bubblewrap" in caplog.text


def test_sandbox_keys_are_checked_when_the_config_loads():
    from scirl.config import load_config

    with pytest.raises(ScirlError) as e:
        load_config(None, ["sandbox.tier=docker"])
    assert str(e.value) == "sandbox.tier: unknown value 'docker'. Did you mean 'landlock'? Known: auto, bwrap, landlock, unsafe"
    with pytest.raises(ScirlError, match=r"^sandbox.max_fds=8 must be >= 16"):
        load_config(None, ["sandbox.max_fds=8"])
    cfg = load_config(None, ["sandbox.memory_mb=512", "sandbox.allow_unsafe=true"])
    assert (cfg.sandbox.memory_mb, cfg.sandbox.allow_unsafe, cfg.sandbox.cpu_seconds) == (512, True, 5)


def test_a_bwrap_that_cannot_build_namespaces_is_refused_in_one_line():
    """The tier is probed once (a container may forbid user namespaces): a bwrap that fails is not used."""
    from scirl.sandbox import Sandbox

    with pytest.raises(ScirlError) as e:
        Sandbox(SandboxConfig(tier="bwrap", bwrap="/bin/false"))
    assert "\n" not in str(e.value)
    assert "tier bwrap+seccomp+uid+rlimits unavailable: /bin/false cannot build its namespaces here (exit 1;" in str(e.value)


def test_pool_runs_in_parallel_on_distinct_workers():
    """8 programs on a 4-worker pool: all correct, in input order, spread over the 4 workers' uids."""
    import os

    from scirl.sandbox import SandboxPool

    try:
        pool = SandboxPool(SandboxConfig(tier="bwrap", workers=4))
    except ScirlError as e:
        pytest.skip(str(e))
    codes = [f"import os, time\ntime.sleep(0.3)\nprint({i} * {i}, os.getuid())" for i in range(8)]
    results = pool.map(codes, timeout=10)
    assert [int(r.stdout.split()[0]) for r in results] == [i * i for i in range(8)]
    uids = {r.stdout.split()[1] for r in results}
    assert len(uids) == (4 if os.geteuid() == 0 else 1) and all(r.ok for r in results)


def test_missing_worker_user_falls_back_to_nobody_and_says_so():
    import os

    from scirl.sandbox import Sandbox

    if os.geteuid() != 0:
        pytest.skip("switching uid needs root")
    try:
        sb = Sandbox(SandboxConfig(tier="bwrap", user_prefix="scirl-no-such-user-"))
    except ScirlError as e:
        pytest.skip(str(e))
    assert sb.tier.name.replace("+cgroup", "") == "bwrap+seccomp+rlimits (shared uid nobody)" and not sb.tier.dedicated
    r = sb.run("import os; print(os.getuid())", timeout=5)
    assert r.stdout == "65534\n" and r.tier == sb.tier.name
