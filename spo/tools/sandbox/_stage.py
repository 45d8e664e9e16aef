"""In-sandbox init: builds the filesystem view, then runs the user's code as a child.

This file is not imported by the trainer: `spo.tools.sandbox` reads its source and runs it as
`python -I -S -c <source>` inside the isolation wrapper (`unshare` or `bwrap`) or, in
"none" mode, directly. It reads one JSON config from stdin and uses the standard library
only (no site-packages: it runs before the filesystem is restricted and must not execute
any .pth file).

Steps, as the init (pid 1 of the new pid namespace, root of the new mount namespace):
1. join the call's cgroups (write "0" to the `cgroup.procs` files the caller opened), so
   everything forked from here on is charged to the call.
2. set small System V IPC limits in the new ipc namespace; namespaces mode: mount a tmpfs
   on the host temp dir given as `newroot`, build the allow-listed tree there (read-only
   binds, symlinks, /dev nodes, /proc, size- and inode-limited tmpfs), `pivot_root` into
   it, detach the old root and remount / read-only. (bubblewrap builds the same tree
   itself from the same layout; we then put inode-limited tmpfs over its /tmp and
   /dev/shm, in a mount namespace of our own: bwrap cannot limit their inodes.)
3. write the code to <cwd>/main.py (if it does not fit, that is the code's result, not a
   sandbox failure) and fork. The child sets the rlimits and oom_score_adj, leaves stdin
   at /dev/null, joins a fresh empty session keyring, drops every capability (bounding set,
   securebits, and a setuid to a per-call unprivileged uid when the real uid is root), sets
   no_new_privs, installs the seccomp filter and execs Python. Once the exec has happened
   (a close-on-exec pipe closes), report {"started": true} on `status_fd`: the caller
   starts the code's clock then. Setup and exec failures are reported there too, as
   "setup_error" / "exec_error", so the caller can tell a broken sandbox from failing code.
4. reap children until the main one exits, write its status as one JSON line to
   `status_fd`, exit. Exiting as pid 1 makes the kernel SIGKILL everything left in the
   namespace: background processes never outlive the call.
"""

import contextlib
import ctypes
import errno
import json
import os
import platform
import resource
import signal
import sys

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000

# statvfs f_flag bits -> mount flags: a read-only remount of a bind must keep them, or a
# user namespace refuses it (they are "locked" by the owner of the original mount).
ST_TO_MS = ((1, MS_RDONLY), (2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC),
            (1024, MS_NOATIME), (2048, MS_NODIRATIME), (4096, MS_RELATIME))  # fmt: skip

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# NOROOT (+locked): uid 0 gains no capabilities on execve; NO_CAP_AMBIENT_RAISE (+locked).
SECUREBITS = (1 << 0) | (1 << 1) | (1 << 6) | (1 << 7)
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "ppc64le": 271, "s390x": 280, "riscv64": 219}
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
DEV_NODES = ("null", "zero", "full", "random", "urandom")

libc = ctypes.CDLL(None, use_errno=True)


def _b(s):
    return None if s is None else os.fsencode(s)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src, target, fstype, flags, data=None):
    ret = libc.mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(ret, f"mount {target}")


def mount_flags(path):
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in ST_TO_MS if f & st)


