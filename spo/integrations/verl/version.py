"""The verl versions this plug-in is tested against, and the one error for any other.

verl moves fast (it removed a public sampler API within ten months of adding it), and the
trainer mode overrides verl methods by name and copies one of them
(`PPOTrainer._compute_advantage`), so the plug-in runs only on the versions its contract
tests (tests/integrations/verl/) passed on. Keep this tuple, the `verl` extra in
pyproject.toml and docs/integrations.md in step.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

SUPPORTED_VERL = ("0.9.0", "0.9.1")


class UnsupportedVerlError(RuntimeError):
    """The installed verl is not one the plug-in was tested against (one line for people)."""


@cache
def installed_verl() -> str | None:
    """The installed verl distribution's version, or None when verl is not installed."""
    try:
        return version("verl")
    except PackageNotFoundError:
        return None


def require_supported_verl() -> str:
    """The installed verl version; UnsupportedVerlError unless it is in SUPPORTED_VERL."""
    found = installed_verl()
    if found not in SUPPORTED_VERL:
        have = "verl is not installed" if found is None else f"found verl {found}"
        raise UnsupportedVerlError(
            f"spo-rl's verl plug-in is tested with verl {', '.join(SUPPORTED_VERL)} only; {have}. "
            "Install a tested one: pip install 'spo-rl[verl]'"
        )
    return found
