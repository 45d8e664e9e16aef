"""spo-rl: Single-stream Policy Optimization."""

__version__ = "0.1.0"
