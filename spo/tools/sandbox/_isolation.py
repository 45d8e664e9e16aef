"""What an isolated sandbox is made of: its filesystem view, its wrapper command, its filter.

- `layout(python, limits)`: the allow-listed tree as a list of ops that `_stage.py` (and,
  for everything but the tmpfs mounts, bubblewrap) applies: /usr, /etc, /bin, /lib*, the
  target interpreter's own prefixes and the libraries it loads, read-only; /proc; a
  minimal /dev; size- and inode-limited tmpfs at /tmp and /dev/shm.
- `interpreter_roots(python)`: what that interpreter needs, asked of the interpreter itself
  (`sys.prefix`, `base_prefix`, `exec_prefix`, `base_exec_prefix`, the shared objects it
  maps), never a directory just because it holds `bin/python`.
- `command(mode, python, layout)`: `bwrap ...` or `setpriv ... unshare ...` around our init.
- `seccomp_program()`: the syscall filter, compiled once per process with libseccomp
  (through `seccomp`, its own Python binding, or `pyseccomp`, a ctypes binding with the same
  API) into classic BPF that `_stage.py` installs right before it execs the code.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
import threading

from spo.tools.sandbox._errors import SandboxError

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
WRAPPER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
QUERY_TIMEOUT_S = 60.0
TMPFS_INODES_PER_MB = 256
TMPFS_MIN_INODES = 1024

# --------------------------------------------------------------------- filesystem view


def tmpfs_inodes(disk_mb: int) -> int:
    """nr_inodes of each sandbox tmpfs: an empty-file flood stops here (kernel memory)."""
    return max(TMPFS_MIN_INODES, TMPFS_INODES_PER_MB * int(disk_mb))


_roots_lock = threading.Lock()
_roots_cache: dict[str, list[str]] = {}

# Run by the target interpreter as the sandbox will run it (-I: no user site, no PYTHON*
# variables; with site, which is what sets sys.prefix to a venv): its prefixes and every
# file it has mapped once started (its executable, libpython, libc, ...).
_QUERY = """
import json, sys
maps = set()
with open('/proc/self/maps') as f:
    for line in f:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith('/'):
            maps.add(parts[5].rstrip('\\n'))
print(json.dumps({'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix,
                               sys.base_exec_prefix], 'maps': sorted(maps)}))
