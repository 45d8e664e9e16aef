"""Forgetting factor ρ of the value tracker (spo-spec.md §2).

    ρ = clip(2^(−D/D_half), ρ_min, ρ_max)        defaults D_half 0.06, ρ_min 0.875, ρ_max 0.96

D is how far the policy moved since prompt x was last visited. Three estimators:

- **constant**: pass a scalar ρ to `ValueTracker.update` (no estimator at all).
- **replay** (the reference code's): keep the response sampled at x's last visit with its
  per-token log-probs under the policy right after that step; after the current update
  rescore it; D = token-mean |Δ log p| (`replay_divergence`). Costs one stored response per
  prompt plus an extra log-prob pass over those responses every step.
- **drift** (ours, `DriftTracker`): once per step measure the policy's movement on the
  batch just trained on, d_t = token-mean |log π_after − log π_before| (`policy_drift`),
  keep the running sum S_t = Σ d_t, and per prompt the value of S at its last visit;
  D(x) = S_now − S_last(x). O(1) memory per prompt (one float32) and one extra log-prob
  pass over a few sequences per step, independent of the dataset size.

Trade-off: replay measures the drift on x's own response (prompt-specific, what the paper
does) but its memory grows with prompts × response length and its cost with the batch;
drift assumes the policy moves about equally on all prompts (a global clock of policy
change) and sums per-step distances, which by the triangle inequality over-estimates the
direct distance when successive updates partly cancel (→ somewhat smaller ρ, i.e. more
forgetting). First visit: D = 0, so ρ = ρ_max, in both (as the spec says).

Setting D_half (spec §2: "set it from the measured D distribution"): ρ moves between its
bounds only while D ∈ [D_half·log2(1/ρ_max), D_half·log2(1/ρ_min)], a window whose ends
differ by a fixed factor (3.27 for the defaults) whatever D_half is. `d_half_for_median`
centres it on the median revisit: ρ(median D) = (ρ_min + ρ_max)/2; `d_half_widest` places
it where it holds the most revisits. bench/rho_divergence.py measures D and prints both.
"""

from __future__ import annotations

import numpy as np
import torch

from spo.algo._validate import (
    check_ids,
    check_in_range,
    check_int,
    check_rho_bounds,
    check_scalar,
    to_numpy,
)


def rho_from_divergence(d, *, d_half: float = 0.06, rho_min: float = 0.875, rho_max: float = 0.96):
    """ρ = clip(2^(−d/d_half), rho_min, rho_max) for divergence d >= 0 (scalar or (B,)).

    Returns a float for a scalar `d`, else a float64 numpy array of the same shape.
    """
    d_half = check_scalar(d_half, "d_half", lo=0.0, lo_open=True)
    rho_min, rho_max = check_rho_bounds(rho_min, rho_max)
    arr = check_in_range(d, "d", lo=0.0, hi=np.inf)
    rho = np.clip(np.exp2(-arr / d_half), rho_min, rho_max)
    return float(rho) if rho.ndim == 0 else rho


def _check_logp_shapes(logp_BT, other_BT, mask_BT, other_name: str) -> torch.Tensor:
    if not all(isinstance(t, torch.Tensor) for t in (logp_BT, other_BT, mask_BT)):
        raise ValueError(f"logp_BT, {other_name} and mask_BT must be torch tensors")
    if logp_BT.dim() != 2:
        raise ValueError(f"logp_BT must be 2-D (B, T); got shape {tuple(logp_BT.shape)}")
    for name, t in ((other_name, other_BT), ("mask_BT", mask_BT)):
        if tuple(t.shape) != tuple(logp_BT.shape):
            raise ValueError(
                f"{name} must have the shape of logp_BT {tuple(logp_BT.shape)}; "
                f"got {tuple(t.shape)}"
            )
    return mask_BT.to(torch.bool)


def _masked_abs_diff(logp_BT, other_BT, mask_BT, other_name: str) -> tuple:
    mask = _check_logp_shapes(logp_BT, other_BT, mask_BT, other_name)
    # where(), not multiply: padding may hold -inf/NaN log-probs and must not leak in.
    diff = torch.where(mask, (logp_BT - other_BT).abs(), torch.zeros((), dtype=logp_BT.dtype))
    return diff, mask


def replay_divergence(logp_BT, stored_logp_BT, mask_BT) -> torch.Tensor:
    """d_B = Σ_t m·|logp − stored_logp| / Σ_t m, per sequence (0 for an empty row).

    logp_BT: (B, T) log-probs of stored responses under the current policy;
    stored_logp_BT: (B, T) the same tokens' log-probs saved at the prompt's last visit;
    mask_BT: (B, T) 1 on response tokens. Returns (B,).
    """
    diff, mask = _masked_abs_diff(logp_BT, stored_logp_BT, mask_BT, "stored_logp_BT")
    n_B = mask.sum(dim=1).clamp(min=1).to(diff.dtype)
    return diff.sum(dim=1) / n_B


def policy_drift(logp_BT, old_logp_BT, mask_BT) -> torch.Tensor:
    """d = Σ_bt m·|logp − old_logp| / Σ_bt m over the batch (0 if no tokens) -> 0-d tensor.

    logp_BT: (B, T) log-probs after this step's updates; old_logp_BT: (B, T) before;
    mask_BT: (B, T). Measured once per step and fed to `DriftTracker.advance`.
    """
    diff, mask = _masked_abs_diff(logp_BT, old_logp_BT, mask_BT, "old_logp_BT")
    return diff.sum() / mask.sum().clamp(min=1).to(diff.dtype)