def make_target(path, like_dir):
    if like_dir:
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def build_root(newroot, layout):
    """Build the allow-listed tree under `newroot` from the layout ops, then enter it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", newroot, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")
    for op in layout:
        kind, dest = op["op"], newroot + op["dest"]
        if kind == "dir":
            os.makedirs(dest, mode=0o755, exist_ok=True)
        elif kind == "symlink":
            os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
            os.symlink(op["target"], dest)
        elif kind == "ro-bind":
            bind_ro(op["src"], dest)
        elif kind == "dev":
            make_dev(dest, {name: f"/dev/{name}" for name in DEV_NODES})
        elif kind == "tmpfs":
            mount_tmpfs(op, dest)
        elif kind == "proc":
            os.makedirs(dest, mode=0o755, exist_ok=True)
            mount("proc", dest, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        else:
            raise ValueError(f"unknown layout op {kind!r}")
    seal_dev(newroot, layout)
    mask_keys(newroot)
    _check(libc.sethostname(b"sandbox", 7), "sethostname")
    os.chdir(newroot)
    nr = SYS_PIVOT_ROOT.get(platform.machine())
    if nr is None:
        raise OSError(f"pivot_root: unsupported architecture {platform.machine()}")
    # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves
    # only the new tree, with no directory through which the host could be reached.
    _check(libc.syscall(nr, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags("/"))


def mount_tmpfs(op, dest):
    """A size- and inode-limited tmpfs at `dest`."""
    data = f"mode={op['mode']:o},size={op['size']},nr_inodes={op['inodes']}"
    os.makedirs(dest, mode=0o755, exist_ok=True)
    mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NODEV, data)


def make_dev(dest, sources):
    """A minimal /dev: a tiny tmpfs with the harmless character devices bound from
    `sources` (name -> path) and the fd links."""
    os.makedirs(dest, mode=0o755, exist_ok=True)
    mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64")
    for name, src in sources.items():
        make_target(f"{dest}/{name}", False)
        mount(src, f"{dest}/{name}", None, MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dest}/{name}")


def bind_ro(src, dest):
    make_target(dest, os.path.isdir(src))
    mount(src, dest, None, MS_BIND)
    flags = mount_flags(dest) | MS_RDONLY | MS_NOSUID | MS_NODEV
    mount(None, dest, None, MS_REMOUNT | MS_BIND | flags)


def limit_bwrap_tmpfs(layout):
    """bwrap's tmpfs mounts take no inode limit (and its /dev none at all, writable by a
    non-root caller's uid), and a non-root caller's bwrap leaves them owned by a user
    namespace we hold no capability in. So: a mount namespace of our own (CAP_SYS_ADMIN in
    ours is enough), our /dev and limited tmpfs over bwrap's, and what bwrap bound below
    them (device nodes, a venv under /tmp) carried over through O_PATH fds."""
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for op in layout:
        if op["op"] == "dev":
            held = {name: os.open(f"/dev/{name}", os.O_PATH) for name in DEV_NODES}
            make_dev(op["dest"], {name: f"/proc/self/fd/{fd}" for name, fd in held.items()})
            for fd in held.values():
                os.close(fd)
        elif op["op"] == "tmpfs":
            top = op["dest"]
            inner = [
                o["dest"]
                for o in layout
                if o["op"] == "ro-bind" and o["dest"].startswith(top + "/")
            ]
            held = [(dest, os.open(dest, os.O_PATH)) for dest in inner]
            mount_tmpfs(op, top)
            for dest, fd in held:
                bind_ro(f"/proc/self/fd/{fd}", dest)
                os.close(fd)
    seal_dev("", layout)
    mask_keys("")


def mask_keys(root):
    """/proc/keys lists every key the uid may view (a non-root caller's own keys, by
    description): cover it, and /proc/key-users, with an empty read-only file."""
    for name in ("keys", "key-users"):
        path = f"{root}/proc/{name}"
        if os.path.exists(path):
            mount(f"{root}/dev/null", path, None, MS_BIND)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags(path))


def seal_dev(root, layout):
    """/dev read-only once /dev/shm is mounted in it: nothing more to write there."""
    for op in layout:
        if op["op"] == "dev":
            dest = root + op["dest"]
            mount(None, dest, None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags(dest))


def set_ipc_limits(sysctls):
    """Small System V IPC limits; they are per ipc namespace, and this one is ours. Where
    /proc/sys is mounted read-only (some bwrap versions), make it writable for the moment:
    we still hold CAP_SYS_ADMIN there (a non-root caller's bwrap keeps the defaults)."""
    if not sysctls:
        return
    flags = mount_flags("/proc/sys")
    remounted = False
    if flags & MS_RDONLY:
        try:
            mount(None, "/proc/sys", None, MS_REMOUNT | MS_BIND | (flags & ~MS_RDONLY))
            remounted = True
        except OSError:
            return
    try:
        for name, value in sysctls.items():
            with contextlib.suppress(PermissionError), open(f"/proc/sys/kernel/{name}", "w") as f:
                f.write(str(value))
    finally:
        if remounted:
            mount(None, "/proc/sys", None, MS_REMOUNT | MS_BIND | flags)


def prctl(option, arg=0, arg3=0):
    ret = libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_void_p(arg3), 0, 0)
    _check(ret, f"prctl({option})")


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(bpf_hex):
    """Load the caller's compiled filter (classic BPF, 8 bytes per instruction)."""
    program = bytes.fromhex(bpf_hex)
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buf))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def fresh_session_keyring():
    """Leave the caller's session keyring: a new, empty, anonymous one (keyctl(2))."""
    nr = SYS_KEYCTL.get(platform.machine())
    if nr is None:
        raise OSError(f"keyctl: unsupported architecture {platform.machine()}")
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None)
    if ret < 0:
        err = ctypes.get_errno()
        if err != errno.ENOSYS:  # a kernel without keyrings has none to leave
            raise OSError(err, f"keyctl(JOIN_SESSION_KEYRING): {os.strerror(err)}")


