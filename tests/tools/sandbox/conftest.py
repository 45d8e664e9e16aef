"""Shared by the sandbox suites: which isolated levels work here, and the `iso` fixture.

Every attack test takes `iso` and so runs once per isolated level that works on this machine
("bwrap", "namespaces"); `test_which_isolation_this_machine_has` (test_sandbox.py) skips
with the levels that did not run and why, so the -ra summary says what was tested.
"""

from __future__ import annotations

import pytest

from spo.tools.sandbox import available_isolation

AVAILABLE = available_isolation()
WORKING = [mode for mode, reason in AVAILABLE.items() if reason is None]


@pytest.fixture(params=WORKING or ["unavailable"])
def iso(request) -> str:
    """Each isolated level that works here; the attack tests skip if none does."""
    if request.param == "unavailable":
        pytest.skip(f"no isolated sandbox level works here: {AVAILABLE}")
    return request.param


@pytest.fixture
def isolation_available() -> dict[str, str | None]:
    """available_isolation() as probed once for the session: mode -> None or why not."""
    return AVAILABLE
