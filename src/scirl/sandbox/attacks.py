"""The escape battery's attacks: the program each one runs in the sandbox and the check of its result.

Each attack prints `CONTAINED ...` once its attempt failed and `ESCAPED ...` if it succeeded; a check returns ""
when the attack was contained, else why not. scirl.sandbox.battery runs them and adds the host-side checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

SECRET_ENV = "SCIRL_SANDBOX_TEST_SECRET"
_SYSCALLS = """
import ctypes, errno, os, platform
libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": dict(ptrace=101, mount=165, unshare=272, setns=308, bpf=321, keyctl=250, io_uring_setup=425,
                     perf_event_open=298, init_module=175, userfaultfd=323),
      "aarch64": dict(ptrace=117, mount=40, unshare=97, setns=268, bpf=280, keyctl=219, io_uring_setup=425,
                      perf_event_open=241, init_module=105, userfaultfd=282)}[platform.machine()]
def sys_call(name, *args):
    r = libc.syscall(NR[name], *args)
    e = ctypes.get_errno()
    print(("ESCAPED" if r >= 0 else "CONTAINED"), name, r, errno.errorcode.get(e, e))
"""


@dataclass
class Context:
    """What the host side plants and watches while the battery runs."""

    secret: str
    port: int
    repo: str  # a host folder the program must neither read nor write
    trainer_pid: int
    hits: list = field(default_factory=list)  # requests the HTTP server received


@dataclass(frozen=True)
class Attack:
    name: str
    code: Callable[[Context], str]
    check: Callable[[object, Context], str] | None = None  # "" when contained, else why not; default: default_check
    timeout: float = 5.0
    before: Callable[[Context], str] | None = None  # a run made first (persistence between runs)
    gaps: tuple = ()  # tier kinds (scirl.sandbox.tiers) known not to contain it (reported as GAP, not ESCAPED)


def default_check(r, ctx) -> str:
    text = r.stdout + r.stderr
    if "ESCAPED" in text:
        return "escaped: " + text.strip()[-300:]
    if "CONTAINED" not in r.stdout:
        return f"the attack did not reach its check (exit {r.returncode}): {r.stderr.strip()[-300:]}"
    if ctx.secret in text:
        return "the planted secret was printed"
    return ""


def _read(path_expr: str) -> Callable[[Context], str]:
    return lambda ctx: f"""
import os
p = {path_expr}
try:
    data = open(p, 'rb').read(4096) if os.path.isfile(p) else os.listdir(p)
    print('ESCAPED read', p, len(data))
except OSError as e:
    print('CONTAINED', type(e).__name__, e.errno)
"""


def _write(path_expr: str) -> Callable[[Context], str]:
    return lambda ctx: f"""
p = {path_expr}
try:
    open(p, 'w').write('pwned'); print('ESCAPED wrote', p)
except OSError as e:
    print('CONTAINED', type(e).__name__, e.errno)
"""


def _syscall(call: str) -> Callable[[Context], str]:
    return lambda ctx: _SYSCALLS + call


def _network(family: str, host: str) -> Callable[[Context], str]:
    return lambda ctx: f"""
import socket
try:
    s = socket.socket(socket.{family}, socket.SOCK_STREAM); s.settimeout(2)
    s.connect(({host!r}, {ctx.port})); s.sendall(b'GET /leak HTTP/1.0\\r\\n\\r\\n')
    print('ESCAPED', s.recv(100))
except OSError as e:
    print('CONTAINED', type(e).__name__, e.errno)
