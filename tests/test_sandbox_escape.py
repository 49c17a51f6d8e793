"""The escape battery (scirl.sandbox.battery): every attack is contained by the sandbox this machine offers.

Run in both confining tiers: bubblewrap and Landlock (the fallback; its known gaps, e.g. no disk quota, are
skipped by name). Needs bubblewrap / Landlock and root for the per-worker uid (CI: .ci/run installs bubblewrap and
the scirl-sbx users); a tier missing here is skipped with its refusal line as the reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scirl.errors import ScirlError
from scirl.sandbox import battery

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=["bwrap", "landlock"])
def sandbox(request):
    from scirl.config import SandboxConfig
    from scirl.sandbox import Sandbox

    try:
        return Sandbox(SandboxConfig(tier=request.param))
    except ScirlError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def ctx():
    with battery.context(str(REPO)) as c:
        yield c


def test_battery_is_big_enough():
    assert len(battery.ATTACKS) >= 20
    assert len({a.name for a in battery.ATTACKS}) == len(battery.ATTACKS)


@pytest.mark.parametrize("attack", battery.ATTACKS, ids=[a.name for a in battery.ATTACKS])
def test_attack_is_contained(sandbox, ctx, attack):
    assert os.environ[battery.SECRET_ENV] == ctx.secret  # planted in the trainer's (pytest's) environment
    if sandbox.tier.kind in attack.gaps:
        pytest.skip(f"a known gap of tier {sandbox.tier.kind}")
    contained, why, r = battery.attempt(sandbox, attack, ctx)
    assert contained, f"{attack.name}: {why}\nstdout={r.stdout[-500:]}\nstderr={r.stderr[-500:]}"
    assert ctx.secret not in r.stdout + r.stderr
    assert r.tier.startswith(sandbox.tier.kind) and r.tier == sandbox.tier.name
    assert not ctx.hits  # the 127.0.0.1 server never saw a request


def test_host_server_is_reachable_from_the_host(ctx):
    """Control for the network attacks: the server the sandbox could not reach answers a host client."""
    import urllib.request

    assert urllib.request.urlopen(f"http://127.0.0.1:{ctx.port}/x", timeout=5).read() == b"secret page"
    assert ctx.hits == ["/x"]
    ctx.hits.clear()


def test_the_sandbox_still_works_after_the_bombs(sandbox, ctx):
    """Fork bomb, memory bomb and kill -9 -1 left the worker's uid usable: a normal run right after succeeds."""
    for name in ("fork bomb", "kill the trainer", "memory bomb"):
        battery.attempt(sandbox, next(a for a in battery.ATTACKS if a.name == name), ctx)
    r = sandbox.run("print(sum(range(10)))", timeout=5)
    assert (r.stdout, r.returncode) == ("45\n", 0)
