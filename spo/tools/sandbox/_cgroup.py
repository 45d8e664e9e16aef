"""A memory and pids cgroup per sandbox call, when this process may make one.

RLIMIT_AS bounds each process's address space, but not the memory a sandbox holds in
total (several processes, tmpfs pages, pipe buffers, kernel objects such as inodes). A
cgroup does: `memory.max` (v2) or `memory.limit_in_bytes` (v1) caps everything charged to
the call, and the kernel's OOM killer acts inside the cgroup when it is reached;
`pids.max` caps its tasks even for a root caller.

The cgroup is made under this process's own cgroup (so every limit of the caller still
applies above it), in cgroup v2 when its `memory` and `pids` controllers can be enabled
there (root, or a delegated subtree), else in the v1 `memory` and `pids` hierarchies when
they are mounted and writable. The caller opens each `cgroup.procs` and passes the open
file to the sandbox's init, which writes "0" to it (itself) before it forks the code: the
kernel checks the opener's credentials, so this works from inside any namespace and
without privileges inside. After the call, `finish` waits (bounded) until no process is
left and the call's shared memory (tmpfs) has been freed, reads what the kernel recorded
(peak usage, OOM kills) and removes the cgroup.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import threading
import time
from dataclasses import dataclass

PREFIX = "spo-sandbox-"
# Our init (one Python) and the kernel objects of a call, over the code's own memory.
OVERHEAD_MB = 64
_counter = itertools.count()


def memory_limit_mb(memory_mb: int, disk_mb: int) -> int:
    """The call's cgroup limit: the code's memory, its two tmpfs, and a fixed overhead."""
    return int(memory_mb) + 2 * int(disk_mb) + OVERHEAD_MB


@dataclass(frozen=True)
class Usage:
    """What the kernel recorded for one call's cgroup."""

    peak_mb: float | None  # peak memory charged to the call (None: not recorded)
    oom_kills: int  # processes the OOM killer killed inside it
    released: bool  # no process left and its shared memory freed before `finish` returned


@dataclass(frozen=True)
class _Layout:
    version: int  # 2, or 1 for separate memory and pids hierarchies
    parents: dict[str, str]  # controller ("memory", "pids"; v2: "unified") -> parent dir


class CallCgroup:
    """One call's cgroup: create, hand `fds` to the init, `finish` after the call."""

    def __init__(self, layout: _Layout, memory_bytes: int, pids: int):
        self.version = layout.version
        name = f"{PREFIX}{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"
        self.dirs = {ctl: os.path.join(parent, name) for ctl, parent in layout.parents.items()}
        self.fds: list[int] = []
        try:
            for d in self.dirs.values():
                os.mkdir(d, 0o755)
            if self.version == 2:
                d = self.dirs["unified"]
                _write(d, "memory.max", memory_bytes)
                _write(d, "memory.swap.max", 0, optional=True)
                _write(d, "pids.max", pids)
            else:
                _write(self.dirs["memory"], "memory.limit_in_bytes", memory_bytes)
                _write(self.dirs["memory"], "memory.memsw.limit_in_bytes", memory_bytes, True)
                _write(self.dirs["pids"], "pids.max", pids)
            for d in self.dirs.values():
                self.fds.append(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY))
        except OSError:
            self.close_fds()
            self._remove()
            raise

    @property
    def memory_dir(self) -> str:
        return self.dirs["unified" if self.version == 2 else "memory"]

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []

    def finish(self, wait_s: float) -> Usage:
        """Wait (at most `wait_s`) for the call's processes and shared memory to be gone,
        read what the kernel recorded, remove the cgroup."""
        self.close_fds()
        deadline = time.monotonic() + wait_s
        released = False
        while True:
            released = not self._procs() and self._shmem() == 0
            if released or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        usage = Usage(self._peak_mb(), self._oom_kills(), released)
        self._remove()
        return usage

    def _procs(self) -> bool:
        return any(_read(d, "cgroup.procs").strip() for d in self.dirs.values())

    def _stat(self, name: str, key: str) -> int | None:
        for line in _read(self.memory_dir, name).splitlines():
            k, _, v = line.partition(" ")
            if k == key and v.strip().isdigit():
                return int(v)
        return None

    def _shmem(self) -> int:
        return self._stat("memory.stat", "shmem") or 0

    def _oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return self._stat(name, "oom_kill") or 0

    def _peak_mb(self) -> float | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        value = _read(self.memory_dir, name).strip()
        return int(value) / 2**20 if value.isdigit() else None

    def _remove(self) -> None:
        for d in self.dirs.values():
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the kernel finishes tearing the call down
                    time.sleep(0.01)


def _read(d: str, name: str) -> str:
    try:
        with open(os.path.join(d, name)) as f:
            return f.read()
    except OSError:
        return ""


