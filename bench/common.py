"""What every benchmark script records the same way: the machine, memory, child processes.

- `machine(*keys, **extra)`: a dict of named facts about this machine and run (platform,
  CPU, core count, library versions, load average, git commit), in the order asked and
  under the names asked, so each script keeps the JSON keys its committed results have.
  `FACTS` lists the names (several are aliases: `cores`, `cpus`, `cpu_count`).
- `load_avg()` / `load_avgs()`: the 1-minute load average, or all three, rounded.
- memory of this process: `rss_mib()` (VmRSS now), `peak_rss_mib()` (ru_maxrss, the
  peak over the process's life), `reset_peak_rss()` + `hwm_mib()` (a peak over one
  measurement: Linux resets VmHWM on request), `heap_mib()` (glibc's live / free heap).
- `run_child(script, args)`: run a benchmark script in a fresh Python process that
  writes its JSON result to the `--child-out` path it is given (and may work in
  `--child-dir`); returns that JSON, the child's peak RSS (from the kernel's accounting
  of the finished child, `wait4`) and the load average before and after.
- `best_matmul_s(dtype, m, k, n)`: the fastest of N timed matmuls (the compute bound);
- `command(script, argv)`: the command line that reproduces a result, for its JSON;
  `write_json(path, obj)`: create the folder and write.
- results over seeds: `spread(values)` ("mean ± std [min–max]", one value as itself),
  `t_interval(values)` (mean and half-width of the 95% Student-t interval of a mean),
  `regenerate(path, text)` (rewrite a generated markdown page, keeping the hand-written
  notes after its `NOTES` marker).
- `tiny_task(work)`: the tests' tiny random model and fractional-reward task on disk.

Scripts import it as `common` (they run as `python bench/NAME.py`, so `bench/` is first
on `sys.path`); importing it puts the repository root on `sys.path` too, so `spo` and
`tests` are this checkout's. Nothing here imports torch unless a function needs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # `spo` (and `tests`) of this checkout, from any directory
    sys.path.insert(1, str(ROOT))


# --------------------------------------------------------------------------- machine
def load_avg() -> float:
    """The 1-minute load average, rounded to 2 decimals."""
    return round(os.getloadavg()[0], 2)


def load_avgs() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded to 2 decimals."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows)."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        name = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), name)
    return name


def git_commit() -> str | None:
    """Short hash of the checkout's HEAD, None outside git."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def version(package: str) -> str | None:
    """Installed version of a distribution (without importing it), None if absent."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_version() -> str:
    import torch

    return torch.__version__


FACTS: dict[str, Callable[[], object]] = {
    "platform": platform.platform,
    "processor": platform.processor,
    "cpu": cpu_name,
    "cpu_count": os.cpu_count,
    "cpus": os.cpu_count,
    "cores": os.cpu_count,
    "mem_gib": lambda: round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    "python": platform.python_version,
    "torch": _torch_version,  # the imported one (a +cpu / +cu build tag included)
    "numpy": lambda: version("numpy"),
    "transformers": lambda: version("transformers"),
    "trl": lambda: version("trl"),
    "load_avg_1m": load_avg,
    "load_avg_1m_at_start": load_avg,
    "load_avg_1m_at_end": load_avg,
    "git_commit": git_commit,
}


def machine(*keys: str, **extra) -> dict:
    """{key: FACTS[key]() for key in keys}, then `extra` (values the script knows)."""
    if unknown := [k for k in keys if k not in FACTS]:
        raise KeyError(f"unknown machine fact(s) {unknown}; known: {', '.join(FACTS)}")
    return {k: FACTS[k]() for k in keys} | extra


# --------------------------------------------------------------------------- memory
def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    """Resident memory of this process now (VmRSS), MiB."""
    return _status_mib("VmRSS")


def hwm_mib() -> float:
    """Peak resident memory since the last `reset_peak_rss()` (VmHWM), MiB."""
    return _status_mib("VmHWM")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so each measurement gets its own peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mib() -> float:
    """Peak resident memory over this process's life (ru_maxrss, kB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def heap_mib() -> tuple[float, float]:
    """(live, free) MiB of glibc's malloc: live = in-use heap chunks + mmapped blocks,
    free = heap bytes the allocator holds but nobody uses (what RSS carries beyond live).
    NaN where glibc's mallinfo2 (2.33+) is missing."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return float("nan"), float("nan")
    fn.restype = _Mallinfo2
    m = fn()
    return (m.uordblks + m.hblkhd) / 2**20, m.fordblks / 2**20


# --------------------------------------------------------------------------- children
def run_child(
    script: str | Path,
    args: list[str],
    *,
    prefix: str = "bench_child_",
    interact: Callable[[subprocess.Popen], None] | None = None,
) -> dict:
    """Run `python SCRIPT --child-out OUT --child-dir DIR *args` in a fresh process.

    The child writes its JSON result to OUT (DIR is an empty scratch folder, removed
    afterwards). Returns that JSON plus `child_peak_rss_mib` (the finished child's
    ru_maxrss as the kernel accounts it), `load_avg_before` and `load_avg_after`.
    `interact(proc)`, if given, runs while the child runs (its stdin and stdout are then
    pipes, text mode); a child that fails raises CalledProcessError.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(script).resolve()),
            "--child-out",
            str(out),
            "--child-dir",
            str(Path(tmp) / "run"),
            *args,
        ]
        before = load_avgs()
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        proc = subprocess.Popen(cmd, cwd=ROOT, **(pipes if interact else {}))
        try:
            if interact is not None:
                interact(proc)
        finally:
            # wait4 reaps the child and returns its own resource usage (peak RSS in kB)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        result = json.loads(out.read_text())
    result["child_peak_rss_mib"] = usage.ru_maxrss / 1024
    result["load_avg_before"] = before
    result["load_avg_after"] = load_avgs()
    return result


