"""Agentic throughput simulation: how long one training batch waits for its rollouts when
sample times vary (tool calls), group-based (GRPO) vs group-free (SPO).

model.py   latency distributions, the two batch policies, slot-time accounting, CIs
paper.py   the paper's worked example (stated group times, our consistent sample times)
plots.py   figures of a result and of the paper example
The `spo simulate` command is `spo.commands.simulate`.
"""

from spo.sim.model import (
    LATENCIES,
    POLICIES,
    Latency,
    SimConfig,
    SimError,
    SimResult,
    group_based_T,
    group_free_T,
    mean_ci,
    ratio_ci,
    sample_times_TN,
    simulate,
    slot_fractions_T,
    sweep_straggler_frac,
)
from spo.sim.paper import PAPER_GROUP_TIMES, paper_example, paper_sample_times_N

__all__ = [
    "LATENCIES",
    "PAPER_GROUP_TIMES",
    "POLICIES",
    "Latency",
    "SimConfig",
    "SimError",
    "SimResult",
    "group_based_T",
    "group_free_T",
    "mean_ci",
    "paper_example",
    "paper_sample_times_N",
    "ratio_ci",
    "sample_times_TN",
    "simulate",
    "slot_fractions_T",
    "sweep_straggler_frac",
]
