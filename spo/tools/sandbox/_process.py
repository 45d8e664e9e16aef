"""One sandbox call as a process: start the wrapper, feed our init, drain, kill, report.

`execute(mode, code, limits, python)` returns the call's `SandboxResult` (defined here,
exported by `spo.tools.sandbox`). It starts the wrapper of `mode` (`_isolation.command`) around
our init (`_stage.py`), in a new session and, where possible, a fresh cgroup (`_cgroup`).
It sends the init its config on stdin and reads stdout, stderr and the init's status pipe
as they arrive, keeping only head and tail (`Capped`).

Two clocks: the sandbox gets `STARTUP_TIMEOUT_S` to start (namespaces, mounts, our init);
the code's `timeout_s` starts when the init reports that the code's interpreter has been
exec'd. The call returns after the whole process group is killed and reaped and, with a
cgroup, after the call's processes and shared memory are gone (bounded, reported as
`memory_released`).

Why it stopped (`killed_reason`) comes from kernel facts only: our own kill (timeout,
output flood), the wait status and rusage of the code's main process (signal, CPU time,
peak RSS) and the cgroup's OOM-kill count — never from what the code printed.
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
import tempfile
import time
from dataclasses import dataclass

from spo.tools.sandbox import _cgroup, _isolation
from spo.tools.sandbox._errors import SandboxError

STAGE_SOURCE = (pathlib.Path(__file__).parent / "_stage.py").read_text(encoding="utf-8")
WRAPPER_ENV = {"PATH": _isolation.WRAPPER_PATH, "LANG": "C.UTF-8"}
OUTPUT_KILL_FACTOR = 64  # kill a process once it has printed this many x output_limit
EXIT_GRACE_S = 1.0  # after the main process exits, how long to wait for its pipes to close
STARTUP_TIMEOUT_S = 60.0  # generous: a busy 2-core machine can take seconds to start Python
RELEASE_WAIT_S = 5.0  # how long a call waits for its memory to be freed after it ends
SANDBOX_UID_RANGE = (1 << 30, (1 << 31) - (1 << 16))  # far above any real account
NOFILE = 256
MSGQUEUE_BYTES = 64 * 1024
CPU_FACT = 0.9  # SIGXCPU/SIGKILL means "cpu" only once the code used this share of its CPU
MEMORY_FACT = 0.75  # a failed exit means "memory" once its peak RSS reached this share
OOM_SCORE_ADJ = 1000
# Small System V IPC limits for the sandbox's own ipc namespace (the filter denies these
# calls; the limits bound them should it ever be lifted).
IPC_SYSCTLS = {"shmmax": 2**20, "shmall": 256, "shmmni": 1, "msgmni": 1, "msgmnb": 16384}


@dataclass(frozen=True)
class Limits:
    timeout_s: float
    cpu_s: float
    memory_mb: int
    output_limit: int
    max_processes: int
    disk_mb: int


@dataclass(frozen=True)
class SandboxResult:
    """What one `run_python` call did.

    stdout, stderr: decoded output (UTF-8, invalid bytes replaced); when longer than
        `output_limit` bytes, the head and tail around a "[... N bytes omitted ...]" line.
    exit_code: the script's exit status; -N when a signal N killed it; None when the sandbox
        killed it (timeout, output flood) before it exited.
    timed_out: it ran out of time: wall clock (`killed_reason="timeout"`) or CPU ("cpu").
    killed_reason: None for a normal exit (zero or not), else why it stopped, from kernel
        facts only: "timeout" (wall clock, counted from the code's start), "cpu" (SIGXCPU or
        SIGKILL after using its CPU limit), "output", "memory" (the call's memory cgroup
        OOM-killed one of its processes, or it failed after its peak RSS reached 3/4 of
        `memory_mb`), "signal" (another signal, e.g. SIGSEGV).
    truncated: stdout or stderr was cut to `output_limit`.
    duration_s: wall-clock seconds of the whole call, sandbox start-up included.
    isolation: the level that ran it: "bwrap", "namespaces" or "none".
    cpu_s: CPU seconds of the script and the children it waited for (None if unknown).
    memory_peak_mb: peak memory of the call: its cgroup's peak (everything charged to it:
        processes, tmpfs, kernel objects) when it had one, else the main process's peak RSS.
    memory_released: with a cgroup, whether every process was gone and its shared memory
        freed before the call returned (it waits up to a few seconds); None without one.
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
    memory_peak_mb: float | None = None
    memory_released: bool | None = None

    @property
    def ok(self) -> bool:
        """The script ran to completion and exited with status 0."""
        return self.exit_code == 0 and self.killed_reason is None


