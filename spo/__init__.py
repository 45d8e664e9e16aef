"""spo-rl: Single-stream Policy Optimization."""

import os as _os

# Spinning OpenMP threads stall each other on small, shared CPUs (measured 4x slower
# generation on 2 busy cores); must be set before torch is imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