"""


def _network_check(r, ctx) -> str:
    return default_check(r, ctx) or (f"the host server got {len(ctx.hits)} request(s)" if ctx.hits else "")


def _bomb_check(limit: float) -> Callable:
    def check(r, ctx) -> str:
        if r.duration > limit:
            return f"took {r.duration:.1f} s (> {limit} s)"
        return "" if "ESCAPED" not in r.stdout else "escaped: " + r.stdout[-200:]
    return check


def _size_check(limit_mb: int) -> Callable:
    def check(r, ctx) -> str:
        last = [line for line in r.stdout.split() if line.isdigit()]
        if not last:
            return f"no size printed (exit {r.returncode}): {r.stderr[-200:]}"
        mb = int(last[-1]) / 2**20
        return "" if mb <= limit_mb else f"wrote {mb:.0f} MB (> {limit_mb} MB)"
    return check


FILL_ONE = """
import os
n = 0
try:
    with open('fill', 'wb') as f:
        for _ in range(200):
            f.write(b'x' * 2**20); f.flush(); n += 2**20
except (OSError, MemoryError) as e:
    pass
print(n)
"""
FILL_MANY = """
import os, signal, tempfile
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
n = 0
for i in range(8):
    try:
        with open(os.path.join(tempfile.gettempdir(), f'fill{i}'), 'wb') as f:
            for _ in range(40):
                f.write(b'x' * 2**20); f.flush(); n += 2**20
    except OSError:
        pass
print(n)
"""

FILL_DIRS = """
import os, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
n = 0
for d in ('/', '/dev', '/dev/shm', '/work', '/usr', '/proc', os.path.expanduser('~')):
    for i in range(4):
        try:
            with open(os.path.join(d, f'fill{i}'), 'wb') as f:
                for _ in range(40):
                    f.write(b'x' * 2**20); f.flush(); n += 2**20
        except OSError:
            break
print(n)
"""

ATTACKS: list[Attack] = [
    Attack("read /etc/shadow", _read("'/etc/shadow'")),
    Attack("read /etc/passwd", _read("'/etc/passwd'")),
    Attack("list /root", _read("'/root'")),
    Attack("read the repository", lambda ctx: _read(repr(os.path.join(ctx.repo, "README.md")))(ctx)),
    Attack("write into /usr", _write("'/usr/scirl-pwned'")),
    Attack("write into the repository", lambda ctx: _write(repr(os.path.join(ctx.repo, "pwned.txt")))(ctx)),
    Attack("write /proc/sys", _write("'/proc/sys/kernel/core_pattern'")),
    Attack("read the trainer's environment", lambda ctx: f"""
import os
def leaks(p):
    try:
        return {ctx.secret!r}.encode() in open(p, 'rb').read()
    except OSError:
        return False
found = [p for p in ('/proc/1/environ', '/proc/{ctx.trainer_pid}/environ', '/proc/self/environ') if leaks(p)]
found += [k for k, v in os.environ.items() if {ctx.secret!r} in v]
print('ESCAPED' if found else 'CONTAINED', found, sorted(os.environ))
"""),
    Attack("/proc of the trainer", lambda ctx: f"""
import os
seen = []
for p in ('/proc/{ctx.trainer_pid}/cmdline', '/proc/{ctx.trainer_pid}/mem', '/proc/{ctx.trainer_pid}/root/etc/hostname',
          '/proc/{ctx.trainer_pid}/maps'):
    try:
        open(p, 'rb').read(16); seen.append(p)
    except OSError as e:
        pass
print('ESCAPED' if seen else 'CONTAINED', seen)
"""),
    Attack("HTTP to a 127.0.0.1 server", _network("AF_INET", "127.0.0.1"), _network_check),
    Attack("HTTP to a ::1 server", _network("AF_INET6", "::1"), _network_check),
    Attack("raw / netlink / packet sockets", lambda ctx: """
import socket
for fam, typ in ((socket.AF_NETLINK, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_RAW),
                 (socket.AF_INET, socket.SOCK_DGRAM), (socket.AF_INET, socket.SOCK_RAW)):
    try:
        socket.socket(fam, typ); print('ESCAPED', fam, typ)
    except OSError as e:
        print('CONTAINED', fam, e.errno)
