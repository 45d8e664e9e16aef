"""Attack suite for spo.tools.sandbox: every attack is contained, reported, this process lives.

Each test of the attack section runs once per isolated level that works on this machine
("bwrap", "namespaces"); `test_which_isolation_this_machine_has` skips with the levels that
do not work and why (e.g. "bwrap not found (apt-get install bubblewrap)"), so the -ra
summary says which isolation was actually tested. If neither works, the attack tests skip
and only the unsafe-mode and argument tests run. Attacks that would hurt the host without
isolation (fork bomb, kill(-1)) are never run in "none" mode.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import spo.tools.sandbox as sandbox
from spo.tools.sandbox import SandboxError, SandboxResult, _isolation, _process, run_python

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


def test_which_isolation_this_machine_has(isolation_available):
    """Says (as a skip reason in the -ra summary) which levels the attack suite did not run."""
    missing = {mode: why for mode, why in isolation_available.items() if why is not None}
    working = [mode for mode, why in isolation_available.items() if why is None]
    if missing:
        pytest.skip(f"attack suite ran under {working or 'nothing'}; unavailable: {missing}")


def run(code: str, iso: str, **kw) -> SandboxResult:
    res = run_python(textwrap.dedent(code), isolation=iso, allow_unsafe=(iso == "none"), **kw)
    assert res.isolation == iso
    return res


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


def wait_gone(marker: str, within_s: float = 3.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# ----------------------------------------------------------------- arguments and refusal


def test_none_is_refused_without_opt_in():
    with pytest.raises(SandboxError, match="allow_unsafe=True"):
        run_python("print(1)", isolation="none")


def test_unknown_isolation_lists_valid_ones():
    with pytest.raises(SandboxError, match="valid: auto, bwrap, namespaces, none"):
        run_python("print(1)", isolation="docker")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw", [{"timeout_s": 0}, {"cpu_s": -1}, {"memory_mb": 1}, {"output_limit": 0}]
)
def test_bad_limits_are_refused(kw):
    with pytest.raises(SandboxError, match="must be a number"):
        run_python("print(1)", isolation="none", allow_unsafe=True, **kw)


def test_auto_refuses_when_nothing_isolates(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe", lambda mode, python: f"{mode} broken")
    with pytest.raises(SandboxError, match=r"apt-get install bubblewrap.*allow_unsafe=True"):
        run_python("print(1)")
    with pytest.warns(RuntimeWarning, match="UNISOLATED"):
        res = run_python("print(1)", allow_unsafe=True)
    assert res.isolation == "none" and res.stdout == "1\n"


def test_explicit_level_that_is_missing_says_what_to_install(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe_cache", {})
    monkeypatch.setattr(sandbox.shutil, "which", lambda *a, **k: None)
    with pytest.raises(SandboxError, match=r"bwrap not found \(apt-get install bubblewrap\)"):
        run_python("print(1)", isolation="bwrap")


def test_python_must_be_an_executable():
    with pytest.raises(SandboxError, match="not an executable"):
        run_python("print(1)", python="no-such-python-3.99")


def test_capped_keeps_head_and_tail_in_bounded_memory():
    cap = _process.Capped(100)
    for i in range(1000):
        cap.feed(f"{i:05d}\n".encode())
    assert cap.truncated and cap.total == 6000
    assert len(cap.head) <= 100 and len(cap.tail) <= 50
    text = cap.text()
    assert text.startswith("00000\n00001\n") and text.endswith("00999\n")
    assert "[... 5900 bytes omitted ...]" in text
    small = _process.Capped(100)
    small.feed("é".encode() * 10)
    assert not small.truncated and small.text() == "é" * 10


# ----------------------------------------------------------------------- normal behaviour


def test_runs_code_and_reports(iso):
    res = run("import sys\nprint('hello')\nprint('err', file=sys.stderr)\n", iso)
    assert res.ok and res.stdout == "hello\n" and res.stderr == "err\n"
    assert res.exit_code == 0 and not res.timed_out and not res.truncated
    assert res.killed_reason is None and 0 < res.duration_s < 30


def test_exit_codes_and_tracebacks(iso):
    assert run("raise SystemExit(3)", iso).exit_code == 3
    res = run("x = 1\n1 / 0\n", iso)
    assert res.exit_code == 1 and res.killed_reason is None and not res.ok
    assert 'File "/tmp/main.py", line 2' in res.stderr and "ZeroDivisionError" in res.stderr


def test_environment_is_scrubbed_and_stdin_is_empty(iso, monkeypatch):
    monkeypatch.setenv("SPO_TEST_SECRET", "hunter2")
    res = run(
        """
        import os, sys
        print(sorted(k for k in os.environ if 'SECRET' in k), os.getcwd(), os.environ['HOME'])
        print(repr(sys.stdin.read()))
        """,
        iso,
    )
    assert res.stdout == "[] /tmp /tmp\n''\n", res.stderr


@pytest.mark.skipif(importlib.util.find_spec("numpy") is None, reason="numpy not installed")
def test_site_packages_are_importable(iso):
    res = run("import numpy as np\nprint(int(np.arange(10).sum()))", iso)
    assert res.stdout == "45\n", res.stderr


def test_concurrent_calls_from_threads(iso):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: run(f"print({i} * {i})", iso), range(8)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]


def test_no_privileges_inside(iso):
    res = run(
        """
        import os
        status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())
        print(os.getuid(), status['CapEff'].strip(), status['CapBnd'].strip(),
              status['NoNewPrivs'].strip())
        print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
        """,
        iso,
    )
    ids, pids = res.stdout.splitlines()
    uid, eff, bnd, nnp = ids.split()
    assert (eff, bnd, nnp) == ("0000000000000000", "0000000000000000", "1")
    if IS_ROOT:
        assert int(uid) >= 1 << 30  # a fresh unprivileged uid, never root
    # Its own pid namespace: only our init, the script and maybe bwrap's init are visible.
    assert len(pids.split(",")) <= 3


# ------------------------------------------------------------------------------ attacks


def test_infinite_loop_times_out(iso):
    res = run("while True:\n    pass\n", iso, timeout_s=1.0, cpu_s=30)
    assert res.killed_reason == "timeout" and res.timed_out and res.exit_code is None
    assert res.duration_s < 1.0 + 3.0


@pytest.mark.slow
def test_sleeping_forever_times_out_with_partial_output(iso):
    res = run("print('started')\nimport time\ntime.sleep(1000)\n", iso, timeout_s=2.0)
    assert res.killed_reason == "timeout" and res.stdout == "started\n"


@pytest.mark.slow
def test_cpu_limit_kills_a_busy_loop(iso):
    res = run("while True:\n    pass\n", iso, timeout_s=20.0, cpu_s=1)
    assert res.killed_reason == "cpu" and res.timed_out
    assert res.cpu_s is not None and res.cpu_s >= 0.5  # rusage lags the rlimit clock


def test_process_count_is_bounded(iso):
    # Bounded first: try 200 forks, count how many the limit allowed.
    res = run(
        """
        import os, time
        made = 0
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(5)
                os._exit(0)
            made += 1
        print(made)
        """,
        iso,
        max_processes=16,
    )
    assert res.ok, res.stderr
    assert 1 <= int(res.stdout) < 16


@pytest.mark.slow
def test_fork_bomb_is_contained_and_cleaned_up(iso):
    marker = f"spo-forkbomb-{uuid.uuid4().hex}"
    bomb = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    code = f"import os, sys\nos.execv(sys.executable, ['python', '-c', {bomb!r}, {marker!r}])\n"
    res = run(code, iso, timeout_s=2.0, max_processes=8)
    assert res.killed_reason == "timeout"
    assert wait_gone(marker) == []
    # The host still forks fine.
    assert subprocess.run(["true"], check=False).returncode == 0


def test_memory_bomb_one_allocation(iso):
    # RLIMIT_AS refuses it at once. No memory was used, so the kernel recorded nothing: the
    # code's own MemoryError is its result, and killed_reason stays None (never from text).
    res = run("x = bytearray(4 * 1024**3)\n", iso, memory_mb=256)
    assert res.exit_code == 1 and res.killed_reason is None and "MemoryError" in res.stderr


def test_memory_bomb_growing(iso):
    res = run("xs = []\nwhile True:\n    xs.append(bytearray(10**7))\n", iso, memory_mb=200)
    # It failed after its peak RSS reached most of memory_mb: a measured fact.
    assert res.killed_reason == "memory" and res.exit_code == 1
    assert res.memory_peak_mb is not None and res.memory_peak_mb >= 150


def test_huge_output_is_truncated_and_killed_early(iso):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = run(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", iso, output_limit=4096
    )
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert res.killed_reason == "output" and res.truncated
    assert len(res.stdout) < 4096 + 100 and "bytes omitted" in res.stdout
    assert res.duration_s < 5 and grown_mb < 50


def test_large_output_keeps_head_and_tail(iso):
    res = run(
        "for i in range(20000):\n    print(f'line {i}')\nprint('the end')\n",
        iso,
        output_limit=4096,
    )
    assert res.ok and res.truncated and res.killed_reason is None
    assert res.stdout.startswith("line 0\nline 1\n") and res.stdout.endswith("the end\n")


def test_reading_outside_is_denied(iso):
    res = run(
        f"""
        import os
        def probe(path):
            try:
                with open(path, 'rb') as f:
                    f.read(1)
                return 'read'
            except OSError as e:
                return type(e).__name__
        print(probe('/etc/shadow'), probe({str(REPO / "pyproject.toml")!r}),
              probe({__file__!r}), os.path.exists('/home'), sorted(os.listdir('/')))
        """,
        iso,
    )
    shadow, pyproject, this_file, home, _ = res.stdout.split(" ", 4)
    assert shadow == "PermissionError", res.stderr
    assert pyproject == this_file == "FileNotFoundError" and home == "False"


def test_writing_outside_is_denied(iso):
    name = f"spo-sandbox-escape-{uuid.uuid4().hex}"
    host_tmp = Path(tempfile.gettempdir())
    site = next(p for p in sys.path if p.endswith("site-packages"))
    targets = ["/x", "/etc/x", "/usr/x", f"{site}/evil.pth", f"{sys.prefix}/x", "/dev/x"]
    res = run(
        f"""
        import os
        for path in {targets!r}:
            try:
                open(path, 'w').write('pwned')
                print(path, 'WROTE')
            except OSError as e:
                print(path, type(e).__name__)
        open('/tmp/{name}', 'w').write('inside only')
        print(os.listdir('/tmp'))
        """,
        iso,
    )
    assert "WROTE" not in res.stdout, res.stdout
    assert name in res.stdout  # /tmp inside is writable...
    assert not (host_tmp / name).exists()  # ...and is not the host's /tmp
    assert not Path(site, "evil.pth").exists()


def test_disk_is_bounded(iso):
    res = run(
        "with open('/tmp/big', 'wb') as f:\n    for _ in range(100):\n"
        "        f.write(b'x' * 2**20)\n",
        iso,
        disk_mb=8,
    )
    assert res.exit_code == 1 and ("No space left" in res.stderr or "too large" in res.stderr)


def test_network_is_unreachable(iso):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        with contextlib.suppress(OSError):
            while True:
                try:
                    accepted.append(server.accept())
                except TimeoutError:
                    if stop.is_set():
                        return

    stop = threading.Event()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        res = run(
            f"""
            import socket
            def attempt(f):
                try:
                    f()
                    return 'CONNECTED'
                except OSError as e:
                    return type(e).__name__
            print(attempt(lambda: socket.create_connection(('127.0.0.1', {port}), timeout=2)))
            print(attempt(lambda: socket.create_connection(('1.1.1.1', 53), timeout=2)))
            print(attempt(lambda: socket.getaddrinfo('pypi.org', 443)))
            """,
            iso,
        )
    finally:
        stop.set()
        thread.join()
        server.close()
    assert "CONNECTED" not in res.stdout and len(res.stdout.splitlines()) == 3, res
    assert accepted == []


def test_killing_the_parent_does_not_reach_us(iso):
    me = os.getpid()
    res = run(
        f"""
        import os, signal
        for pid in (os.getppid(), 1, {me}):
            try:
                os.kill(pid, signal.SIGKILL)
                print(pid, 'sent')
            except OSError as e:
                print(pid, type(e).__name__)
        print('still here')
        """,
        iso,
    )
    assert res.stdout.endswith("still here\n"), res
    if IS_ROOT:  # the script is a foreign uid: it may signal nothing outside itself
        assert "sent" not in res.stdout, res.stdout
    assert os.getpid() == me  # and we are obviously alive to check


def test_kill_everything_reaches_only_the_sandbox(iso):
    # kill(-1) signals every process the caller may signal. Only run isolated, and only
    # after checking the code is neither root nor sharing our pid namespace.
    check = run("import os\nprint(os.getuid(), len(os.listdir('/proc')))", iso)
    assert check.ok and (not IS_ROOT or int(check.stdout.split()[0]) != 0)
    code = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError as e:\n"
    code += "    print(type(e).__name__)\nprint('survived')\n"
    res = run(code, iso)  # nothing to signal: ESRCH, or it kills only its own processes
    assert res.ok and res.stdout.endswith("survived\n")
    assert run("print('next call fine')", iso).ok


def test_leftover_processes_are_killed(iso):
    marker = f"spo-leftover-{uuid.uuid4().hex}"
    res = run(
        f"""
        import subprocess, sys
        p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],
                             start_new_session=True)
        print(p.pid)
        """,
        iso,
    )
    assert res.ok, res.stderr
    assert wait_gone(marker) == []


def test_leftover_processes_are_killed_on_timeout(iso):
    marker = f"spo-leftover-{uuid.uuid4().hex}"
    res = run(
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],
                         start_new_session=True)
        time.sleep(60)
        """,
        iso,
        timeout_s=1.0,
    )
    assert res.killed_reason == "timeout"
    assert wait_gone(marker) == []


