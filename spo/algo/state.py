"""SPOState: the SPO pieces behind one key-based object an integration owns.

A host framework (TRL, verl, a custom loop) knows its prompts by its own keys (dataset row
indices, ids, prompt strings); `spo.algo`'s pieces know dense integer ids 0..P-1. SPOState
maps any hashable key to a dense id, growing the tracker as new keys appear, and runs the
SPO step of spo-spec.md in that vocabulary:

    keys   = state.select(k)                        # §5  w ∝ sqrt(v̂(1−v̂)) + ε, no replacement
    adv    = state.advantages(rewards, keys)        # §4  (r − v̂₋₁) normalised over the batch
    ... the host's policy update ...
    state.observe(keys, rewards, step=t, ...)       # §2  α ← ρα + r, β ← ρβ + (1 − r)

ρ per observed sample (§2): `rho=` a constant or per-sample value; `divergence=` a
per-sample D the host already computes (e.g. an approx-KL since the prompt's last visit),
mapped by ρ = clip(2^(−D/D_half), ρ_min, ρ_max); or neither, in which case D is the
cumulative drift since the key's last visit (`advance(step_drift)` once per step; a host
that never calls it gets D = 0, i.e. a constant ρ = ρ_max).

`reward_range=(lo, hi)` maps host rewards onto the tracker's [0, 1] by (r − lo)/(hi − lo);
a reward outside the range is an error, never clipped. Advantages are in [0, 1] units.

Keys: `SPOState(n)` means the keys 0..n-1 with no dict (O(1) memory per prompt, what
spo-rl's trainer uses); `SPOState(keys)` or `SPOState()` map arbitrary hashable keys
(strings, ints) through a dict, in order of first appearance. Parquet files (`save_values`
/ `load_values`) are the `spo init-values` format, matched by `str(key)`.

No framework imports and no I/O besides the two parquet helpers; picklable.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np
import torch

from spo.algo._validate import check_in_range, check_int, check_scalar, to_numpy
from spo.algo.advantages import spo_advantage
from spo.algo.forgetting import DriftTracker, rho_from_divergence
from spo.algo.metrics import advantage_variance, small_advantage_fraction
from spo.algo.sampler import PrioritySampler
from spo.algo.tracker import ValueTracker

NORMALIZE = ("batch", "none")


class SPOState:
    """Tracker, sampler and drift clock of SPO, addressed by the host's prompt keys."""

    def __init__(
        self,
        keys: int | Iterable[Hashable] = (),
        *,
        rho_min: float = 0.875,
        rho_max: float = 0.96,
        d_half: float = 0.06,
        prior_value: float = 0.5,
        prior_count: float = 1.0,
        eps: float = 0.05,
        seed: int = 0,
        sampler: str = "priority",
        reward_range: tuple[float, float] = (0.0, 1.0),
    ):
        self.d_half = check_scalar(d_half, "d_half", lo=0.0, lo_open=True)
        self.reward_range = _check_range(reward_range)
        self.tracker = ValueTracker(
            0,
            rho_min=rho_min,
            rho_max=rho_max,
            prior_value=prior_value,
            prior_count=prior_count,
        )
        self.drift = DriftTracker(0)
        self.sampler = PrioritySampler(eps=eps, seed=seed, mode=sampler)
        self._last: dict[str, float] = {}
        self.last_divergence: np.ndarray | None = None  # D (B,) behind the last observe's ρ
        if isinstance(keys, int | np.integer) and not isinstance(keys, bool):
            self._key_to_id: dict | None = None  # keys are 0..n-1 themselves
            self._keys: list | None = None
            self._grow(check_int(keys, "keys (a count)", lo=0))
        else:
            self._key_to_id, self._keys = {}, []
            self.add_keys(keys)

    # ------------------------------------------------------------------- keys
    def __len__(self) -> int:
        return self.tracker.num_prompts

    @property
    def keys(self) -> list:
        """All known keys in dense-id order."""
        return list(range(len(self))) if self._keys is None else list(self._keys)

    def _grow(self, n: int) -> None:
        self.tracker.grow(n)
        self.drift.grow(n)

    def add_keys(self, keys: Iterable[Hashable]) -> None:
        """Register keys not seen before (at the prior); known keys are left as they are."""
        self.index(keys)

    def index(self, keys) -> np.ndarray:
        """Dense idx (B,) int64 for `keys` (B,), registering unknown keys at the prior."""
        if self._key_to_id is None:  # count mode: keys must be the idx themselves
            idx = to_numpy(keys, "keys").reshape(-1)
            if idx.size == 0:
                return idx.astype(np.int64)
            if idx.dtype == np.bool_ or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(
                    f"keys of SPOState({len(self)}) are the integers 0..{len(self) - 1}; got "
                    f"dtype {idx.dtype} (build SPOState(keys=[...]) for other keys)"
                )
            idx = idx.astype(np.int64, copy=False)
            if idx.min() < 0 or idx.max() >= len(self):
                bad = int(idx[(idx < 0) | (idx >= len(self))][0])
                raise ValueError(
                    f"key {bad} is not among the keys 0..{len(self) - 1} of SPOState({len(self)})"
                )
            return idx
        if isinstance(keys, np.ndarray | torch.Tensor):
            keys = keys.tolist()
        elif isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            raise ValueError(f"keys must be a sequence of keys; got {type(keys).__name__}")
        table, known = self._key_to_id, self._keys
        out = []
        for key in keys:
            try:
                i = table.get(key)
            except TypeError:
                raise ValueError(f"keys must be hashable; got {type(key).__name__}") from None
            if i is None:
                i = table[key] = len(known)
                known.append(key)
            out.append(i)
        if len(known) > len(self):
            self._grow(len(known))
        return np.asarray(out, dtype=np.int64)

    def _to_keys(self, idx: np.ndarray) -> list:
        return idx.tolist() if self._keys is None else [self._keys[i] for i in idx]

    # ---------------------------------------------------------------- reading
    def baseline(self, keys) -> np.ndarray:
        """v̂₋₁ (B,) float32 of `keys`: read BEFORE this step's rewards are observed."""
        return self.tracker.value(self.index(keys))

    def unit_rewards(self, rewards):
        """Rewards mapped from `reward_range` onto [0, 1] -> float tensor (B,); error outside."""
        r = (
            rewards
            if isinstance(rewards, torch.Tensor)
            else torch.as_tensor(to_numpy(rewards, "rewards"))
        )
        if not torch.is_floating_point(r):
            r = r.to(torch.float32)
        lo, hi = self.reward_range
        check_in_range(r, "rewards", lo=lo, hi=hi)  # one clear line, never clipped
        return r if (lo, hi) == (0.0, 1.0) else (r - lo) / (hi - lo)

    def advantages(self, rewards, keys, *, normalize: str = "batch") -> torch.Tensor:
        """Ã (B,) = (A − mean_B A)/(std_B A + 1e-8) with A = r − v̂₋₁ ("batch") or A ("none").

        Call it on the whole (global) batch: the normalisation is over what it is given.
        """
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)}; got {normalize!r}")
        r = self.unit_rewards(rewards)
        b = self.baseline(keys)
        if b.shape != tuple(r.shape):
            raise ValueError(f"{len(b)} keys for {tuple(r.shape)} rewards; give one key per reward")
        return spo_advantage(r, torch.from_numpy(b), normalize=normalize == "batch")

    def select(self, k: int, candidates=None) -> list:
        """k distinct keys, drawn ∝ sqrt(v̂(1−v̂)) + ε without replacement (§5), in draw order.

        candidates: distinct keys to draw from (unknown ones are registered and, at the
        prior, sampleable); None = all known keys.
        """
        eligible = None if candidates is None else self.index(candidates)
        return self._to_keys(self.sampler.draw(self.tracker.values(), k, eligible=eligible))

    # ---------------------------------------------------------------- writing
    def advance(self, step_drift: float) -> None:
        """Add one step's policy drift to the clock used when `observe` gets no rho/divergence."""
        self.drift.advance(step_drift)

    def observe(self, keys, rewards, *, step: int, rho=None, divergence=None) -> np.ndarray:
        """Absorb rewards after the policy update: α ← ρα + r, β ← ρβ + (1 − r) per key.

        rho: scalar or (B,) in (0, 1]; divergence: scalar or (B,) D >= 0 -> ρ(D); neither:
        D = drift accumulated by `advance` since each key's last visit (or its offline
        initialisation, `init_from_counts`). Duplicate keys are applied in order.
        Returns the ρ applied to each sample, float64 (B,); `last_divergence` holds the D
        it came from (None when `rho` was given).
        """
        if rho is not None and divergence is not None:
            raise ValueError("give observe() rho or divergence, not both")
        idx = self.index(keys)
        r = self.unit_rewards(rewards)
        if tuple(r.shape) != idx.shape:
            raise ValueError(
                f"{idx.size} keys for {tuple(r.shape)} rewards; give one key per reward"
            )
        value_B = self.tracker.value(idx)  # v̂₋₁: the baseline the host's advantage used
        raw_B = (r.double() - torch.from_numpy(value_B).double()).numpy()
        clip = {
            "d_half": self.d_half,
            "rho_min": self.tracker.rho_min,
            "rho_max": self.tracker.rho_max,
        }
        self.last_divergence = None
        if rho is None:
            if divergence is None:
                divergence = self.drift.divergence(idx)
                self.drift.mark(idx)
            self.last_divergence = np.broadcast_to(
                np.asarray(divergence, dtype=np.float64), idx.shape
            ).copy()
            rho = rho_from_divergence(divergence, **clip)
        self.tracker.update(idx, r, rho, step=step)
        rho_B = np.broadcast_to(np.asarray(rho, dtype=np.float64), idx.shape).copy()
        r_B = r.double().numpy()
        self._last = {
            "rho_mean": float(rho_B.mean()) if idx.size else float("nan"),
            "adv_variance": float(advantage_variance(raw_B)) if idx.size else float("nan"),
            "reward_variance": float(np.var(r_B)) if idx.size else float("nan"),
            "adv_abs_le_1e-4": float(small_advantage_fraction(raw_B, 1e-4)) if idx.size else 0.0,
            "adv_abs_le_0.02": float(small_advantage_fraction(raw_B, 0.02)) if idx.size else 0.0,
            "value_mean": float(value_B.mean()) if idx.size else float("nan"),
        }
        return rho_B

    def metrics(self) -> dict[str, float]:
        """Tracker health for logs: v̂ mean, seen fraction, ρ and variance ratio of the last observe.

        tracker/value_mean is the mean v̂₋₁ of the observed keys, read before the update (the
        baseline their advantages used).

        variance_ratio = Var(r − v̂₋₁)/Var(r) on the last observed batch (< 1: the baseline
        removes variance; §8 reports ~0.5). NaN before the first observe.
        """
        last = self._last
        v = self.tracker.values()
        m = {
            "tracker/num_prompts": float(len(self)),
            "tracker/seen_fraction": self.tracker.seen_fraction(),
            "tracker/value_mean_all": float(v.mean()) if v.size else float("nan"),
            "tracker/value_mean": last.get("value_mean", float("nan")),
            "tracker/rho_mean": last.get("rho_mean", float("nan")),
            "adv/variance": last.get("adv_variance", float("nan")),
            "adv/abs_le_1e-4": last.get("adv_abs_le_1e-4", float("nan")),
            "adv/abs_le_0.02": last.get("adv_abs_le_0.02", float("nan")),
        }
        rv = last.get("reward_variance", float("nan"))
        m["adv/variance_ratio"] = m["adv/variance"] / rv if rv > 0 else float("nan")
        return m

    # ---------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """Keys, settings, tracker, drift clock, sampler RNG and last metrics (copies)."""
        return {
            "keys": len(self) if self._keys is None else list(self._keys),
            "d_half": self.d_half,
            "reward_range": list(self.reward_range),
            "tracker": self.tracker.state_dict(),
            "drift": self.drift.state_dict(),
            "sampler": self.sampler.state_dict(),
            "last": dict(self._last),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()` exactly (keys included); ValueError if it does not fit."""
        missing = [k for k in ("keys", "tracker", "drift", "sampler") if k not in state]
        if missing:
            raise ValueError(f"SPOState state lacks keys {missing}; got {sorted(state)}")
        keys = state["keys"]
        if isinstance(keys, int | np.integer):
            n, table, known = int(keys), None, None
        else:
            known = list(keys)
            table = {k: i for i, k in enumerate(known)}
            if len(table) != len(known):
                raise ValueError("SPOState state has repeated keys")
            n = len(known)
        tracker = ValueTracker(n)
        tracker.load_state_dict(state["tracker"])
        drift = DriftTracker(n)
        drift.load_state_dict(state["drift"])
        sampler = PrioritySampler()
        sampler.load_state_dict(state["sampler"])
        self.d_half = check_scalar(state.get("d_half", self.d_half), "d_half", lo=0.0, lo_open=True)
        self.reward_range = _check_range(state.get("reward_range", self.reward_range))
        self.tracker, self.drift, self.sampler = tracker, drift, sampler
        self._key_to_id, self._keys = table, known
        self._last = {str(k): float(v) for k, v in dict(state.get("last", {})).items()}

    # ------------------------------------------------------------ parquet files
    def save_values(self, path, *, prompts: list[str] | None = None):
        """Write the `spo init-values` parquet: one row per key, successes = α, trials = α + β.

        `value` = v̂ exactly; `spo train tracker.init=offline` (and `load_values`) read the
        pseudo-counts with spec §3's smoothing, so the file carries estimates, not state
        (use `state_dict` for an exact copy).
        """
        from spo.algo.values import write_values  # the one writer of the format

        a = self.tracker.alpha.astype(np.float64)
        return write_values(path, [str(k) for k in self.keys], a, a + self.tracker.beta, prompts)

    def init_from_counts(self, keys, successes, trials) -> None:
        """Offline init (§3) of distinct `keys` (B,) from s successes in n trials (B,) each.

        v̂₀ = (s + 0.5)/(n + 1) with N₀ = 1/(1 − ρ_min) (`ValueTracker.init_from_counts`).
        Initialisation counts as a visit of the drift clock now: the first `observe` of such
        a key gets D = the drift accumulated since, not a fresh D = 0 (its prior comes from
        the policy at initialisation, which has moved since).
        """
        idx = self.index(keys)
        self.tracker.init_from_counts(idx, successes, trials)
        self.drift.mark(idx)

    def load_values(self, path) -> int:
        """Offline init (§3) from an `spo init-values` parquet, rows matched by str(key).

        Returns the number of keys initialised; keys absent from the file keep their state.
        """
        from spo.algo.values import load_values

        idx, successes, trials = load_values(path, [str(k) for k in self.keys])
        self.init_from_counts(self._to_keys(idx), successes, trials)
        return len(idx)

    def __repr__(self) -> str:
        mode = "count" if self._keys is None else "keyed"
        return (
            f"SPOState({len(self)} {mode} keys, sampler={self.sampler.mode!r}, "
            f"d_half={self.d_half})"
        )


def _check_range(reward_range) -> tuple[float, float]:
    try:
        lo, hi = reward_range
    except (TypeError, ValueError):
        raise ValueError(f"reward_range must be (lo, hi); got {reward_range!r}") from None
    lo, hi = check_scalar(lo, "reward_range lo"), check_scalar(hi, "reward_range hi")
    if not hi > lo:
        raise ValueError(f"reward_range needs lo < hi; got ({lo:g}, {hi:g})")
    return lo, hi
