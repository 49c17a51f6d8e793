"""Which isolation tier this machine offers, and the one-line refusal when none is safe enough.

Tiers, strongest first:
- `bwrap+seccomp+uid+rlimits`: bubblewrap namespaces (no network, no host files but a read-only /usr, private
  /proc, sized tmpfs /tmp, /dev/shm and work dir, the rest read-only), the seccomp filter, a dedicated
  unprivileged uid per worker, rlimits;
- `landlock+seccomp+uid+rlimits` (bubblewrap missing): Landlock confines the filesystem to read-only /usr and the
  run's own folder, and scopes signals / abstract sockets to the sandbox; no pid, mount or network namespace, so
  /proc still lists host processes (their memory and environ stay unreadable: other uid, ptrace refused);
- `unsafe` (only with sandbox.allow_unsafe=true): rlimits and timeouts, nothing else.
A tier without a dedicated uid (the sandbox users are missing, or scirl does not run as root) says so in its name.
Where a writable cgroup hierarchy exists (root, sandbox.cgroup=auto) each run also gets its own cgroup: the name
ends in `+cgroup` (scirl.sandbox.cgroup); without one the reason is logged once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
import pwd
import subprocess
from dataclasses import dataclass

from scirl.errors import ScirlError

BWRAP, LANDLOCK, UNSAFE = "bwrap+seccomp", "landlock+seccomp", "unsafe"
INSTALL = {BWRAP: "apt-get install -y bubblewrap", LANDLOCK: "a kernel with Landlock (5.13+, ABI 6 for signals)"}
log = logging.getLogger("scirl.sandbox")
LANDLOCK_MIN_ABI = 6  # ABI 6 scopes signals and abstract unix sockets to the sandbox
PYTHON = "/usr/bin/python3"  # the payload's interpreter (the system one, on the read-only /usr)


@dataclass(frozen=True)
class Tier:
    kind: str  # BWRAP | LANDLOCK | UNSAFE
    uid: int | None  # the unprivileged uid the payload runs as (None: the trainer's own uid)
    gid: int | None
    user: str  # its name ("" when none)
    dedicated: bool = False  # the worker's own user (<sandbox.user_prefix><worker>), not a shared one like nobody
    cgroup: object = None  # a scirl.sandbox.cgroup.Layout: each run gets its own cgroup (memory + pids)

    @property
    def name(self) -> str:
        if self.kind == UNSAFE:
            return "unsafe (rlimits + timeout only)"
        name = "+".join([self.kind] + (["uid"] if self.dedicated else []) + ["rlimits"]
                        + (["cgroup"] if self.cgroup is not None else []))
        if self.uid is None:
            name += " (same uid as the trainer)"
        elif not self.dedicated:
            name += f" (shared uid {self.user})"
        return name


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: none)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        v = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # landlock_create_ruleset, VERSION
        return max(int(v), 0)
    except (OSError, AttributeError):
        return 0


def _user(prefix: str, worker: int) -> tuple[int | None, int | None, str]:
    if os.geteuid() != 0:
        return None, None, ""  # cannot switch uid: the payload runs as the trainer's user
    for name in (f"{prefix}{worker}", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid, name
        except KeyError:
            continue
    raise ScirlError(f"sandbox: no user {prefix}{worker} and no 'nobody' to run untrusted code as; create it with "
                     f"useradd --system --no-create-home --shell /usr/sbin/nologin {prefix}{worker}")


def _bwrap_problem(bwrap: str, uid: int | None, gid: int | None) -> str:
    if not os.path.isfile(bwrap) or not os.access(bwrap, os.X_OK):
        return f"{bwrap} not found ({INSTALL[BWRAP]})"
    return _bwrap_probe(bwrap, uid, gid)


@functools.lru_cache(maxsize=None)
def _bwrap_probe(bwrap: str, uid: int | None, gid: int | None) -> str:
    """"" when bubblewrap can build its namespaces as this uid (a container may forbid user namespaces)."""
    drop = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    argv = drop + [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--ro-bind", "/usr", "/usr",
                   "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--proc", "/proc",
                   "--dev", "/dev", "/usr/bin/true"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{bwrap} does not start: {e}"
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        return f"{bwrap} cannot build its namespaces here ({why}; user namespaces must be allowed)"
    return ""


def _seccomp_problem() -> str:
    try:
        from scirl.sandbox.seccomp import filter_bytes

        filter_bytes()
    except ScirlError as e:
        return str(e).removeprefix("sandbox: ")
    return ""


def detect(cfg, worker: int = 0) -> Tier:
    """The strongest tier `cfg.tier` allows here (with a cgroup per run when available); a ScirlError naming the
    tier and the missing package when none."""
    return _with_cgroup(_detect(cfg, worker), getattr(cfg, "cgroup", "auto"))


def _with_cgroup(tier: Tier, want: str) -> Tier:
    want = "off" if want is False else want  # YAML reads a bare `off` as false
    if want not in ("auto", "off"):
        raise ScirlError(f"sandbox.cgroup={want!r} must be one of auto, off")
    if want == "off":
        return tier
    from scirl.sandbox import cgroup

    layout, why = cgroup.probe()
    if layout is None:
        _no_cgroup(why)
        return tier
    return dataclasses.replace(tier, cgroup=layout)


@functools.lru_cache(maxsize=None)
def _no_cgroup(why: str) -> None:
    log.info("sandbox: no cgroup per run (%s); limits are the rlimits and the uid's", why)


def _detect(cfg, worker: int) -> Tier:
    want = cfg.tier
    if want not in ("auto", "bwrap", "landlock", "unsafe"):
        raise ScirlError(f"sandbox.tier={want!r} must be one of auto, bwrap, landlock, unsafe")
    uid, gid, user = _user(cfg.user_prefix, worker)
    dedicated = uid is not None and user == f"{cfg.user_prefix}{worker}"
    missing = []
    sec = _seccomp_problem() or ("" if os.access(PYTHON, os.X_OK) else f"no {PYTHON} (apt-get install -y python3)")
    if want in ("auto", "bwrap"):
        problem = sec or _bwrap_problem(cfg.bwrap, uid, gid)
        if not problem:
            return Tier(BWRAP, uid, gid, user, dedicated)
        missing.append(f"tier {BWRAP}+uid+rlimits unavailable: {problem}")
    if want in ("auto", "landlock"):
        abi = landlock_abi()
        problem = (f"Landlock ABI {abi} < {LANDLOCK_MIN_ABI}" if abi < LANDLOCK_MIN_ABI else "") or sec
        if not problem:
            log.warning("sandbox: tier %s (weaker than bubblewrap: no pid / network namespace, no disk quota)%s",
                        LANDLOCK, "".join(": " + m for m in missing[:1]))
            return Tier(LANDLOCK, uid, gid, user, dedicated)
        missing.append(f"tier {LANDLOCK}+uid+rlimits unavailable: {problem} ({INSTALL[LANDLOCK]})")
    if want == "unsafe" or cfg.allow_unsafe:
        log.warning("sandbox: tier UNSAFE (rlimits and timeouts only; sandbox.allow_unsafe)%s",
                    "".join(": " + m for m in missing[:1]))
        return Tier(UNSAFE, uid, gid, user, dedicated)
    raise ScirlError("sandbox: refusing to run untrusted code with only timeouts: " + "; ".join(missing)
                     + "; or set sandbox.allow_unsafe=true")