class Capped:
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


class _Status:
    """The init's status pipe: one JSON object per line."""

    def __init__(self) -> None:
        self.buf = Capped(1 << 16)
        self.report: dict = {}
        self.started_at: float | None = None

    def feed(self, data: bytes) -> None:
        self.buf.feed(data)
        if self.started_at is None and b'"started"' in self.buf.head:
            self.started_at = time.monotonic()

    def parse(self) -> dict:
        for line in self.buf.head.decode("utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                self.report.update(json.loads(line))
        return self.report


def user_env(python: str, cwd: str) -> dict[str, str]:
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


def rlimits(limits: Limits) -> dict[str, tuple[int, int]]:
    cpu = max(1, math.ceil(limits.cpu_s))
    disk = limits.disk_mb * 2**20
    return {
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_CPU": (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        "RLIMIT_AS": (limits.memory_mb * 2**20,) * 2,
        "RLIMIT_FSIZE": (disk, disk),
        "RLIMIT_NOFILE": (NOFILE, NOFILE),
        "RLIMIT_NPROC": (limits.max_processes, limits.max_processes),
        "RLIMIT_MSGQUEUE": (MSGQUEUE_BYTES, MSGQUEUE_BYTES),
    }


def sandbox_uid() -> int | None:
    """A fresh unprivileged uid for a root caller (None: keep the caller's non-root uid)."""
    if os.geteuid() != 0:
        return None
    low, high = SANDBOX_UID_RANGE
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


def execute(mode: str, code: str, limits: Limits, python: str) -> SandboxResult:
    start = time.monotonic()
    isolated = mode != "none"
    bpf = None
    if isolated:
        bpf, why = _isolation.seccomp_program()
        if bpf is None:  # fail closed: isolation without the filter is not offered
            raise SandboxError(why)
    workdir = tempfile.mkdtemp(prefix="spo-sandbox-")
    ops = _isolation.layout(python, limits.disk_mb) if isolated else []
    cwd = "/tmp" if isolated else workdir
    cgroup = _cgroup.create(
        _cgroup.memory_limit_mb(limits.memory_mb, limits.disk_mb) * 2**20,
        limits.max_processes + 1,  # + our init
    )
    status_r, status_w = os.pipe()
    cfg = {
        "mode": mode,
        "code": code,
        "python": python,
        "python_args": ["-I", "-B", "-u"],
        "env": user_env(python, cwd),
        "rlimits": rlimits(limits),
        "uid": sandbox_uid(),
        "newroot": workdir,
        "layout": ops,
        "cwd": cwd,
        "status_fd": status_w,
        "cgroup_fds": cgroup.fds if cgroup else [],
        "seccomp_bpf": bpf.hex() if bpf else None,
        "oom_score_adj": OOM_SCORE_ADJ,
        "ipc_sysctls": IPC_SYSCTLS if isolated else {},
    }
    payload = json.dumps(cfg).encode()
    stage = [python, "-I", "-S", "-c", STAGE_SOURCE]
    try:
        proc = subprocess.Popen(
            _isolation.command(mode, stage, ops),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_w, *cfg["cgroup_fds"]),
            start_new_session=True,
            env=WRAPPER_ENV,
            cwd=workdir,
            bufsize=0,
        )
    except OSError:
        os.close(status_r)
        os.close(status_w)
        if cgroup is not None:
            cgroup.finish(0.0)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    os.close(status_w)
    if cgroup is not None:
        cgroup.close_fds()
    out, err, status = Capped(limits.output_limit), Capped(limits.output_limit), _Status()
    reason: str | None = None
    usage = None
    try:
        reason = _pump(proc, payload, out, err, status, status_r, start, limits)
    finally:
        _kill_group(proc.pid)
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        with contextlib.suppress(OSError):
            os.close(status_r)
        if cgroup is not None:
            usage = cgroup.finish(RELEASE_WAIT_S)
        shutil.rmtree(workdir, ignore_errors=True)
    return _outcome(mode, proc.returncode, out, err, status, reason, limits, start, usage)


