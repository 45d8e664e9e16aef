"""Python sandbox for model-written code: one isolated, resource-limited process per call.

`run_python(code)` runs `code` as a script in a fresh interpreter and returns a
`SandboxResult` (captured output, exit code, why it was stopped). It never raises because
of what the code does — loops, bombs, crashes and attacks are all *results* — only when
the sandbox itself cannot be set up (`SandboxError`, one line saying what to install or how
to opt out).

Isolation levels (docs/sandbox.md has the threat model and what was measured):

- "bwrap": bubblewrap builds the filesystem view; new pid, network, ipc, uts and cgroup
  namespaces.
- "namespaces": the same view and namespaces built with util-linux `unshare` and a
  small init of ours (`_stage.py`: bind mounts and `pivot_root` through ctypes), for
  machines without bubblewrap.
- "none": a plain child process with rlimits and a process-group kill. Code runs as the
  caller, can read and write everything the caller can and use the network. Refused
  unless `allow_unsafe=True`.
- "auto" (default): "bwrap" if it works here, else "namespaces", else SandboxError
  (or "none" with a warning when `allow_unsafe=True`). Availability is probed once per
  process by running a trivial script.

In both isolated levels the code sees an allow-list: /usr, /etc, /bin, /lib* and the
interpreter's prefixes, read-only; a fresh /proc (its own pid namespace, so no other
process is visible); a minimal /dev; and a writable, size-limited tmpfs at /tmp that is
its working directory and disappears with the call. The network namespace has only a
downed loopback. The code runs with no capabilities and no_new_privs; when the caller is
root it also runs under a fresh unprivileged uid of its own (random, per call), which is
what makes RLIMIT_NPROC bind — the kernel never applies that limit to uid 0. When the
main process exits, the init of the pid namespace exits and the kernel kills everything
left, so no process outlives a call; if the caller dies, the sandbox is killed with it
(bwrap --die-with-parent, or setpriv --pdeathsig + unshare --kill-child).

Limits (all modes): wall clock `timeout_s` (then the whole process group is killed),
RLIMIT_CPU `cpu_s` per process, RLIMIT_AS `memory_mb` per process, RLIMIT_NPROC
`max_processes` (binds when the code does not run as real root, i.e. in the isolated
modes or for a non-root caller), RLIMIT_FSIZE and the /tmp size `disk_mb`, RLIMIT_NOFILE
256, no core dumps. Output is read as it arrives and never buffered beyond about
1.5 x `output_limit` bytes per stream: the head and the tail are kept, the middle is
replaced by a marker line; a process that keeps printing past 64 x `output_limit` bytes is
killed (`killed_reason="output"`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ISOLATION_LEVELS",
    "Isolation",
    "SandboxError",
    "SandboxResult",
    "available_isolation",
    "resolve_isolation",
    "run_python",
]

Isolation = Literal["auto", "bwrap", "namespaces", "none"]
ISOLATION_LEVELS = ("auto", "bwrap", "namespaces", "none")

_STAGE_SOURCE = (pathlib.Path(__file__).parent / "_stage.py").read_text(encoding="utf-8")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_WRAPPER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_OUTPUT_KILL_FACTOR = 64  # kill a process once it has printed this many x output_limit
_EXIT_GRACE_S = 1.0  # after the main process exits, how long to wait for its pipes to close
_PROBE_TIMEOUT_S = 60.0  # generous: a busy 2-core machine can take seconds to start Python
_SANDBOX_UID_RANGE = (1 << 30, (1 << 31) - (1 << 16))  # far above any real account
_NOFILE = 256
_CODE_NAME = "main.py"


class SandboxError(RuntimeError):
    """The sandbox cannot run here (missing isolation, bad arguments) — not a code failure."""


@dataclass(frozen=True)
class SandboxResult:
    """What one `run_python` call did.

    stdout, stderr: decoded output (UTF-8, invalid bytes replaced); when longer than
        `output_limit` bytes, the head and tail around a "[... N bytes omitted ...]" line.
    exit_code: the script's exit status; -N when a signal N killed it; None when the sandbox
        killed it (timeout, output flood) before it exited.
    timed_out: it ran out of time: wall clock (`killed_reason="timeout"`) or CPU ("cpu").
    killed_reason: None for a normal exit (zero or not), else why it stopped: "timeout",
        "cpu", "output", "memory" (a MemoryError ended it), "signal" (another signal, e.g.
        SIGSEGV or the kernel's OOM killer).
    truncated: stdout or stderr was cut to `output_limit`.
    duration_s: wall-clock seconds of the whole call, sandbox start-up included.
    isolation: the level that ran it: "bwrap", "namespaces" or "none".
    cpu_s: CPU seconds of the script and the children it waited for (None if unknown).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    killed_reason: str | None
    truncated: bool
    duration_s: float
    isolation: str
    cpu_s: float | None = None

    @property
    def ok(self) -> bool:
        """The script ran to completion and exited with status 0."""
        return self.exit_code == 0 and self.killed_reason is None


def run_python(
    code: str,
    *,
    timeout_s: float = 5.0,
    cpu_s: float = 5.0,
    memory_mb: int = 512,
    output_limit: int = 8192,
    isolation: Isolation = "auto",
    allow_unsafe: bool = False,
    max_processes: int = 16,
    disk_mb: int = 64,
    python: str | None = None,
) -> SandboxResult:
    """Run `code` as a Python script in a fresh sandboxed interpreter and report what happened.

    The script is /tmp/main.py in its own tmpfs (isolated levels) or in a fresh temp dir
    ("none"), its working directory; stdin is empty; it runs with `python -I -B -u` (no user
    site, no PYTHON* variables, unbuffered, so output printed before a kill is kept) of
    `python` (default: this interpreter; its site-packages, e.g. numpy, are importable).
    Raises SandboxError only when the requested isolation is unavailable or arguments are
    invalid; everything the code does is reported in the result.
    """
    _check_args(timeout_s, cpu_s, memory_mb, output_limit, max_processes, disk_mb)
    if not isinstance(code, str):
        raise SandboxError(f"code must be a str, got {type(code).__name__}")
    python = _find_python(python)
    mode = resolve_isolation(isolation, allow_unsafe, python)
    limits = _Limits(timeout_s, cpu_s, memory_mb, output_limit, max_processes, disk_mb)
    return _execute(mode, code, limits, python)


def resolve_isolation(
    isolation: Isolation = "auto", allow_unsafe: bool = False, python: str | None = None
) -> str:
    """The level `run_python` would use ("bwrap", "namespaces" or "none"), or SandboxError.

    Call it once at start-up to fail early (before a long run) rather than at the first
    tool call.
    """
    return _resolve_isolation(isolation, allow_unsafe, _find_python(python))


def available_isolation(python: str | None = None) -> dict[str, str | None]:
    """Which isolated levels work here: {"bwrap": None or why not, "namespaces": ...}."""
    python = _find_python(python)
    return {mode: _probe(mode, python) for mode in ("bwrap", "namespaces")}


# --------------------------------------------------------------------------- internals


def _find_python(python: str | None) -> str:
    if not python:
        return sys.executable
    found = python if os.path.isabs(python) else shutil.which(python)
    if found is None or not os.access(found, os.X_OK):
        raise SandboxError(f"python={python!r} is not an executable file")
    return os.path.abspath(found)


@dataclass(frozen=True)
class _Limits:
    timeout_s: float
    cpu_s: float
    memory_mb: int
    output_limit: int
    max_processes: int
    disk_mb: int


def _check_args(timeout_s, cpu_s, memory_mb, output_limit, max_processes, disk_mb) -> None:
    for name, value, low in (
        ("timeout_s", timeout_s, 0),
        ("cpu_s", cpu_s, 0),
        ("memory_mb", memory_mb, 16),
        ("output_limit", output_limit, 64),
        ("max_processes", max_processes, 1),
        ("disk_mb", disk_mb, 1),
    ):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > low:
            raise SandboxError(f"{name} must be a number > {low}, got {value!r}")


_probe_lock = threading.Lock()
_probe_cache: dict[tuple[str, str], str | None] = {}


def _resolve_isolation(isolation: str, allow_unsafe: bool, python: str) -> str:
    if isolation not in ISOLATION_LEVELS:
        raise SandboxError(f"unknown isolation {isolation!r}; valid: {', '.join(ISOLATION_LEVELS)}")
    if isolation == "none":
        if not allow_unsafe:
            raise SandboxError(
                "isolation='none' runs untrusted code as you, with your files and network; "
                "pass allow_unsafe=True to accept that, or use isolation='auto'"
            )
        return "none"
    if isolation != "auto":
        reason = _probe(isolation, python)
        if reason is not None:
            raise SandboxError(f"isolation={isolation!r} does not work here: {reason}")
        return isolation
    reasons = {}
    for mode in ("bwrap", "namespaces"):
        reasons[mode] = _probe(mode, python)
        if reasons[mode] is None:
            return mode
    why = "; ".join(f"{m}: {r}" for m, r in reasons.items())
    if allow_unsafe:
        warnings.warn(
            f"no sandbox isolation available ({why}); running code UNISOLATED "
            "because allow_unsafe=True",
            RuntimeWarning,
            stacklevel=4,
        )
        return "none"
    raise SandboxError(
        f"no sandbox isolation available ({why}); install bubblewrap "
        "(apt-get install bubblewrap) or allow user namespaces, or pass allow_unsafe=True "
        "to run untrusted code without isolation"
    )


def _probe(mode: str, python: str) -> str | None:
    """None if `mode` runs a trivial script here, else a short reason. Cached per process."""
    key = (mode, python)
    with _probe_lock:
        if key in _probe_cache:
            return _probe_cache[key]
        reason = _probe_uncached(mode, python)
        _probe_cache[key] = reason
        return reason


def _probe_uncached(mode: str, python: str) -> str | None:
    tool = "bwrap" if mode == "bwrap" else "unshare"
    if shutil.which(tool, path=_WRAPPER_ENV["PATH"]) is None:
        package = "bubblewrap" if mode == "bwrap" else "util-linux"
        return f"{tool} not found (apt-get install {package})"
    limits = _Limits(_PROBE_TIMEOUT_S, 10.0, 512, 4096, 8, 1)
    try:
        res = _execute(mode, "print('ok')", limits, python)
    except (OSError, SandboxError) as exc:
        return str(exc)
    if res.ok and res.stdout == "ok\n":
        return None
    detail = (res.stderr.strip().splitlines() or [f"exit code {res.exit_code}"])[-1]
    return f"{tool} failed: {detail}"


_roots_cache: dict[str, list[str]] = {}


def _interpreter_roots(python: str) -> list[str]:
    """Directories the interpreter needs (prefixes, venv), minus those the system binds cover."""
    if python not in _roots_cache:
        if os.path.realpath(python) == os.path.realpath(sys.executable):
            paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
        else:
            query = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, "
            query += "sys.exec_prefix, sys.base_exec_prefix]))"
            try:
                out = subprocess.run(
                    [python, "-I", "-S", "-c", query],
                    capture_output=True,
                    text=True,
                    timeout=_PROBE_TIMEOUT_S,
                    check=True,
                ).stdout
            except (OSError, subprocess.SubprocessError) as exc:
                raise SandboxError(f"cannot run python={python!r}: {exc}") from exc
            paths = json.loads(out)
        exe_dir = os.path.dirname(os.path.abspath(python))
        paths += [
            os.path.dirname(exe_dir),
            os.path.dirname(os.path.dirname(os.path.realpath(python))),
        ]
        candidates = set()
        for p in paths:
            candidates.update({os.path.abspath(p), os.path.realpath(p)})
        covered = [d for d in _SYSTEM_DIRS if os.path.exists(d)]
        keep: list[str] = []
        for p in sorted(candidates, key=len):
            if p == "/" or not os.path.isdir(p):
                continue
            if any(_under(p, c) for c in covered + keep):
                continue
            keep.append(p)
        _roots_cache[python] = keep
    return _roots_cache[python]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _layout(python: str, disk_bytes: int) -> list[dict]:
    """The filesystem view of an isolated sandbox, as ops both bwrap and _stage.py apply."""
    ops: list[dict] = []
    made = {"/"}

    def parents(path: str) -> None:
        parent = os.path.dirname(path)
        if parent not in made:
            parents(parent)
            ops.append({"op": "dir", "dest": parent})
            made.add(parent)

    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            ops.append({"op": "symlink", "target": os.readlink(d), "dest": d})
        elif os.path.isdir(d):
            ops.append({"op": "ro-bind", "src": d, "dest": d})
        made.add(d)
    ops.append({"op": "proc", "dest": "/proc"})
    ops.append({"op": "dev", "dest": "/dev"})
    ops.append({"op": "tmpfs", "dest": "/dev/shm", "mode": 0o1777, "size": disk_bytes})
    ops.append({"op": "tmpfs", "dest": "/tmp", "mode": 0o1777, "size": disk_bytes})
    made.update({"/proc", "/dev", "/dev/shm", "/tmp"})
    # Interpreter roots go last: a venv under /tmp (a CI checkout, say) is bound on top of
    # the private /tmp instead of being hidden by it.
    for root in _interpreter_roots(python):
        parents(root)
        ops.append({"op": "ro-bind", "src": root, "dest": root})
        made.add(root)
    return ops


def _bwrap_args(layout: list[dict]) -> list[str]:
    args: list[str] = []
    for op in layout:
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


def _command(mode: str, python: str, layout: list[dict]) -> list[str]:
    stage = [python, "-I", "-S", "-c", _STAGE_SOURCE]
    if mode == "none":
        return stage
    root = os.geteuid() == 0
    if mode == "bwrap":
        cmd = [shutil.which("bwrap", path=_WRAPPER_ENV["PATH"]) or "bwrap", "--die-with-parent"]
        cmd += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        cmd += ["--unshare-cgroup-try", "--hostname", "sandbox"]
        if root:
            # bwrap run by real root keeps every capability unless told otherwise; keep
            # only what _stage.py needs to drop the bounding set and setuid.
            cmd += ["--cap-drop", "ALL"]
            for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):
                cmd += ["--cap-add", cap]
        else:
            cmd += ["--unshare-user"]
        cmd += _bwrap_args(layout)
        cmd += ["--remount-ro", "/", "--chdir", "/tmp", "--clearenv", "--", *stage]
        return cmd
    cmd = []
    setpriv = shutil.which("setpriv", path=_WRAPPER_ENV["PATH"])
    if setpriv:  # the sandbox dies with its caller
        cmd += [setpriv, "--pdeathsig", "KILL", "--"]
    cmd += [shutil.which("unshare", path=_WRAPPER_ENV["PATH"]) or "unshare"]
    cmd += ["--mount", "--net", "--pid", "--ipc", "--uts", "--cgroup", "--fork", "--kill-child"]
    if not root:
        cmd += ["--user", "--map-root-user"]
    return [*cmd, "--", *stage]


