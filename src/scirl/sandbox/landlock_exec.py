"""The Landlock tier's launcher (bubblewrap missing): confine this process, then exec the payload.

Run by the system /usr/bin/python3 as `python3 -I -B -c <this file's text> SECCOMP_FD WORKDIR`, already under the
sandbox uid (setpriv, no_new_privs) and the rlimits. It imports nothing from scirl (the trainer's tree may be
unreadable to the sandbox uid). Landlock: read + execute on /usr (and /bin, /lib*, which point into it), read /
write on /dev/null, /dev/zero, /dev/urandom, everything on WORKDIR, nothing anywhere else (not /proc, /etc, /tmp);
TCP bind / connect refused (ABI 4); signals and abstract unix sockets scoped to the sandbox (ABI 6). Then the
seccomp program from SECCOMP_FD, then exec /usr/bin/python3 -I -B main.py in WORKDIR.
Known gaps against bubblewrap: no pid namespace (host pids are visible as numbers; /proc itself is unreadable),
pathname unix sockets that the uid may open stay reachable, and disk use is capped per file only.
"""

import ctypes
import os
import struct
import sys

SYS_CREATE, SYS_ADD_RULE, SYS_RESTRICT = 444, 445, 446  # same numbers on x86_64 and arm64
FS_V1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
FS_BY_ABI = {1: FS_V1, 2: FS_V1 | 1 << 13, 3: FS_V1 | 3 << 13, 4: FS_V1 | 3 << 13, 5: FS_V1 | 7 << 13}
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1, 2, 4, 8
TRUNCATE = 1 << 14
NET_TCP = 3  # BIND_TCP | CONNECT_TCP
SCOPES = 3  # ABSTRACT_UNIX_SOCKET | SIGNAL


def main() -> None:
    seccomp_fd, workdir = int(sys.argv[1]), sys.argv[2]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 6:
        sys.exit(f"sandbox: Landlock ABI {abi} < 6")
    fs = FS_BY_ABI.get(abi, FS_BY_ABI[5])
    attr = struct.pack("QQQ", fs, NET_TCP, SCOPES)
    ruleset = libc.syscall(SYS_CREATE, attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        sys.exit(f"sandbox: landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    rules = [("/usr", EXECUTE | READ_FILE | READ_DIR), (workdir, fs)]
    rules += [(d, WRITE_FILE | READ_FILE | (fs & TRUNCATE)) for d in ("/dev/null", "/dev/zero", "/dev/urandom")]
    for path, access in rules:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        if os.path.isfile(path) or path.startswith("/dev/"):
            access &= EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE  # rights a file (not a folder) can hold
        rule = struct.pack("=Qi", access & fs, fd)  # struct landlock_path_beneath_attr is packed
        if libc.syscall(SYS_ADD_RULE, ruleset, 1, rule, 0) < 0:
            sys.exit(f"sandbox: landlock_add_rule {path}: {os.strerror(ctypes.get_errno())}")
        os.close(fd)
    if libc.prctl(38, 1, 0, 0, 0) < 0:  # PR_SET_NO_NEW_PRIVS
        sys.exit("sandbox: cannot set no_new_privs")
    if libc.syscall(SYS_RESTRICT, ruleset, 0) < 0:
        sys.exit(f"sandbox: landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    os.close(ruleset)
    prog = os.read(seccomp_fd, 1 << 20)
    os.close(seccomp_fd)
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))  # struct sock_fprog
    if libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) < 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        sys.exit(f"sandbox: seccomp: {os.strerror(ctypes.get_errno())}")
    os.chdir(workdir)
    os.execv("/usr/bin/python3", ["/usr/bin/python3", "-I", "-B", "main.py"])


main()
