"""spo-rl: Single-stream Policy Optimization."""

import os as _os

# OpenMP worker threads (GNU libgomp, as in PyTorch's CPU wheels) spin ~300k iterations
# waiting for work by default: fastest on an idle machine, but on small shared CPUs the
# spinning steals the cores other processes need (generation 8.3 s vs 4.7 s with 2 busy
# cores). PASSIVE (sleep at once) is robust but slow when idle (4.1 s vs 2.6 s). A short
# spin gets both: 2.6 s idle, 5.3 s with 2 busy cores (64 x 64-token rollouts of
# SmolLM2-135M, 2 threads). Must be set before torch is imported; the user's own setting wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "20000")

__version__ = "0.1.0"