def drop_privileges(uid):
    """No capabilities after execve: drop the bounding set, then setuid or NOROOT."""
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):  # we hold CAP_SETPCAP here (bwrap: --cap-add)
        prctl(PR_CAPBSET_DROP, cap)
    if os.getuid() == 0:
        if uid is not None:
            # A real-root caller: become an unprivileged uid of our own, which also makes
            # RLIMIT_NPROC bind (the kernel never applies it to uid 0 or to CAP_SYS_ADMIN).
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        else:
            # uid 0 of a user namespace (an unprivileged caller): keep the uid, lose the
            # capabilities on execve.
            prctl(PR_SET_SECUREBITS, SECUREBITS)
    clear_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def clear_capabilities():
    """Empty the effective, permitted and inheritable sets (bwrap --cap-add leaves the
    added capabilities inheritable across the setuid)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
    data = (ctypes.c_uint32 * 6)()
    _check(libc.capset(header, data), "capset")


def run_child(cfg, main_py, status_fd):
    try:
        # Closed by a successful execve; still open to report a failed one.
        os.set_inheritable(status_fd, False)
        fd = os.open("/dev/null", os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
        for name, (soft, hard) in cfg["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (soft, hard))
        with open("/proc/self/oom_score_adj", "w") as f:  # the OOM killer's first choice
            f.write(str(cfg["oom_score_adj"]))
        if cfg["mode"] != "none":
            drop_privileges(cfg["uid"])
        else:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        fresh_session_keyring()
        if cfg["seccomp_bpf"]:
            install_seccomp(cfg["seccomp_bpf"])  # last: it denies keyctl and prctl stays
        argv = [cfg["python"], *cfg["python_args"], main_py]
        os.execve(cfg["python"], argv, cfg["env"])
    except BaseException as exc:
        msg = f"cannot start {cfg['python']}: {exc!r}"
        os.write(status_fd, (json.dumps({"exec_error": msg}) + "\n").encode())
    finally:
        os._exit(127)


def write_code(cfg, main_py):
    """Write the code; True if it fit. Lone surrogates become backslash escapes (inside a
    string literal they mean the same character). Code larger than the disk is the code's
    result: a message on stderr and exit status 1, like any other failed write."""
    try:
        with open(main_py, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(cfg["code"])
        os.chmod(main_py, 0o644)
        return True
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        with contextlib.suppress(OSError):
            os.unlink(main_py)
        size = len(cfg["code"].encode("utf-8", errors="backslashreplace"))
        msg = f"OSError: [Errno {exc.errno}] {os.strerror(exc.errno)}: the code ({size} bytes) "
        msg += f"does not fit in {main_py}\n"
        os.write(2, msg.encode())
        return False


def main():
    cfg = json.loads(sys.stdin.buffer.read())
    status_fd = cfg["status_fd"]
    for fd in cfg["cgroup_fds"]:
        os.write(fd, b"0")  # this process, and so everything it forks
        os.close(fd)
    if cfg["mode"] == "none":
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # Orphans (double fork + setsid, which escapes the caller's process-group kill)
        # are re-parented to us rather than to the host's init, so we can kill them.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        set_ipc_limits(cfg["ipc_sysctls"])
        if cfg["mode"] == "namespaces":
            os.umask(0o022)
            build_root(cfg["newroot"], cfg["layout"])
        elif cfg["mode"] == "bwrap":
            os.umask(0o022)
            limit_bwrap_tmpfs(cfg["layout"])
        cwd = cfg["cwd"]
        os.chdir(cwd)
        main_py = os.path.join(cwd, "main.py")
        fits = write_code(cfg, main_py)
    except BaseException as exc:
        os.write(status_fd, (json.dumps({"setup_error": repr(exc)}) + "\n").encode())
        os._exit(125)
    if not fits:
        report = {"started": True, "exit_code": 1, "cpu_s": 0.0, "max_rss_kb": 0}
        os.write(status_fd, (json.dumps(report) + "\n").encode())
        os._exit(0)
    exec_r, exec_w = os.pipe()  # close-on-exec: EOF once the code's interpreter is exec'd
    pid = os.fork()
    if pid == 0:
        os.close(exec_r)
        run_child(cfg, main_py, status_fd)
    os.close(exec_w)
    os.read(exec_r, 1)
    os.close(exec_r)
    os.write(status_fd, b'{"started": true}\n')
    while True:
        try:
            got, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            os._exit(125)
        if got == pid:
            break
    report = {
        "exit_code": os.waitstatus_to_exitcode(status),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "max_rss_kb": usage.ru_maxrss,
    }
    os.write(status_fd, (json.dumps(report) + "\n").encode())
    if cfg["mode"] == "none":
        kill_descendants()
    os._exit(0)


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) "
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def kill_descendants():
    """In "none" mode, SIGKILL our children until none is left (as subreaper, their orphans
    come back to us). Not airtight: a process that kills us first escapes."""
    for _ in range(1000):
        kids = children_of(os.getpid())
        if not kids:
            return
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        for kid in kids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(kid, 0)


if __name__ == "__main__":
    main()