class DriftTracker:
    """Cumulative policy drift: D(x) = S_now − S_at_last_visit(x), S = Σ_steps policy_drift.

    Memory: 4 bytes/prompt (float32 snapshot of S, NaN = never visited) plus one float64.
    D is a difference of S rounded to float32 (24 bits): |error of D| <= 1.2e-7·S (6e-5 at
    S = 500, e.g. 20k steps of drift 0.025), negligible against D_half = 0.06.
    """

    def __init__(self, num_prompts: int):
        num_prompts = check_int(num_prompts, "num_prompts", lo=0)
        self.total = 0.0  # S: running sum of per-step drift, float64
        self.visit_total = np.empty(0, dtype=np.float32)  # (P,) S at last visit, NaN = never
        self.grow(num_prompts)

    @property
    def num_prompts(self) -> int:
        """P, the number of prompt ids tracked (ids are 0..P-1)."""
        return int(self.visit_total.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the per-prompt array (4 per prompt)."""
        return int(self.visit_total.nbytes)

    def advance(self, step_drift) -> None:
        """S ← S + step_drift (call once per step, after the policy update)."""
        self.total += check_scalar(step_drift, "step_drift", lo=0.0)

    def divergence(self, ids) -> np.ndarray:
        """D_B = f32(S) − S_last(x) for `ids` (B,) -> float64 (B,); 0 for never-visited prompts.

        Both sides are S rounded to float32 (monotone rounding), so D >= 0 and a prompt
        marked now has D = 0 exactly.
        """
        ids = check_ids(ids, self.num_prompts)
        last = self.visit_total[ids].astype(np.float64)
        d = float(np.float32(self.total)) - last
        d[np.isnan(last)] = 0.0
        return d

    def mark(self, ids) -> None:
        """Record a visit now: S_last(x) ← S for `ids` (B,), duplicates allowed."""
        ids = check_ids(ids, self.num_prompts)
        self.visit_total[ids] = np.float32(self.total)

    def seen(self, ids=None) -> np.ndarray:
        """Whether each prompt was ever marked -> bool (B,) or (P,)."""
        if ids is None:
            return ~np.isnan(self.visit_total)
        return ~np.isnan(self.visit_total[check_ids(ids, self.num_prompts)])

    def grow(self, num_prompts: int) -> None:
        """Extend to `num_prompts` (>= current); new prompts are unvisited."""
        num_prompts = check_int(num_prompts, "num_prompts", lo=self.num_prompts)
        extra = num_prompts - self.num_prompts
        if extra:
            grown = np.empty(num_prompts, dtype=np.float32)
            grown[: self.num_prompts] = self.visit_total
            grown[self.num_prompts :] = np.nan
            self.visit_total = grown

    def state_dict(self) -> dict:
        """{"total": float, "visit_total": float32 (P,)} (a copy); exact round trip."""
        return {"total": self.total, "visit_total": self.visit_total.copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`; ValueError on missing keys or a prompt-count mismatch."""
        missing = [k for k in ("total", "visit_total") if k not in state]
        if missing:
            raise ValueError(f"drift state lacks keys {missing}; got {sorted(state)}")
        arr = to_numpy(state["visit_total"], "state['visit_total']")
        if arr.ndim != 1 or arr.shape[0] != self.num_prompts:
            raise ValueError(
                f"drift state 'visit_total' has shape {arr.shape} but this tracker has "
                f"{self.num_prompts} prompts; build DriftTracker(num_prompts) with the "
                "checkpoint's count, load, then grow()"
            )
        total = check_scalar(state["total"], "total", lo=0.0)
        self.visit_total = arr.astype(np.float32, copy=True)
        self.total = total

    def __repr__(self) -> str:
        return f"DriftTracker(num_prompts={self.num_prompts}, total={self.total:.6g})"


def _revisit_divergences(d_R) -> np.ndarray:
    d = check_in_range(d_R, "d_R", lo=0.0, hi=np.inf).reshape(-1)
    d = d[d > 0]
    if d.size == 0:
        raise ValueError("d_R needs at least one positive divergence (revisits after an update)")
    return d


def d_half_for_median(d_R, *, rho_min: float = 0.875, rho_max: float = 0.96) -> float:
    """D_half with ρ(median D) = ρ_mid = (ρ_min + ρ_max)/2: D_half = median(D)·ln 2/(−ln ρ_mid).

    d_R: (R,) divergences of revisits (zeros, e.g. first visits, are dropped).
    """
    rho_min, rho_max = check_rho_bounds(rho_min, rho_max)
    mid = 0.5 * (rho_min + rho_max)
    return float(np.median(_revisit_divergences(d_R)) * np.log(2.0) / -np.log(mid))


def d_half_widest(d_R, *, rho_min: float = 0.875, rho_max: float = 0.96) -> float:
    """D_half whose window [D_half·log2(1/ρ_max), D_half·log2(1/ρ_min)] holds the most of d_R.

    Candidate windows start at each observed D (an optimum always has a point there; ties:
    the smallest D); the chosen one is then centred (geometric mean) on the first and last
    D it holds, so they sit inside the bounds, not on them. d_R: (R,) revisit divergences
    (zeros dropped).
    """
    rho_min, rho_max = check_rho_bounds(rho_min, rho_max)
    d = np.sort(_revisit_divergences(d_R))
    lo_per_half, hi_per_half = -np.log2(rho_max), -np.log2(rho_min)
    end = np.searchsorted(d, d * (hi_per_half / lo_per_half), side="right")
    i = int(np.argmax(end - np.arange(d.size)))
    return float(np.sqrt(d[i] * d[end[i] - 1]) / np.sqrt(lo_per_half * hi_per_half))