def _pump(proc, payload, out, err, status, status_r, start, limits) -> str | None:
    """Feed the config, drain the outputs until the process is gone; return a kill reason:
    "timeout" (the code's time, or the sandbox's start-up time: "startup"), "output"."""
    sel = selectors.DefaultSelector()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    pending = memoryview(payload)
    hard_cap = OUTPUT_KILL_FACTOR * limits.output_limit
    reason: str | None = None
    drain_until: float | None = None  # set once everything is dead or killed
    try:
        while sel.get_map():
            now = time.monotonic()
            if status.started_at is None:
                deadline, late = start + STARTUP_TIMEOUT_S, "startup"
            else:
                deadline, late = status.started_at + limits.timeout_s, "timeout"
            if drain_until is None and (now >= deadline or _exited(proc.pid)):
                # Timed out, or the wrapper is gone and anything still holding our pipes
                # is a leftover ("none" mode): kill the group, then collect what is
                # already in the pipes.
                reason = late if now >= deadline else None
                _kill_group(proc.pid)
                drain_until = now + EXIT_GRACE_S
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


def _outcome(mode, returncode, out, err, status, reason, limits, start, usage) -> SandboxResult:
    report = status.parse()
    stderr = err.text()
    for key in ("setup_error", "exec_error"):
        if key in report:
            raise SandboxError(f"sandbox could not start ({mode}): {report[key]}")
    if reason == "startup":
        raise SandboxError(
            f"sandbox could not start ({mode}) within {STARTUP_TIMEOUT_S:.0f} s; "
            "the machine may be overloaded"
        )
    if not report.get("started") and reason is None:
        why = (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1]
        raise SandboxError(f"sandbox could not start ({mode}): {why}")
    exit_code = report.get("exit_code")
    cpu = report.get("cpu_s")
    rss_mb = report["max_rss_kb"] / 1024 if "max_rss_kb" in report else None
    peak = usage.peak_mb if usage is not None and usage.peak_mb is not None else rss_mb
    if reason is None:
        if exit_code is None:
            # Started, but our init died before reporting: in "none" mode the code can kill
            # it (it is the code's parent); the code then dies of PR_SET_PDEATHSIG.
            exit_code = returncode if returncode is not None and returncode < 0 else -9
            reason = "signal"
        elif usage is not None and usage.oom_kills > 0:
            reason = "memory"  # the cgroup's OOM killer stopped the code or one of its processes
        elif exit_code < 0:
            cpu_spent = cpu is not None and cpu >= CPU_FACT * max(1, math.ceil(limits.cpu_s))
            if -exit_code in (signal.SIGXCPU, signal.SIGKILL) and cpu_spent:
                reason = "cpu"
            else:
                reason = "signal"
        elif exit_code != 0 and rss_mb is not None and rss_mb >= MEMORY_FACT * limits.memory_mb:
            reason = "memory"  # it failed after filling its address-space limit
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
        memory_peak_mb=peak,
        memory_released=usage.released if usage is not None else None,
    )
