"""Python sandbox for model-written code: one isolated, resource-limited process per call.

`run_python(code)` runs `code` as a script in a fresh interpreter and returns a
`SandboxResult` (captured output, exit code, why it was stopped). It never raises because
of what the code does — loops, bombs, crashes, attacks, code that does not fit on its disk —
all are *results*; only when the sandbox itself cannot be set up (`SandboxError`, one line
saying what to install or how to opt out).

Isolation levels (docs/sandbox.md has the threat model, what each level enforces, and what
was measured):

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

Both isolated levels also require the seccomp filter (`_isolation.seccomp_program`:
libseccomp through `pyseccomp`): it denies new namespaces, keyrings, memfd, System V IPC,
io_uring, bpf, perf, ptrace and every socket family but AF_UNIX. Without it they refuse
(fail closed). The code also gets a fresh empty session keyring, no capabilities,
no_new_privs, oom_score_adj 1000 and, for a root caller, a fresh unprivileged uid.

Modules: `_isolation` (view, wrapper command, filter), `_process` (one call: start, drain,
kill, report), `_cgroup` (a memory and pids cgroup per call where this process may make
one), `_stage` (the init that runs inside).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import warnings
from typing import Literal

from spo.tools.sandbox import _cgroup, _isolation, _process
from spo.tools.sandbox._errors import SandboxError
from spo.tools.sandbox._isolation import tmpfs_inodes
from spo.tools.sandbox._process import Limits, SandboxResult

__all__ = [
    "ISOLATION_LEVELS",
    "Isolation",
    "SandboxError",
    "SandboxResult",
    "available_isolation",
    "cgroup_memory_mb",
    "cgroup_unavailable",
    "leftover_cgroups",
    "resolve_isolation",
    "run_python",
    "tmpfs_inodes",
]

Isolation = Literal["auto", "bwrap", "namespaces", "none"]
ISOLATION_LEVELS = ("auto", "bwrap", "namespaces", "none")
_PROBE_TIMEOUT_S = 60.0  # generous: a busy 2-core machine can take seconds to start Python


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
    `timeout_s` counts from the moment the code's interpreter starts; the sandbox's own
    start-up has a separate, generous limit.
    Raises SandboxError only when the requested isolation is unavailable, arguments are
    invalid or the sandbox cannot start; everything the code does is reported in the result.
    """
    _check_args(timeout_s, cpu_s, memory_mb, output_limit, max_processes, disk_mb)
    if not isinstance(code, str):
        raise SandboxError(f"code must be a str, got {type(code).__name__}")
    python = _find_python(python)
    mode = resolve_isolation(isolation, allow_unsafe, python)
    limits = Limits(timeout_s, cpu_s, memory_mb, output_limit, max_processes, disk_mb)
    return _process.execute(mode, code, limits, python)


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


def cgroup_unavailable() -> str | None:
    """None when each call gets its own memory and pids cgroup here, else why not."""
    return _cgroup.unavailable()


def cgroup_memory_mb(memory_mb: int, disk_mb: int) -> int:
    """The memory cgroup limit of a call (MiB): `memory_mb` + 2 x `disk_mb` + overhead."""
    return _cgroup.memory_limit_mb(memory_mb, disk_mb)


def leftover_cgroups() -> list[str]:
    """Call cgroups this process made and did not remove (should be none)."""
    return _cgroup.leftovers()


# --------------------------------------------------------------------------- internals


def _find_python(python: str | None) -> str:
    if not python:
        return sys.executable
    found = python if os.path.isabs(python) else shutil.which(python)
    if found is None or not os.access(found, os.X_OK):
        raise SandboxError(f"python={python!r} is not an executable file")
    return os.path.abspath(found)


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
    if shutil.which(tool, path=_isolation.WRAPPER_PATH) is None:
        package = "bubblewrap" if mode == "bwrap" else "util-linux"
        return f"{tool} not found (apt-get install {package})"
    bpf, why = _isolation.seccomp_program()
    if bpf is None:
        return why
    limits = Limits(_PROBE_TIMEOUT_S, 10.0, 512, 4096, 8, 1)
    try:
        res = _process.execute(mode, "print('ok')", limits, python)
    except (OSError, SandboxError) as exc:
        return str(exc)
    if res.exit_code == 0 and res.killed_reason is None and res.stdout == "ok\n":
        return None
    detail = (res.stderr.strip().splitlines() or [f"exit code {res.exit_code}"])[-1]
    return f"{tool} failed: {detail}"