def _write(d: str, name: str, value: int, optional: bool = False) -> None:
    try:
        with open(os.path.join(d, name), "w") as f:
            f.write(str(value))
    except OSError:
        if not optional:
            raise


# ------------------------------------------------------------------------- discovery

_lock = threading.Lock()
_found: tuple[_Layout | None, str | None] | None = None


def create(memory_bytes: int, pids: int) -> CallCgroup | None:
    """A fresh cgroup for one call, or None when this process cannot make one here."""
    layout, _ = _discover()
    if layout is None:
        return None
    try:
        return CallCgroup(layout, memory_bytes, pids)
    except OSError:
        return None


def unavailable() -> str | None:
    """None when each call gets a cgroup here, else why not (cached per process)."""
    return _discover()[1]


def leftovers() -> list[str]:
    """Cgroups this process made and did not remove (a test's check)."""
    layout, _ = _discover()
    if layout is None:
        return []
    mine = f"{PREFIX}{os.getpid()}-"
    return [
        os.path.join(parent, entry)
        for parent in layout.parents.values()
        for entry in os.listdir(parent)
        if entry.startswith(mine)
    ]


def _discover() -> tuple[_Layout | None, str | None]:
    global _found
    with _lock:
        if _found is None:
            _found = _find_layout()
            if _found[0] is not None:
                _remove_stale(_found[0])
        return _found


def _find_layout() -> tuple[_Layout | None, str | None]:
    try:
        with open("/proc/self/cgroup") as f:
            own = [line.rstrip("\n").split(":", 2) for line in f]
        with open("/proc/self/mountinfo") as f:
            mounts = [_mount(line) for line in f]
    except OSError as exc:
        return None, f"cannot read /proc/self/cgroup: {exc}"
    why = []
    v2 = _parent_v2(own, mounts, why)
    if v2 is not None:
        return _usable(_Layout(2, {"unified": v2}), why)
    v1 = {ctl: _parent_v1(ctl, own, mounts) for ctl in ("memory", "pids")}
    if all(v1.values()):
        return _usable(_Layout(1, v1), why)  # type: ignore[arg-type]
    why.append("no cgroup v1 memory and pids hierarchies mounted")
    return None, "; ".join(why)


def _mount(line: str) -> tuple[str, str, str, str]:
    """(root, mount point, fs type, super options) of one /proc/self/mountinfo line."""
    left, _, right = line.partition(" - ")
    fields, rfields = left.split(), right.split()
    return fields[3], fields[4], rfields[0], rfields[2] if len(rfields) > 2 else ""


def _join(mount_root: str, mount_point: str, path: str) -> str | None:
    if mount_root != "/" and not (path + "/").startswith(mount_root.rstrip("/") + "/"):
        return None
    rel = path[len(mount_root) :] if mount_root != "/" else path
    return os.path.join(mount_point, rel.lstrip("/"))


def _parent_v2(own, mounts, why: list[str]) -> str | None:
    path = next((p for h, c, p in own if h == "0" and c == ""), None)
    mount = next((m for m in mounts if m[2] == "cgroup2"), None)
    if path is None or mount is None:
        why.append("no cgroup v2")
        return None
    parent = _join(mount[0], mount[1], path)
    if parent is None:
        return None
    controllers = _read(parent, "cgroup.controllers").split()
    if not {"memory", "pids"} <= set(controllers):
        why.append(f"cgroup v2 at {parent} lacks the memory/pids controllers")
        return None
    enabled = set(_read(parent, "cgroup.subtree_control").split())
    if not {"memory", "pids"} <= enabled:
        try:
            _write(parent, "cgroup.subtree_control", "+memory +pids")  # type: ignore[arg-type]
        except OSError as exc:
            why.append(f"cannot enable memory/pids below {parent}: {exc.strerror}")
            return None
    return parent


def _parent_v1(controller: str, own, mounts) -> str | None:
    path = next((p for h, c, p in own if controller in c.split(",")), None)
    for root, point, fstype, opts in mounts:
        if fstype == "cgroup" and controller in opts.split(",") and path is not None:
            return _join(root, point, path)
    return None


def _usable(layout: _Layout, why: list[str]) -> tuple[_Layout | None, str | None]:
    try:
        CallCgroup(layout, 64 * 2**20, 8).finish(0.0)
    except OSError as exc:
        why.append(f"cannot make a cgroup in {sorted(layout.parents.values())}: {exc}")
        return None, "; ".join(why)
    return layout, None


def _remove_stale(layout: _Layout) -> None:
    """Remove empty call cgroups left by processes that died mid-call."""
    for parent in layout.parents.values():
        with contextlib.suppress(OSError):
            for entry in os.listdir(parent):
                if not entry.startswith(PREFIX):
                    continue
                pid = entry[len(PREFIX) :].split("-", 1)[0]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    with contextlib.suppress(OSError):
                        os.rmdir(os.path.join(parent, entry))