def _user_env(python: str, cwd: str) -> dict[str, str]:
    bin_dir = os.path.dirname(os.path.abspath(python))
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": cwd,
        "TMPDIR": cwd,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": cwd,
    }
    # One thread per numeric library: a 128-core host would otherwise start 128 OpenBLAS
    # threads at `import numpy`, each counted by RLIMIT_NPROC and RLIMIT_AS.
    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ):
        env[var] = "1"
    return env


class _Capped:
    """Head and tail of a byte stream, in bounded memory."""

    def __init__(self, limit: int):
        self.limit = limit
        self.tail_len = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if len(self.head) < self.limit:
            self.head += data[: self.limit - len(self.head)]
        self.tail += data[-self.tail_len :] if self.tail_len else b""
        if len(self.tail) > self.tail_len:
            del self.tail[: len(self.tail) - self.tail_len]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        if not self.truncated:
            return self.head.decode("utf-8", errors="replace")
        keep_head = self.limit - self.tail_len
        omitted = self.total - keep_head - len(self.tail)
        head = self.head[:keep_head].decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        return f"{head}\n[... {omitted} bytes omitted ...]\n{tail}"


def _rlimits(limits: _Limits) -> dict[str, tuple[int, int]]:
    cpu = max(1, math.ceil(limits.cpu_s))
    disk = limits.disk_mb * 2**20
    return {
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        "RLIMIT_AS": (limits.memory_mb * 2**20,) * 2,
        "RLIMIT_FSIZE": (disk, disk),
        "RLIMIT_NOFILE": (_NOFILE, _NOFILE),
        "RLIMIT_NPROC": (limits.max_processes, limits.max_processes),
    }


