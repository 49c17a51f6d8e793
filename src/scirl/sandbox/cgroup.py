"""A cgroup per sandbox run, where this machine offers one: memory (sandbox.memory_mb for all of the run's
processes together) and pids (sandbox.max_processes), then every leftover process killed and the cgroup removed.

`probe()` finds a writable hierarchy once per process (root only): cgroup v2 (a mount whose cgroup.controllers
lists memory and pids; the two are enabled in the parent's cgroup.subtree_control when needed), else v1 (the
`memory` and `pids` hierarchies). Runs live in `<base>/scirl-sandbox/run-<pid>-<n>-<random>`, `<base>` being
this process's own cgroup in that hierarchy when it is writable there, else the hierarchy's root. The probe creates a
cgroup, sets both limits, moves a `/bin/true` into it and removes it; anything failing (no cgroup fs, read-only,
EPERM, a missing controller) means no cgroup, said once in the tier's name and log, never an error.

`RunGroup.create()` makes one run's cgroup(s); the launcher joins them (`echo $$ > .../cgroup.procs` in the /bin/sh
wrapper, before it execs the payload, so every process of the run is inside); `RunGroup.close()` reads what limit
was hit (`limit`: "memory", "pids" or ""), kills what is left and removes the directories.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger("scirl.sandbox")
ROOT = "/sys/fs/cgroup"
PARENT = "scirl-sandbox"
_counter = itertools.count()


@dataclass(frozen=True)
class Layout:
    version: int  # 1 | 2
    parents: tuple[str, ...]  # v2: one dir; v1: (memory parent, pids parent)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _own(controller: str) -> str:
    """This process's cgroup path in the hierarchy holding `controller` ("" for v2's 0:: line)."""
    for line in _read("/proc/self/cgroup").splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):  # "" matches v2's "0::/path" line
            return path
    return "/"


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    for line in _read("/proc/self/mounts").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            out.append((parts[1], parts[2], parts[3]))
    return out


def _bases(mount: str, own: str) -> list[str]:
    own_dir = os.path.join(mount, own.lstrip("/"))
    return [own_dir, mount] if own_dir.rstrip("/") != mount.rstrip("/") else [mount]


def _v2_parent(mount: str) -> str:
    if not {"memory", "pids"} <= set(_read(os.path.join(mount, "cgroup.controllers")).split()):
        raise OSError(f"cgroup v2 at {mount} lacks the memory / pids controllers")
    errors = []
    for base in _bases(mount, _own("")):
        try:
            if not {"memory", "pids"} <= set(_read(os.path.join(base, "cgroup.subtree_control")).split()):
                _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
            parent = os.path.join(base, PARENT)
            os.makedirs(parent, exist_ok=True)
            if not {"memory", "pids"} <= set(_read(os.path.join(parent, "cgroup.subtree_control")).split()):
                _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
            return parent
        except OSError as e:
            errors.append(f"{base}: {e.strerror or e}")
    raise OSError("; ".join(errors))


def _v1_parent(mount: str, controller: str) -> str:
    errors = []
    for base in _bases(mount, _own(controller)):
        try:
            parent = os.path.join(base, PARENT)
            os.makedirs(parent, exist_ok=True)
            return parent
        except OSError as e:
            errors.append(f"{base}: {e.strerror or e}")
    raise OSError("; ".join(errors))


def _layout() -> Layout:
    mounts = _mounts()
    problems = []
    for mount, fstype, opts in mounts:
        if fstype == "cgroup2" and "ro" not in opts.split(","):
            try:
                return _check(Layout(2, (_v2_parent(mount),)))
            except OSError as e:
                problems.append(f"v2: {e}")
    v1 = {c: m for m, t, o in mounts if t == "cgroup" and "ro" not in o.split(",") for c in o.split(",")
          if c in ("memory", "pids")}
    if {"memory", "pids"} <= set(v1):
        try:
            return _check(Layout(1, (_v1_parent(v1["memory"], "memory"), _v1_parent(v1["pids"], "pids"))))
        except OSError as e:
            problems.append(f"v1: {e}")
    else:
        problems.append("v1: no writable memory + pids hierarchies")
    raise OSError("; ".join(problems))


def _check(layout: Layout) -> Layout:
    """Create a run cgroup, set both limits, move a /bin/true into it, remove it: the whole path works."""
    g = RunGroup.create(layout, 64, 8)
    try:
        joins = " ".join(f'echo $$ > "{p}" &&' for p in g.procs)
        subprocess.run(["/bin/sh", "-c", f"{joins} exec /bin/true"], check=True, timeout=10, capture_output=True)
    except subprocess.SubprocessError as e:
        raise OSError(f"a process cannot join the cgroup ({e})") from e
    finally:
        g.close()
    if any(os.path.exists(d) for d in g.dirs):
        raise OSError("a run cgroup could not be removed")
    return layout


@functools.lru_cache(maxsize=1)
def probe() -> tuple[Layout | None, str]:
    """(layout, "") when runs can get a cgroup here, else (None, why)."""
    if os.geteuid() != 0:
        return None, "not root"
    try:
        return _layout(), ""
    except (OSError, ValueError) as e:
        return None, str(e)


class RunGroup:
    """One run's cgroup(s): `procs` are the cgroup.procs files the launcher joins."""

    def __init__(self, layout: Layout, dirs: list[str]):
        self.layout, self.dirs = layout, dirs
        self.procs = [os.path.join(d, "cgroup.procs") for d in dirs]
        self.limit = ""

    @classmethod
    def create(cls, layout: Layout, memory_mb: int, max_processes: int) -> RunGroup:
        # the random part: processes in other pid namespaces (containers) may share this hierarchy and this pid
        name = f"run-{os.getpid()}-{next(_counter)}-{secrets.token_hex(4)}"
        dirs = [os.path.join(p, name) for p in layout.parents]
        g = cls(layout, [])
        try:
            for d in dirs:
                os.mkdir(d)
                g.dirs.append(d)
            mem = str(memory_mb << 20)
            if layout.version == 2:
                _write(os.path.join(dirs[0], "memory.max"), mem)
                if os.path.exists(os.path.join(dirs[0], "memory.swap.max")):
                    _write(os.path.join(dirs[0], "memory.swap.max"), "0")
                _write(os.path.join(dirs[0], "pids.max"), str(max_processes))
            else:
                _write(os.path.join(dirs[0], "memory.limit_in_bytes"), mem)
                if os.path.exists(os.path.join(dirs[0], "memory.memsw.limit_in_bytes")):
                    try:
                        _write(os.path.join(dirs[0], "memory.memsw.limit_in_bytes"), mem)
                    except OSError:
                        pass  # swap accounting off: no swap to escape to either
                _write(os.path.join(dirs[1], "pids.max"), str(max_processes))
        except OSError:
            g.close()
            raise
        g.procs = [os.path.join(d, "cgroup.procs") for d in g.dirs]
        return g

    def _limit_hit(self) -> str:
        d = self.dirs
        if self.layout.version == 2:
            ev = dict(line.split() for line in _read(os.path.join(d[0], "memory.events")).splitlines() if line)
            pev = dict(line.split() for line in _read(os.path.join(d[0], "pids.events")).splitlines() if line)
        else:
            ev = dict(line.split() for line in _read(os.path.join(d[0], "memory.oom_control")).splitlines() if line)
            pev = dict(line.split() for line in _read(os.path.join(d[1], "pids.events")).splitlines() if line)
        hits = []
        if int(ev.get("oom_kill", "0")) > 0 or int(ev.get("oom", "0")) > 0:
            hits.append("memory")
        if int(pev.get("max", "0")) > 0:
            hits.append("pids")
        return "+".join(hits)

    def close(self, wait: float = 5.0) -> None:
        """Note the limit hit, SIGKILL every process left in the cgroup(s), then remove them (retrying until empty)."""
        if len(self.dirs) == len(self.layout.parents):
            try:
                self.limit = self._limit_hit()
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + wait
        for d in reversed(self.dirs):
            kill = os.path.join(d, "cgroup.kill")
            while os.path.isdir(d):
                if os.path.exists(kill):
                    try:
                        _write(kill, "1")
                    except OSError:
                        pass
                for pid in _read(os.path.join(d, "cgroup.procs")).split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError, ValueError):
                        pass
                try:
                    os.rmdir(d)
                except OSError:
                    if time.monotonic() > deadline:
                        log.warning("sandbox: could not remove cgroup %s", d)
                        break
                    time.sleep(0.005)