"""),
    Attack("ptrace", _syscall("sys_call('ptrace', 16, 1, 0, 0)  # PTRACE_ATTACH to pid 1\n"
                              "sys_call('ptrace', 0, 0, 0, 0)  # PTRACE_TRACEME")),
    Attack("mount", _syscall("sys_call('mount', b'none', b'/tmp', b'tmpfs', 0, None)")),
    Attack("unshare / setns", _syscall("sys_call('unshare', 0x10000000)  # CLONE_NEWUSER\n"
                                       "sys_call('unshare', 0x00020000)  # CLONE_NEWNS\n"
                                       "sys_call('setns', 0, 0)")),
    Attack("unshare(1) a user namespace", lambda ctx: """
import subprocess
r = subprocess.run(['/usr/bin/unshare', '--user', '--map-root-user', '/usr/bin/id', '-u'], capture_output=True)
print('ESCAPED' if r.returncode == 0 else 'CONTAINED', r.returncode, r.stdout, r.stderr[-120:])
"""),
    Attack("bpf / perf / userfaultfd", _syscall("sys_call('bpf', 0, 0, 0)\nsys_call('perf_event_open', 0, 0, -1, -1, 0)\n"
                                                "sys_call('userfaultfd', 0)\nsys_call('init_module', 0, 0, 0)")),
    Attack("io_uring", _syscall("buf = ctypes.create_string_buffer(120)\nsys_call('io_uring_setup', 8, buf)")),
    Attack("keyctl", _syscall("sys_call('keyctl', 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring")),
    Attack("setuid back to root", lambda ctx: """
import os
for f in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.setresuid(0, 0, 0)):
    try:
        f(); print('ESCAPED', os.getuid())
    except OSError as e:
        print('CONTAINED', e.errno)
"""),
    Attack("kill the trainer", lambda ctx: f"""
import os, signal
for pid in ({ctx.trainer_pid}, os.getppid(), -1):
    try:
        os.kill(pid, signal.SIGKILL); print('tried', pid)
    except OSError as e:
        print('CONTAINED', pid, e.errno)
print('CONTAINED end')
"""),
    Attack("fork bomb", lambda ctx: """
import os
n = 0
while n < 100000:
    try:
        if os.fork() == 0:
            while True: pass
        n += 1
    except OSError:
        print('CONTAINED forks', n, flush=True)
        break
""", _bomb_check(9.0), timeout=3.0),
    Attack("memory bomb", lambda ctx: """
try:
    x = bytearray(4 * 2**30); x[::4096] = b'x' * len(x[::4096]); print('ESCAPED 4 GB')
except MemoryError:
    print('CONTAINED MemoryError')
""", _bomb_check(9.0)),
    Attack("fill one file", lambda ctx: FILL_ONE, lambda r, ctx: _size_check(64)(r, ctx)),
    Attack("fill the disk with many files", lambda ctx: FILL_MANY, lambda r, ctx: _size_check(64)(r, ctx),
           gaps=("landlock+seccomp", "unsafe")),  # Landlock has no disk quota: per-file limit and the timeout only
    Attack("fill /, /dev and /dev/shm", lambda ctx: FILL_DIRS, lambda r, ctx: _size_check(3 * 64)(r, ctx)),
    Attack("persist between runs", lambda ctx: """
import os, tempfile
left = [p for p in ('persist', os.path.join(tempfile.gettempdir(), 'persist')) if os.path.exists(p)]
print('ESCAPED' if left else 'CONTAINED', left)
""", before=lambda ctx: "import tempfile, os\nopen('persist', 'w').write('x')\n"
                 "open(os.path.join(tempfile.gettempdir(), 'persist'), 'w').write('x')"),
    Attack("a daemon outlives the run", lambda ctx: """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
print('CONTAINED if no process of the sandbox uid is left', flush=True)
"""),
    Attack("devices", lambda ctx: """
import os
found = []
for d in ('/dev/mem', '/dev/kmsg', '/dev/sda', '/dev/vda', '/dev/nvme0n1', '/dev/tty0', '/dev/tty'):
    try:
        os.close(os.open(d, os.O_RDONLY)); found.append(d)
    except OSError:
        pass
print('ESCAPED' if found else 'CONTAINED', found)
"""),
]
