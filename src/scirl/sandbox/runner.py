"""`Sandbox.run(code, stdin, timeout)`: one untrusted Python program in the strongest tier, its output capped.

Launch path (no preexec_fn: a fork of a multi-GB trainer costs ~60 ms, posix_spawn of /bin/sh ~2 ms):
    /bin/sh -c WRAPPER  ->  echo $$ > cgroup.procs (a cgroup tier); ulimit ...;
                            exec setpriv --reuid U ... -- bwrap ... /usr/bin/python3 -I -B main.py
The program arrives through a memfd (`bwrap --file`), the seccomp program through another (`--seccomp`); the
payload runs the system /usr/bin/python3 from the read-only /usr, never the trainer's interpreter or venv, with an
environment of five fixed variables. Output beyond `max_output_bytes` (stdout + stderr) kills the run and sets
`truncated`; past the wall-clock timeout the run is killed, `timed_out` is set and the return code is 124.
"""

from __future__ import annotations

import fcntl
import functools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from scirl.sandbox import cgroup, tiers

PYTHON = tiers.PYTHON
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/work", "LANG": "C.UTF-8", "TMPDIR": "/tmp",
       "PYTHONDONTWRITEBYTECODE": "1"}
# join the run's cgroup(s) ($6: cgroup.procs files, "" when none; a failure leaves the rlimits only), rlimits,
# then drop to the sandbox uid (if any), then the tier's launcher; $1..$5 are the limits. Builtins only: no extra
# process on the launch path.
WRAPPER = ('for f in $6; do { echo $$ > "$f"; } 2>/dev/null; done; '
           'ulimit -c 0 && ulimit -v "$1" && ulimit -t "$2" && ulimit -p "$3" && ulimit -f "$4" && ulimit -n "$5" '
           '|| { echo "sandbox: cannot set rlimits" >&2; exit 125; }; shift 6; exec "$@"')
TIMEOUT_CODE = 124
NPROC_BACKSTOP = 8  # with a cgroup, RLIMIT_NPROC sits this far above pids.max (the whole run's processes)
LANDLOCK_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "landlock_exec.py")


@dataclass
class Result:
    stdout: str
    stderr: str
    returncode: int  # the program's exit status; 128 + N when killed by signal N; 124 on timeout
    timed_out: bool
    duration: float  # seconds, wall clock
    tier: str
    truncated: bool = False  # output passed max_output_bytes: the rest was dropped and the run killed
    limit: str = ""  # the run's cgroup limit that was hit: "memory", "pids", "memory+pids" ("" none or no cgroup)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.truncated


