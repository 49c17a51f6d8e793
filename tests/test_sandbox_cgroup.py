"""A cgroup per sandbox run (scirl.sandbox.cgroup): the memory limit holds for all of a run's processes together
(where RLIMIT_AS, per process, would allow them), pids.max stops a fork bomb, no run cgroup is left behind, and
sandbox.cgroup=off gives the old tier. Skips, with the reason, where no writable cgroup hierarchy exists."""

from __future__ import annotations

import os

import pytest

from scirl.config import SandboxConfig
from scirl.errors import ScirlError

# three children of 400 MB each, all alive at once (each waits for the parent's go): 1.2 GB together
THREE_400MB = """
import os, sys, time
kids = []
for i in range(3):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        b = bytearray(400 << 20)
        b[::4096] = b"x" * len(range(0, len(b), 4096))  # resident, not just reserved
        os.write(w, b"1")
        time.sleep(3)
        os._exit(0)
    os.close(w)  # a killed child's pipe then reads empty
    kids.append((pid, r))
got = sum(len(os.read(r, 1)) for _, r in kids)
codes = [os.waitpid(pid, 0)[1] for pid, _ in kids]
print(got, codes)
sys.exit(0 if got == 3 and not any(codes) else 9)
"""
FORK_BOMB = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
except OSError as e:
    print("stopped at", n, e.errno)
"""


@pytest.fixture(scope="module")
def box():
    from scirl.sandbox import Sandbox, cgroup

    layout, why = cgroup.probe()
    if layout is None:
        pytest.skip(f"no writable cgroup hierarchy here: {why}")
    try:
        sb = Sandbox(SandboxConfig(tier="bwrap", memory_mb=1024, max_processes=32, timeout=20))
    except ScirlError as e:
        pytest.skip(str(e))
    assert sb.tier.cgroup == layout and sb.tier.name.endswith("+cgroup"), sb.tier.name
    return sb


def _left(sb) -> list[str]:
    """This process's run cgroups still present (other processes on the machine may be running sandboxes too)."""
    return [n for p in sb.tier.cgroup.parents for n in os.listdir(p) if n.startswith(f"run-{os.getpid()}-")]


def test_memory_limit_covers_all_processes_of_a_run(box):
    r = box.run(THREE_400MB, timeout=20)
    assert r.returncode == 9 and "memory" in r.limit, r  # one child OOM-killed by the cgroup (1 GB for the run)
    assert 9 in eval(r.stdout.split(" ", 1)[1]), r.stdout  # a child's wait status: SIGKILL (the cgroup's OOM kill)
    assert _left(box) == []


def test_memory_of_one_process_under_the_limit_runs(box):
    r = box.run("b = bytearray(600 << 20); b[::4096] = b'x' * len(range(0, len(b), 4096)); print(len(b) >> 20)")
    assert (r.stdout, r.returncode, r.limit) == ("600\n", 0, "")


def test_fork_bomb_stopped_by_pids_max(box):
    r = box.run(FORK_BOMB, timeout=20)
    assert "pids" in r.limit and r.stdout.startswith("stopped at"), r
    n = int(r.stdout.split()[2])
    assert 20 <= n < 32, r.stdout  # max_processes=32 for the whole run, bwrap's own processes included
    assert not r.timed_out and r.duration < 15 and _left(box) == []


def test_no_cgroup_left_after_many_runs_and_a_timeout(box):
    for _ in range(3):
        assert box.run("print(6 * 7)").stdout == "42\n"
    r = box.run("import os, time\nos.fork()\ntime.sleep(30)", timeout=1)
    assert r.timed_out and r.returncode == 124
    assert _left(box) == []


def test_cgroup_off_gives_the_old_tier(box):
    from scirl.sandbox import Sandbox

    sb = Sandbox(SandboxConfig(tier="bwrap", cgroup="off", memory_mb=1024, max_processes=32, timeout=20))
    assert sb.tier.cgroup is None and sb.tier.name == box.tier.name.removesuffix("+cgroup")
    r = sb.run(THREE_400MB, timeout=20)  # RLIMIT_AS (per process) alone lets the three 400 MB children live
    assert (r.stdout, r.returncode, r.tier, r.limit) == ("3 [0, 0, 0]\n", 0, sb.tier.name, "")


def test_bad_cgroup_value_is_one_line():
    from scirl.config import load_config
    from scirl.sandbox import tiers

    with pytest.raises(ScirlError, match=r"sandbox.cgroup"):
        load_config(None, ["sandbox.cgroup=yes"])
    assert load_config(None, ["sandbox.cgroup=off"]).sandbox.cgroup is False  # YAML's off: accepted as off
    assert tiers.detect(SandboxConfig(tier="unsafe", cgroup=False)).cgroup is None
    with pytest.raises(ScirlError, match=r"sandbox.cgroup='yes' must be one of auto, off"):
        tiers.detect(SandboxConfig(tier="unsafe", cgroup="yes"))


def test_no_cgroup_here_means_old_tier_and_runs_still_work(monkeypatch, caplog):
    from scirl.sandbox import Sandbox, cgroup

    monkeypatch.setattr(cgroup, "probe", lambda: (None, "cgroup fs read-only"))
    try:
        sb = Sandbox(SandboxConfig(tier="bwrap"))
    except ScirlError as e:
        pytest.skip(str(e))
    assert sb.tier.cgroup is None and not sb.tier.name.endswith("+cgroup")
    r = sb.run("print(2 + 2)")
    assert (r.stdout, r.returncode, r.limit) == ("4\n", 0, "")


def test_cgroup_creation_failing_at_run_time_is_not_a_failed_run(box, monkeypatch):
    from scirl.sandbox import cgroup

    def eperm(*a, **k):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(cgroup.RunGroup, "create", eperm)
    r = box.run("print(5 * 5)")
    assert (r.stdout, r.returncode, r.limit) == ("25\n", 0, "") and _left(box) == []