@pytest.mark.slow
def test_a_run_of_attacks_leaves_the_caller_working(iso):
    attacks = [
        "while True: pass",
        "x = bytearray(8 * 1024**3)",
        "import os, signal; os.kill(os.getppid(), signal.SIGKILL)",
        "import ctypes; ctypes.string_at(0)",  # segfault
        "import os; os.abort()",
    ]
    # Only the loop gets a short timeout: the others must finish on their own even on a
    # busy CI machine.
    reasons = [
        run(a, iso, timeout_s=1.0 if i == 0 else 10.0).killed_reason for i, a in enumerate(attacks)
    ]
    assert reasons[0] == "timeout" and reasons[1] is None and reasons[3] == "signal"
    assert run("print('ok')", iso).stdout == "ok\n"


# ------------------------------------------------------------- unsafe mode (no isolation)


def test_unsafe_mode_runs_and_cleans_its_temp_dir():
    res = run("import os\nprint(os.getcwd())\nopen('f', 'w').write('x')\n", "none")
    assert res.ok and res.stdout.strip().startswith(tempfile.gettempdir())
    assert not Path(res.stdout.strip()).exists()


def test_unsafe_mode_still_limits_time_memory_and_output():
    assert run("while True: pass", "none", timeout_s=1.0).killed_reason == "timeout"
    grow = "xs = []\nwhile True:\n    xs.append(bytearray(10**7))\n"
    assert run(grow, "none", memory_mb=200).killed_reason == "memory"
    flood = run("while True: print('x' * 1000)", "none", output_limit=1024)
    assert flood.killed_reason == "output" and flood.truncated


