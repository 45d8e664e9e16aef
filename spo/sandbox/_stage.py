"""In-sandbox init: builds the filesystem view, then runs the user's code as a child.

This file is not imported by the trainer: `spo.sandbox` reads its source and runs it as
`python -I -S -c <source>` inside the isolation wrapper (`unshare` or `bwrap`) or, in
"none" mode, directly. It reads one JSON config from stdin and uses the standard library
only (no site-packages: it runs before the filesystem is restricted and must not execute
any .pth file).

Steps, as the init (pid 1 of the new pid namespace, root of the new mount namespace):
1. namespaces mode only: mount a tmpfs on the host temp dir given as `newroot`, build the
   allow-listed tree there (read-only binds, symlinks, /dev nodes, /proc, a size-limited
   tmpfs /tmp), `pivot_root` into it, detach the old root and remount / read-only.
   (bubblewrap builds the same tree itself from the same layout.)
2. write the code to <cwd>/main.py, report {"started": true} on `status_fd` and fork
   (setup and exec failures are reported there too, as "setup_error" / "exec_error",
   so the caller can tell a broken sandbox from failing code). The child sets the
   rlimits, leaves stdin at /dev/null, drops every capability (bounding set, securebits,
   and a setuid to a per-call unprivileged uid when the real uid is root), sets
   no_new_privs and execs Python.
3. reap children until the main one exits, write its status as one JSON line to
   `status_fd`, exit. Exiting as pid 1 makes the kernel SIGKILL everything left in the
   namespace: background processes never outlive the call.
"""

import contextlib
import ctypes
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
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217, "riscv64": 41}

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
    mount("tmpfs", newroot, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for op in layout:
        kind, dest = op["op"], newroot + op["dest"]
        if kind == "dir":
            os.makedirs(dest, mode=0o755, exist_ok=True)
        elif kind == "symlink":
            os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
            os.symlink(op["target"], dest)
        elif kind == "ro-bind":
            src = op["src"]
            make_target(dest, os.path.isdir(src))
            mount(src, dest, None, MS_BIND)
            flags = mount_flags(dest) | MS_RDONLY | MS_NOSUID | MS_NODEV
            mount(None, dest, None, MS_REMOUNT | MS_BIND | flags)
        elif kind == "dev":
            # A minimal /dev: the harmless character devices bound from the host.
            os.makedirs(dest, mode=0o755, exist_ok=True)
            mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
            for name in ("null", "zero", "full", "random", "urandom"):
                make_target(f"{dest}/{name}", False)
                mount(f"/dev/{name}", f"{dest}/{name}", None, MS_BIND)
            for name, target in (
                ("fd", "/proc/self/fd"),
                ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"),
            ):
                os.symlink(target, f"{dest}/{name}")
        elif kind == "tmpfs":
            os.makedirs(dest, mode=0o755, exist_ok=True)
            data = f"mode={op['mode']:o},size={op['size']}"
            mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NODEV, data)
        elif kind == "proc":
            os.makedirs(dest, mode=0o755, exist_ok=True)
            mount("proc", dest, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        else:
            raise ValueError(f"unknown layout op {kind!r}")
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


def prctl(option, arg=0):
    _check(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def drop_privileges(uid):
    """No capabilities after execve: drop the bounding set, then setuid or NOROOT."""
    if os.getuid() == 0:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        for cap in range(last + 1):
            prctl(PR_CAPBSET_DROP, cap)
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
        if cfg["mode"] != "none":
            drop_privileges(cfg["uid"])
        else:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        argv = [cfg["python"], *cfg["python_args"], main_py]
        os.execve(cfg["python"], argv, cfg["env"])
    except BaseException as exc:
        msg = f"cannot start {cfg['python']}: {exc!r}"
        os.write(status_fd, (json.dumps({"exec_error": msg}) + "\n").encode())
    finally:
        os._exit(127)


def main():
    cfg = json.loads(sys.stdin.buffer.read())
    status_fd = cfg["status_fd"]
    if cfg["mode"] == "none":
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # Orphans (double fork + setsid, which escapes the caller's process-group kill)
        # are re-parented to us rather than to the host's init, so we can kill them.
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        if cfg["mode"] == "namespaces":
            os.umask(0o022)
            build_root(cfg["newroot"], cfg["layout"])
        cwd = cfg["cwd"]
        os.chdir(cwd)
        main_py = os.path.join(cwd, "main.py")
        with open(main_py, "w", encoding="utf-8") as f:
            f.write(cfg["code"])
        os.chmod(main_py, 0o644)
    except BaseException as exc:
        os.write(status_fd, (json.dumps({"setup_error": repr(exc)}) + "\n").encode())
        os._exit(125)
    os.write(status_fd, b'{"started": true}\n')
    pid = os.fork()
    if pid == 0:
        run_child(cfg, main_py, status_fd)
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