# --------------------------------------------------------------------------- output
def command(script: str, argv: list[str] | None = None) -> str:
    """`python bench/SCRIPT.py ARGS`: the command line of this run (argv None: sys.argv)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"bench/{Path(script).name}", *args])


def write_json(path: str | Path, obj, *, indent: int | None = 1, **dumps) -> Path:
    """Write `obj` as JSON (with a final newline) to `path`, creating its folder; `dumps`
    goes to json.dumps (e.g. ensure_ascii=False)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, **dumps) + "\n")
    return path


# --------------------------------------------------------------------------- tiny task
def tiny_task(work: Path, rows: int = 40) -> dict[str, str]:
    """The tests' tiny random Llama and fractional-reward JSONL task, written under `work`
    (tests/conftest.py, tests/train/test_trainer.py): {"model_dir", "name", "reward_fn"},
    the values of model.path, task.name and task.reward_fn."""
    for folder in (ROOT / "tests", ROOT / "tests" / "train"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    from conftest import build_tiny_model
    from test_trainer import REWARD_SRC

    data = work / "data.jsonl"
    lines = [
        json.dumps({"prompt": f"Say something about {i} and {i * 7 % 13}.", "answer": str(i)})
        for i in range(rows)
    ]
    data.write_text("".join(line + "\n" for line in lines))
    (work / "reward.py").write_text(REWARD_SRC)
    return {
        "model_dir": str(build_tiny_model(work / "tiny")),
        "name": str(data),
        "reward_fn": f"{work / 'reward.py'}:reward",
    }


# --------------------------------------------------------------------------- compute
def best_matmul_s(dtype, m: int, k: int, n: int, *, reps: int = 10, warmup: int = 1) -> float:
    """Fastest of `reps` timed (m x k) @ (k x n) products of random `dtype` matrices (after
    `warmup` untimed ones): best-of-N, since other processes on the cores can only slow a
    run down. FLOP/s = 2 m k n / this."""
    import time

    import torch

    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(warmup):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return best


# two-sided 97.5% quantiles of Student's t, by degrees of freedom (1.96 beyond 9)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
NOTES = "<!-- notes: text below this line is kept when the table is regenerated -->"


def spread(values, scale: float = 100.0, digits: int = 1) -> str:
    """mean ± std [min–max] of `values` × scale (None skipped); one value: itself; none: –."""
    import statistics

    v = [x * scale for x in values if x is not None]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    mean, std = statistics.mean(v), statistics.stdev(v)
    return f"{mean:.{digits}f} ± {std:.{digits}f} [{min(v):.{digits}f}–{max(v):.{digits}f}]"


def t_interval(values, scale: float = 100.0) -> tuple[float, float]:
    """(mean, half-width) of the 95% t-interval of the mean of `values` × scale (n >= 2)."""
    import statistics

    v = [x * scale for x in values]
    return statistics.mean(v), T975.get(len(v) - 1, 1.96) * statistics.stdev(v) / len(v) ** 0.5


def regenerate(path: Path, text: str) -> None:
    """Write a generated page; what follows the NOTES marker in the old page is kept."""
    notes = ""
    if path.is_file() and NOTES in path.read_text():
        notes = path.read_text().split(NOTES, 1)[1]
    path.write_text(text + "\n" + NOTES + notes)
