"""`scirl sandbox exec` prints the program's output and exits with its status (124 on timeout); `scirl sandbox
selftest` prints the tier and every attack's outcome and exits 0; bad overrides and a missing bwrap are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def scirl(*args, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "scirl", "sandbox", *args], capture_output=True, text=True,
                          env=env, timeout=120, **kw)


@pytest.fixture(scope="module")
def have_bwrap():
    from scirl.config import SandboxConfig
    from scirl.errors import ScirlError
    from scirl.sandbox import Sandbox

    try:
        Sandbox(SandboxConfig(tier="bwrap"))
    except ScirlError as e:
        pytest.skip(str(e))


def test_exec_prints_output_and_exits_with_the_status(tmp_path, have_bwrap):
    prog = tmp_path / "p.py"
    prog.write_text("import sys\nprint('out', sys.stdin.read())\nprint('err', file=sys.stderr)\nsys.exit(5)\n")
    (tmp_path / "in.txt").write_text("abc")
    r = scirl("exec", str(prog), "--stdin", str(tmp_path / "in.txt"))
    assert (r.returncode, r.stdout, r.stderr) == (5, "out abc\n", "err\n")


def test_exec_timeout_exits_124(tmp_path, have_bwrap):
    prog = tmp_path / "spin.py"
    prog.write_text("while True: pass\n")
    r = scirl("exec", str(prog), "--timeout", "1")
    assert r.returncode == 124 and "timed out after 1" in r.stderr and "bwrap+seccomp" in r.stderr


def test_selftest_contains_everything(have_bwrap):
    from scirl.sandbox.battery import ATTACKS

    r = scirl("selftest")
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines[0].startswith("tier: bwrap+seccomp")
    assert sum(line.startswith("contained") for line in lines) == len(ATTACKS)
    assert lines[-1] == f"{len(ATTACKS)} of {len(ATTACKS)} attacks contained"


def test_missing_bwrap_and_bad_keys_are_one_line(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("print(1)\n")
    r = scirl("exec", str(prog), "sandbox.tier=bwrap", "sandbox.bwrap=/nonexistent/bwrap")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "bwrap+seccomp" in r.stderr and "apt-get install -y bubblewrap" in r.stderr
    r = scirl("exec", str(prog), "sandbox.memory_mb=1")
    assert r.returncode == 2 and r.stderr.strip() == "scirl: error: sandbox.memory_mb=1 must be >= 64 (python3 needs ~30 MB)"
    r = scirl("exec", str(prog), "sandbox.memroy_mb=512")
    assert r.returncode == 2 and "sandbox.memroy_mb" in r.stderr and len(r.stderr.splitlines()) == 1