class Sandbox:
    """Runs untrusted Python programs for one worker (its own uid). Runs of one worker are serialised, within the
    process (a lock) and across processes (flock on a per-uid lock file): a worker's uid carries one run's process
    limit (RLIMIT_NPROC counts per uid) and, in the tiers without a pid namespace, the sweep of leftover processes
    kills everything of that uid. Use one Sandbox (worker index) per parallel worker."""

    def __init__(self, cfg=None, worker: int = 0):
        from scirl.config import SandboxConfig

        self.cfg = cfg if cfg is not None else SandboxConfig()
        self.worker = worker
        self.tier = tiers.detect(self.cfg, worker)  # a ScirlError naming the tier and package when none is safe
        self._lock = threading.Lock()
        self._cgroup_warned = False
        self._lock_path = os.path.join(tempfile.gettempdir(), f"scirl-sandbox-{self.tier.user or os.getuid()}.lock")

    def _limits(self, group=None) -> list[str]:
        c = self.cfg
        nproc = c.max_processes + (NPROC_BACKSTOP if group else 0)  # a cgroup: pids.max is the run's limit
        if self.tier.uid is None:  # not root: the payload shares the trainer's uid, whose processes count too
            nproc += len(uid_pids(os.getuid()))
        return [str(c.memory_mb * 1024), str(c.cpu_seconds), str(nproc),
                str(c.file_size_mb * 2048), str(c.max_fds)]  # ulimit -v in KiB, -f in 512-byte blocks (POSIX sh)

    def _drop_uid(self) -> list[str]:
        t = self.tier
        if t.uid is None:
            return []
        return ["setpriv", f"--reuid={t.uid}", f"--regid={t.gid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--"]

    def _bwrap_argv(self, code_fd: int, seccomp_fd: int) -> list[str]:
        size = str(self.cfg.disk_mb * 1024 * 1024)
        argv = [self.cfg.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--clearenv", "--as-pid-1", "--cap-drop", "ALL", "--hostname", "sandbox",
                "--ro-bind", "/usr", "/usr"]
        for link in ("bin", "lib", "lib64", "sbin"):
            if os.path.islink("/" + link):
                argv += ["--symlink", os.readlink("/" + link), "/" + link]
            elif os.path.isdir("/" + link):
                argv += ["--ro-bind", "/" + link, "/" + link]
        # every writable place is a sized tmpfs; bwrap's own root and /dev tmpfs are remounted read-only (unsized,
        # they would let a program fill the host's memory)
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm", "--size", size,
                 "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/work", "--perms", "0644", "--file", str(code_fd),
                 "/work/main.py", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/work",
                 "--seccomp", str(seccomp_fd)]
        for k, v in ENV.items():
            argv += ["--setenv", k, v]
        return argv + ["--", PYTHON, "-I", "-B", "main.py"]

    def run(self, code: str, stdin: str = "", timeout: float | None = None) -> Result:
        with self._lock:  # one run per worker uid in this process, and (flock) across processes
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                return self._run(code, stdin, timeout)
            finally:
                os.close(fd)

    def _run(self, code: str, stdin: str, timeout: float | None) -> Result:
        timeout = self.cfg.timeout if timeout is None else timeout
        kind, fds, workdir, group = self.tier.kind, [], None, None
        try:
            code_fd = _memfd("code", _bytes(code))
            fds.append(code_fd)
            if kind == tiers.BWRAP:
                from scirl.sandbox.seccomp import filter_bytes

                fds.append(_memfd("seccomp", filter_bytes()))
                payload = self._bwrap_argv(code_fd, fds[-1])
                cwd = "/"
            else:
                workdir = self._workdir(code)
                env_dir = dict(ENV, HOME=workdir, TMPDIR=workdir)
                if kind == tiers.LANDLOCK:
                    from scirl.sandbox.seccomp import filter_bytes

                    fds.append(_memfd("seccomp", filter_bytes()))
                    payload = [PYTHON, "-I", "-B", "-c", _launcher(), str(fds[-1]), workdir]
                else:
                    payload = [PYTHON, "-I", "-B", "main.py"]
                cwd = workdir
            group = self._cgroup()
            argv = ["/bin/sh", "-c", WRAPPER, "sh", *self._limits(group), " ".join(group.procs if group else []),
                    *self._drop_uid(), *payload]
            env = ENV if kind == tiers.BWRAP else env_dir
            result = self._spawn(argv, env, cwd, fds, _bytes(stdin), timeout)
            if group:
                group.close()
                result.limit = group.limit
                group = None
            return result
        finally:
            if group:  # an exception (Ctrl-C) between creating the cgroup and closing it
                group.close()
            for fd in fds:
                os.close(fd)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)

    def _cgroup(self):
        """This run's cgroup (scirl.sandbox.cgroup.RunGroup), or None: no cgroup tier, or creating it failed (logged
        once; the run goes on with its rlimits)."""
        if self.tier.cgroup is None:
            return None
        try:
            return cgroup.RunGroup.create(self.tier.cgroup, self.cfg.memory_mb, self.cfg.max_processes)
        except OSError as e:
            if not self._cgroup_warned:
                tiers.log.warning("sandbox: this run has no cgroup (%s); rlimits only", e)
                self._cgroup_warned = True
            return None

    def _workdir(self, code: str) -> str:
        d = tempfile.mkdtemp(prefix=f"scirl-sbx{self.worker}-")
        with open(os.path.join(d, "main.py"), "wb") as f:
            f.write(_bytes(code))
        if self.tier.uid is not None:
            os.chown(d, self.tier.uid, self.tier.gid)
        os.chmod(d, 0o700)
        return d

    def _spawn(self, argv, env, cwd, fds, stdin: bytes, timeout: float) -> Result:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=cwd, pass_fds=fds, start_new_session=True)
        try:
            out, err, timed_out, truncated = _pump(proc, stdin, start + timeout, self.cfg.max_output_bytes)
        except BaseException:  # Ctrl-C, a signal turned into an exception: never leave the program running
            _kill(proc)
            proc.wait()
            raise
        if timed_out or truncated:
            _kill(proc)
        try:
            code = proc.wait(timeout=max(start + timeout - time.monotonic(), 0.05))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill(proc)
            code = proc.wait()
        if self.tier.kind != tiers.BWRAP and self.tier.dedicated:
            kill_uid(self.tier.uid)  # no pid namespace: sweep what the payload left behind (its uid is its own)
        code = TIMEOUT_CODE if timed_out else (128 - code if code < 0 else code)
        return Result(_text(out), _text(err), code, timed_out, time.monotonic() - start, self.tier.name, truncated)