def _sandbox_uid() -> int | None:
    """A fresh unprivileged uid for a root caller (None: keep the caller's non-root uid)."""
    if os.geteuid() != 0:
        return None
    low, high = _SANDBOX_UID_RANGE
    return low + secrets.randbelow(high - low)


def _exited(pid: int) -> bool:
    """Has `pid` exited? Does not reap it, so its pid (our process group id) stays reserved."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _execute(mode: str, code: str, limits: _Limits, python: str) -> SandboxResult:
    start = time.monotonic()
    isolated = mode != "none"
    workdir = tempfile.mkdtemp(prefix="spo-sandbox-")
    layout = _layout(python, limits.disk_mb * 2**20) if isolated else []
    cwd = "/tmp" if isolated else workdir
    status_r, status_w = os.pipe()
    cfg = {
        "mode": mode,
        "code": code,
        "python": python,
        "python_args": ["-I", "-B", "-u"],
        "env": _user_env(python, cwd),
        "rlimits": _rlimits(limits),
        "uid": _sandbox_uid(),
        "newroot": workdir,
        "layout": layout,
        "cwd": cwd,
        "status_fd": status_w,
    }
    payload = json.dumps(cfg).encode()
    try:
        proc = subprocess.Popen(
            _command(mode, python, layout),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w,),
            start_new_session=True,
            env=_WRAPPER_ENV,
            cwd=workdir,
            bufsize=0,
        )
    except OSError:
        os.close(status_r)
        os.close(status_w)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    os.close(status_w)
    out, err, status = _Capped(limits.output_limit), _Capped(limits.output_limit), _Capped(4096)
    reason: str | None = None
    try:
        reason = _pump(proc, payload, out, err, status, status_r, start + limits.timeout_s, limits)
    finally:
        _kill_group(proc.pid)
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        with contextlib.suppress(OSError):
            os.close(status_r)
        shutil.rmtree(workdir, ignore_errors=True)
    return _result(mode, proc.returncode, out, err, status, reason, limits, start)


def _pump(proc, payload, out, err, status, status_r, deadline, limits) -> str | None:
    """Feed the config, drain the outputs until the process is gone; return a kill reason."""
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    pending = memoryview(payload)
    hard_cap = _OUTPUT_KILL_FACTOR * limits.output_limit
    reason: str | None = None
    drain_until: float | None = None  # set once everything is dead or killed
    try:
        while sel.get_map():
            now = time.monotonic()
            if drain_until is None and (now >= deadline or _exited(proc.pid)):
                # Timed out, or the wrapper is gone and anything still holding our pipes
                # is a leftover ("none" mode): kill the group, then collect what is
                # already in the pipes.
                reason = "timeout" if now >= deadline else None
                _kill_group(proc.pid)
                drain_until = now + _EXIT_GRACE_S
            if drain_until is not None and now >= drain_until:
                break
            wait = (drain_until or deadline) - now
            for key, _ in sel.select(max(0.0, min(wait, 0.05))):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending[:65536]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # it died before reading its config
                        pending = pending[len(pending) :]
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                    continue
                streams[fd].feed(data)
            if reason is None and out.total + err.total > hard_cap:
                return "output"
        return reason
    finally:
        sel.close()


def _result(mode, returncode, out, err, status, reason, limits, start) -> SandboxResult:
    report: dict = {}
    for line in status.head.decode("utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            report.update(json.loads(line))
    stderr = err.text()
    for key in ("setup_error", "exec_error"):
        if key in report:
            raise SandboxError(f"sandbox could not start ({mode}): {report[key]}")
    if not report.get("started") and reason is None:
        why = (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1]
        raise SandboxError(f"sandbox could not start ({mode}): {why}")
    exit_code = report.get("exit_code")
    cpu = report.get("cpu_s")
    if reason is None:
        if exit_code is None:
            # Started, but our init died before reporting: in "none" mode the code can kill
            # it (it is the code's parent); the code then dies of PR_SET_PDEATHSIG.
            exit_code = returncode if returncode is not None and returncode < 0 else -9
            reason = "signal"
        elif exit_code < 0:
            cpu_spent = cpu is not None and cpu >= 0.8 * math.ceil(limits.cpu_s)
            if -exit_code == signal.SIGXCPU or (-exit_code == signal.SIGKILL and cpu_spent):
                reason = "cpu"
            else:
                reason = "signal"
        elif exit_code != 0 and _ended_by_memory_error(stderr):
            reason = "memory"
    else:
        exit_code = None
    return SandboxResult(
        stdout=out.text(),
        stderr=stderr,
        exit_code=exit_code,
        timed_out=reason in ("timeout", "cpu"),
        killed_reason=reason,
        truncated=out.truncated or err.truncated,
        duration_s=time.monotonic() - start,
        isolation=mode,
        cpu_s=cpu,
    )


def _ended_by_memory_error(stderr: str) -> bool:
    last = stderr.rstrip().splitlines()[-1:] or [""]
    return last[0].startswith("MemoryError")
