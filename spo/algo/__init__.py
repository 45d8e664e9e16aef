"""SPO's math: pure functions and small state objects over numpy arrays / torch tensors.

No I/O, no models, no config objects (design.md). The contract is ../shared/spo-spec.md:

- `tracker`     ValueTracker — per-prompt Beta(α, β) baseline v̂ (§2, §3)
- `forgetting`  ρ = clip(2^(−D/D_half), ρ_min, ρ_max); replay and cumulative-drift D (§2)
- `advantages`  spo / none / grpo / dr_grpo / rloo behind one registry (§4, §7)
- `sampler`     PrioritySampler — w ∝ sqrt(v̂(1−v̂)) + ε without replacement (§5)
- `losses`      ppo_clip_loss — clip-higher + dual clip, three aggregations (§6);
                tis_weight — truncated importance sampling for engine mismatch
- `metrics`     pass@k, maj@k, avg@k, degenerate fraction, advantage variance (§8)
- `state`       SPOState — the pieces above behind host prompt keys (for integrations)
"""

from spo.algo.advantages import (
    ADVANTAGE_NEEDS_BASELINE,
    ADVANTAGE_NEEDS_GROUPS,
    ADVANTAGES,
    UnknownNameError,
    get_advantage,
    grpo_advantage,
    rloo_advantage,
    spo_advantage,
)
from spo.algo.forgetting import DriftTracker, policy_drift, replay_divergence, rho_from_divergence
from spo.algo.losses import AGGREGATIONS, ppo_clip_loss, tis_weight
from spo.algo.metrics import (
    advantage_variance,
    avg_at_k,
    degenerate_fraction,
    maj_at_k,
    pass_at_k,
    small_advantage_fraction,
)
from spo.algo.sampler import PrioritySampler, priority_weights
from spo.algo.state import SPOState
from spo.algo.tracker import ValueTracker

__all__ = [
    "ADVANTAGES",
    "ADVANTAGE_NEEDS_BASELINE",
    "ADVANTAGE_NEEDS_GROUPS",
    "AGGREGATIONS",
    "DriftTracker",
    "PrioritySampler",
    "SPOState",
    "UnknownNameError",
    "ValueTracker",
    "advantage_variance",
    "avg_at_k",
    "degenerate_fraction",
    "get_advantage",
    "grpo_advantage",
    "maj_at_k",
    "pass_at_k",
    "policy_drift",
    "ppo_clip_loss",
    "priority_weights",
    "replay_divergence",
    "rho_from_divergence",
    "rloo_advantage",
    "small_advantage_fraction",
    "spo_advantage",
    "tis_weight",
]