@functools.lru_cache(maxsize=1)
def _launcher() -> str:
    """landlock_exec.py's text, passed with -c: the sandbox uid may not be able to read the trainer's tree."""
    with open(LANDLOCK_LAUNCHER, encoding="utf-8") as f:
        return f.read()


def uid_pids(uid: int) -> list[int]:
    """Pids whose real uid is `uid` (from /proc/*/status)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(name))
                        break
        except (OSError, ValueError):
            continue
    return pids


def kill_uid(uid: int, wait: float = 2.0) -> None:
    """SIGKILL every process of a dedicated sandbox uid until none is left (the tiers without a pid namespace:
    a payload that called setsid() has left the launcher's process group)."""
    deadline = time.monotonic() + wait
    while (pids := uid_pids(uid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _bytes(text: str) -> bytes:
    """UTF-8; bytes smuggled in as surrogate escapes go back as they were, other lone surrogates become '?'."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _text(b: bytearray) -> str:
    return bytes(b).decode("utf-8", errors="replace")


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"scirl-{name}", 0)  # not inheritable: only pass_fds crosses into the wrapper
    os.write(fd, data) if len(data) < 65536 else _write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group; bwrap's --die-with-parent and pid namespace take the payload down."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pump(proc, stdin: bytes, deadline: float, cap: int):
    """Feed stdin and read stdout / stderr until both close (or, 0.1 s after the launcher exited, stay silent), the
    deadline passes, or cap bytes have arrived."""
    sel = selectors.DefaultSelector()
    bufs = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    view = memoryview(stdin)
    if view:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    total, timed_out, truncated = 0, False, False
    while sel.get_map() and not truncated:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        events = sel.select(min(left, 0.1))
        if not events and proc.poll() is not None:
            break  # the launcher exited but something it left holds the pipes (no pid namespace): stop reading
        for key, _ in events:
            fd = key.fd
            if fd not in bufs:  # stdin
                try:
                    view = view[os.write(fd, view[:65536]):]
                except (BrokenPipeError, BlockingIOError) as e:
                    view = view if isinstance(e, BlockingIOError) else view[:0]
                if not view:
                    sel.unregister(fd)
                    proc.stdin.close()
                continue
            data = os.read(fd, 65536)
            if not data:
                sel.unregister(fd)
                continue
            room = cap - total
            bufs[fd] += data[:room]
            total += min(len(data), room)
            truncated = len(data) > room
    sel.close()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if not f.closed:
            f.close()
    out, err = bufs.values()  # stdout first (insertion order)
    return out, err, timed_out, truncated


if sys.platform != "linux":  # pragma: no cover
    raise ImportError("scirl.sandbox runs on Linux only")
