"""The sandbox's seccomp filter: the syscalls untrusted code never needs, compiled once to a classic BPF program.

Built with libseccomp (the `pyseccomp` binding) rather than hand-written BPF: libseccomp checks the architecture
(a foreign-arch syscall, e.g. x32 or i386 through int 0x80, kills the process) and resolves syscall numbers per
arch. The default action is ALLOW (a deny list): Python, its stdlib and the programs it starts need a wide and
changing set of syscalls, and the namespaces, the unprivileged uid and the rlimits are the main walls; the filter
removes the kernel surface those walls do not cover. bubblewrap loads the program with `--seccomp FD` right before
it executes the payload; the Landlock tier loads the same bytes with prctl(PR_SET_SECCOMP).
"""

from __future__ import annotations

import errno
import functools

from scirl.errors import ScirlError

# refused with EPERM: new mounts and namespaces, tracing other processes, kernel extensions, keyrings
DENY_EPERM = (
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "ptrace", "process_vm_readv",
    "process_vm_writev", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module",
    "finit_module", "delete_module", "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl",
    "open_by_handle_at", "name_to_handle_at", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount",
    "open_tree", "mount_setattr", "lookup_dcookie", "vhangup", "settimeofday", "clock_settime", "adjtimex",
    "clock_adjtime", "iopl", "ioperm", "personality",
)
# clone() flags that create namespaces (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME)
CLONE_NS_BITS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80)
AF_UNIX = 1
TIOCSTI, TIOCLINUX = 0x5412, 0x541C


@functools.lru_cache(maxsize=1)
def filter_bytes() -> bytes:
    """The compiled filter (the raw `struct sock_filter` array that bwrap --seccomp reads)."""
    try:
        import pyseccomp as sc
    except ImportError as e:
        raise ScirlError("sandbox: the seccomp filter needs the pyseccomp package and libseccomp2 "
                         "(pip install pyseccomp; apt-get install libseccomp2)") from e
    import os
    import tempfile

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in DENY_EPERM:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):  # a syscall this arch / libseccomp does not know
            continue
    # namespaces through clone(): flags are argument 0 on x86_64 and arm64
    for bit in CLONE_NS_BITS:  # one rule per bit: MASKED_EQ matches (flags & bit) == bit
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    # clone3 passes its flags in memory the filter cannot read: ENOSYS makes glibc fall back to clone()
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    # sockets: AF_UNIX only (no network even if a namespace leaked one)
    f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, AF_UNIX))
    f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socketpair", sc.Arg(0, sc.NE, AF_UNIX))
    # no typing into a terminal the payload might share
    f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCSTI))
    f.add_rule(sc.ERRNO(errno.EPERM), "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, TIOCLINUX))
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.flush()
        os.lseek(tmp.fileno(), 0, os.SEEK_SET)
        return tmp.read()