def test_unsafe_mode_kills_detached_leftovers():
    marker = f"spo-leftover-{uuid.uuid4().hex}"
    code = f"""
    import subprocess, sys
    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}],
                     start_new_session=True)
    """
    # A non-root caller's RLIMIT_NPROC counts every process of its uid, the other test
    # workers' sandboxes included: room for them, this test is about the leftover.
    assert run(code, "none", max_processes=256).ok
    assert wait_gone(marker) == []


def test_unsafe_mode_survives_its_parent_being_killed():
    res = run(
        """
        import os, signal
        os.kill(os.getppid(), signal.SIGKILL)
        import time; time.sleep(60)
        """,
        "none",
        timeout_s=5.0,
    )
    # Our init died; the script dies with it (PR_SET_PDEATHSIG) and the call reports it.
    assert res.killed_reason == "signal" and res.exit_code == -9
    assert res.duration_s < 4.5


def test_a_sandbox_that_cannot_start_raises_instead_of_reporting(iso, monkeypatch):
    # Hide the interpreter from the sandbox: that is a broken setup, not failing code.
    monkeypatch.setattr(_isolation, "interpreter_roots", lambda python: [])
    if sys.prefix.startswith(("/usr/", "/bin/", "/lib")):
        pytest.skip("this interpreter lives in a system directory, which is always visible")
    with pytest.raises(SandboxError, match=rf"sandbox could not start \({iso}\)"):
        run("print(1)", iso)


def test_sandbox_dies_with_its_caller(iso):
    marker = f"spo-orphan-{uuid.uuid4().hex}"
    script = textwrap.dedent(
        f"""
        from spo.tools.sandbox import run_python
        code = "import os, sys, time\\nos.execv(sys.executable, ['python', '-c', "
        code += "'import time; time.sleep(60)', {marker!r}])\\n"
        run_python(code, isolation={iso!r}, timeout_s=60)
        """
    )
    caller = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_with(marker), "the sandboxed sleeper never started"
        caller.kill()  # the trainer dies without any clean-up
        caller.wait()
        assert wait_gone(marker) == []
    finally:
        caller.kill()
        caller.wait()
