"""The algorithms of the harness as data: one row per algorithm.

GRPO differs from SPO only by responses per prompt, the advantage estimator and the default
prompt sampler; the trainer, the config validation (the choices of `algo`) and the study
tools ask this table instead of comparing names. Adding an algorithm is one row here plus
its advantage function in `spo.algo.ADVANTAGES`.

`critic` is SPO with a learned baseline in place of the tracker: one response per prompt,
A = r − V₋₁(x) with V a value head on the policy's prompt features (`spo.algo.critic`,
`spo.train.critic`), SPO's own advantage function (so the same batch-wide normalisation),
the same PPO loss and budget. Its sampler is uniform: SPO's priority weights come from the
tracker's v̂, which would bring the tracker back into the arm being compared with it, and
weights from V would need a forward pass over every training prompt each step. The matched
tracker arm is SPO with `sampler.mode=uniform`.
"""

from __future__ import annotations

from dataclasses import dataclass

from spo.algo.advantages import Registry


@dataclass(frozen=True)
class Algorithm:
    advantage: str  # key of spo.algo.ADVANTAGES
    grouped: bool  # G responses per prompt, advantage over the group
    sampler: str  # default prompt sampling: priority | uniform
    tracker_baseline: bool = False  # the advantage subtracts the value tracker's v̂₋₁
    # advantage under `baseline=none` (the no-baseline ablation); None: the option does not
    # apply (the algorithm has no tracker baseline to remove) and is ignored
    without_baseline: str | None = None
    critic: bool = False  # the advantage subtracts a learned V₋₁(x) (spo.train.critic)

    def __post_init__(self) -> None:
        if self.sampler not in ("priority", "uniform"):
            raise ValueError(f"Algorithm.sampler must be priority or uniform; got {self.sampler!r}")
        if self.without_baseline is not None and not self.tracker_baseline:
            raise ValueError("Algorithm.without_baseline needs tracker_baseline=True")
        if self.critic and (self.tracker_baseline or self.grouped):
            raise ValueError(
                "Algorithm.critic is a single-stream baseline: needs grouped=False and "
                "tracker_baseline=False"
            )


ALGORITHMS: Registry = Registry(
    "algorithm",
    {
        "spo": Algorithm(
            advantage="spo",
            grouped=False,
            sampler="priority",
            tracker_baseline=True,
            without_baseline="none",
        ),
        "grpo": Algorithm(advantage="grpo", grouped=True, sampler="uniform"),
        "rloo": Algorithm(advantage="rloo", grouped=True, sampler="uniform"),
        "dr_grpo": Algorithm(advantage="dr_grpo", grouped=True, sampler="uniform"),
        "critic": Algorithm(advantage="spo", grouped=False, sampler="uniform", critic=True),
    },
)