"""


def interpreter_roots(python: str) -> list[str]:
    """Paths to bind for `python`: its prefixes (as it reports them), the files it maps at
    start-up that lie outside them, and `python` itself if its path lies outside them. Only
    paths outside the system directories, which are bound anyway. Cached per interpreter."""
    with _roots_lock:
        if python not in _roots_cache:
            _roots_cache[python] = _query_roots(python)
        return _roots_cache[python]


def _query_roots(python: str) -> list[str]:
    try:
        out = subprocess.run(
            [python, "-I", "-c", _QUERY],
            capture_output=True,
            text=True,
            timeout=QUERY_TIMEOUT_S,
            check=True,
        ).stdout
        found = json.loads(out)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"cannot ask python={python!r} for its prefixes: {exc}") from exc
    dirs = set()
    for p in found["prefixes"]:
        dirs.update({os.path.abspath(p), os.path.realpath(p)})
    keep: list[str] = []
    covered = [d for d in SYSTEM_DIRS if os.path.exists(d)]
    for p in sorted(dirs, key=len):
        if p != "/" and os.path.isdir(p) and not any(_under(p, c) for c in covered + keep):
            keep.append(p)
    # Single files: the libraries it loaded from elsewhere, and the path it is run by (a
    # symlink in ~/.local/bin, say: bound as a file, so its directory stays hidden).
    for path in [*found["maps"], os.path.abspath(python)]:
        if os.path.isfile(path) and not any(_under(path, c) for c in covered + keep):
            keep.append(path)
    return keep


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def layout(python: str, disk_mb: int) -> list[dict]:
    """The filesystem view of an isolated sandbox, as ops both bwrap and _stage.py apply."""
    ops: list[dict] = []
    made = {"/"}

    def parents(path: str) -> None:
        parent = os.path.dirname(path)
        if parent not in made:
            parents(parent)
            ops.append({"op": "dir", "dest": parent})
            made.add(parent)

    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            ops.append({"op": "symlink", "target": os.readlink(d), "dest": d})
        elif os.path.isdir(d):
            ops.append({"op": "ro-bind", "src": d, "dest": d})
        made.add(d)
    ops.append({"op": "proc", "dest": "/proc"})
    ops.append({"op": "dev", "dest": "/dev"})
    size, inodes = disk_mb * 2**20, tmpfs_inodes(disk_mb)
    for dest in ("/dev/shm", "/tmp"):
        ops.append({"op": "tmpfs", "dest": dest, "mode": 0o1777, "size": size, "inodes": inodes})
    made.update({"/proc", "/dev", "/dev/shm", "/tmp"})
    # Interpreter roots go last: a venv under /tmp (a CI checkout, say) is bound on top of
    # the private /tmp instead of being hidden by it.
    for root in interpreter_roots(python):
        parents(root)
        ops.append({"op": "ro-bind", "src": root, "dest": root})
        made.add(root)
    return ops


def _bwrap_args(ops: list[dict]) -> list[str]:
    """bwrap's own options for the layout. Its --tmpfs takes a size but no inode limit: our
    init mounts a limited tmpfs over each (it keeps CAP_SYS_ADMIN for that, and drops it
    before the code runs)."""
    args: list[str] = []
    for op in ops:
        kind, dest = op["op"], op["dest"]
        if kind == "dir":
            args += ["--perms", "0755", "--dir", dest]
        elif kind == "symlink":
            args += ["--symlink", op["target"], dest]
        elif kind == "ro-bind":
            args += ["--ro-bind", op["src"], dest]
        elif kind == "proc":
            args += ["--proc", dest]
        elif kind == "dev":
            args += ["--dev", dest]
        elif kind == "tmpfs":
            args += ["--perms", f"{op['mode']:o}", "--size", str(op["size"]), "--tmpfs", dest]
    return args


# ------------------------------------------------------------------------- wrappers


def command(mode: str, stage: list[str], ops: list[dict]) -> list[str]:
    """The wrapper command line that starts our init (`stage`) isolated as `mode`."""
    if mode == "none":
        return stage
    root = os.geteuid() == 0
    if mode == "bwrap":
        cmd = [shutil.which("bwrap", path=WRAPPER_PATH) or "bwrap", "--die-with-parent"]
        cmd += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        # Our init is pid 1, as with unshare: the code cannot SIGKILL it (even as the same
        # uid, for a non-root caller), and its exit ends every process of the namespace.
        cmd += ["--as-pid-1"]
        cmd += ["--unshare-cgroup-try", "--hostname", "sandbox"]
        if root:
            # bwrap run by real root keeps every capability unless told otherwise; keep
            # only what _stage.py needs to mount the tmpfs, set the ipc limits and drop to
            # the per-call uid. It drops them all before the code runs.
            cmd += ["--cap-drop", "ALL"]
        else:
            cmd += ["--unshare-user"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_SYS_ADMIN"):
            cmd += ["--cap-add", cap]
        cmd += _bwrap_args(ops)
        cmd += ["--remount-ro", "/", "--chdir", "/", "--clearenv", "--", *stage]
        return cmd
    cmd = []
    setpriv = shutil.which("setpriv", path=WRAPPER_PATH)
    if setpriv:  # the sandbox dies with its caller
        cmd += [setpriv, "--pdeathsig", "KILL", "--"]
    cmd += [shutil.which("unshare", path=WRAPPER_PATH) or "unshare"]
    cmd += ["--mount", "--net", "--pid", "--ipc", "--uts", "--cgroup", "--fork", "--kill-child"]
    if not root:
        cmd += ["--user", "--map-root-user"]
    return [*cmd, "--", *stage]


# -------------------------------------------------------------------- syscall filter

# Denied with EPERM. Everything else is allowed: the filter removes the kernel surface the
# sandbox has no use for and that bypasses its other limits; it is not an allow-list.
DENIED = (
    # keyrings: the caller's session keyring must stay out of reach (and nothing persists)
    "keyctl", "add_key", "request_key",
    # memory that no rlimit counts: memfd, SysV shm/msg/sem, userfaultfd
    "memfd_create", "memfd_secret", "shmget", "shmat", "shmctl", "shmdt",
    "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl",
    "userfaultfd",
    # kernel attack surface
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "fanotify_init", "name_to_handle_at", "open_by_handle_at",
    "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "lookup_dcookie", "vhangup",
    "syslog", "nfsservctl", "uselib",
)  # fmt: skip
CLONE_NAMESPACES = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
AF_UNIX = 1

_filter_lock = threading.Lock()
_filter: tuple[bytes | None, str | None] | None = None


def _libseccomp():
    try:
        import seccomp  # libseccomp's own binding (Debian python3-seccomp)
    except ImportError:
        try:
            import pyseccomp as seccomp  # the same API over ctypes, from PyPI
        except (ImportError, RuntimeError) as exc:
            raise OSError(
                f"no libseccomp binding ({exc}); pip install pyseccomp "
                "(needs libseccomp2: apt-get install libseccomp2)"
            ) from None
    return seccomp


def seccomp_program() -> tuple[bytes | None, str | None]:
    """(the filter as BPF bytes, None) or (None, why it cannot be built). Cached."""
    global _filter
    with _filter_lock:
        if _filter is None:
            try:
                _filter = (_compile_filter(), None)
            except (OSError, RuntimeError, ValueError) as exc:
                _filter = (None, f"seccomp filter unavailable: {exc}")
        return _filter


def _compile_filter() -> bytes:
    sc = _libseccomp()
    eperm = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)  # unknown architectures (int 0x80, say) are killed
    if f.exist_arch(sc.Arch.X86_64) and not _has_arch(f, sc.Arch.X32):
        f.add_arch(sc.Arch.X32)  # x32 syscalls get the same rules, not a way around them
    for name in sorted(set(DENIED)):
        try:
            f.add_rule(eperm, name)
        except (OSError, RuntimeError, ValueError):
            continue  # not a syscall of this architecture or libseccomp version
    # clone3 takes its flags in memory, out of the filter's reach: ENOSYS makes libc fall
    # back to clone(2), whose flags the filter can see.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NAMESPACES:
        f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        f.add_rule(eperm, "unshare", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for call in ("socket", "socketpair"):
        f.add_rule(eperm, call, sc.Arg(0, sc.NE, AF_UNIX))
    with tempfile.TemporaryFile() as out:
        f.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:
        raise ValueError(f"libseccomp exported {len(program)} bytes of BPF")
    return program


def _has_arch(f, arch) -> bool:
    try:
        return bool(f.exist_arch(arch))
    except (OSError, RuntimeError, ValueError):
        return False
