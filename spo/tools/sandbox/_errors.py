"""The one exception of spo.tools.sandbox (its own module so every part can raise it)."""


class SandboxError(RuntimeError):
    """The sandbox cannot run here (missing isolation, bad arguments) — not a code failure."""
