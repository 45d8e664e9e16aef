"""The algorithms of the harness as data: one row per algorithm.

GRPO differs from SPO only by responses per prompt, the advantage estimator and the default
prompt sampler; the trainer, the config validation and the study tools ask this table
instead of comparing names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    advantage: str  # key of spo.algo.ADVANTAGES
    grouped: bool  # G responses per prompt, advantage over the group
    sampler: str  # default prompt sampling: priority | uniform


ALGORITHMS = {
    "spo": Algorithm(advantage="spo", grouped=False, sampler="priority"),
    "grpo": Algorithm(advantage="grpo", grouped=True, sampler="uniform"),
    "rloo": Algorithm(advantage="rloo", grouped=True, sampler="uniform"),
    "dr_grpo": Algorithm(advantage="dr_grpo", grouped=True, sampler="uniform"),
}
