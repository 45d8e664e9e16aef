"""Prioritised prompt sampling (spo-spec.md §5).

    w(x) = sqrt(v̂(x)·(1 − v̂(x))) + ε,   ε = 0.05

Each step draws k distinct prompts, weighted without replacement (successive sampling:
each next prompt with probability ∝ w among those not yet drawn). Vectorised with
Efraimidis–Spirakis exponential keys: key_i = E_i / w_i, E_i ~ Exp(1) i.i.d.; the k
smallest keys are a successive-sampling draw, and sorting them gives the draw order.
One pass of float32 RNG + division + `np.argpartition`: ~0.1 s for 10M prompts.

Where we deviate from the reference code and why:
- Prompts without an estimate are sampleable (their tracker value is the prior 0.5, the
  largest weight); the reference silently gives them weight 0, so they are never seen.
- Zero weights (only possible with ε = 0 and v̂ ∈ {0, 1}) are drawn last, uniformly,
  when fewer than k prompts have positive weight, instead of failing.
- Keys are float32: 24-bit keys make exact ties among the k smallest of 10M possible but
  vanishingly rare; a tie is broken by `argpartition`, not at random (bias < 1e-6).

`mode="uniform"` (GRPO) draws k distinct prompts uniformly. The RNG (numpy PCG64) state is
in `state_dict()`, so a resumed run draws exactly the prompts an uninterrupted run would.
"""

from __future__ import annotations

import numpy as np

from spo.algo._validate import check_ids, check_in_range, check_int, check_scalar, to_numpy

MODES = ("priority", "uniform")


def priority_weights(values, eps: float = 0.05) -> np.ndarray:
    """w_P = sqrt(v(1 − v)) + eps for tracker values (P,) in [0, 1] -> float32 (P,)."""
    eps = check_scalar(eps, "eps", lo=0.0)
    v = check_in_range(values, "values", dtype=np.float32)
    w = np.subtract(np.float32(1.0), v, dtype=np.float32)
    w *= v
    np.sqrt(w, out=w)
    w += np.float32(eps)
    return w


class PrioritySampler:
    """Draw k distinct prompt ids per step, ∝ sqrt(v̂(1−v̂)) + eps (or uniformly).

    Deterministic given (seed, state): same values and k -> same ids.
    """

    def __init__(self, eps: float = 0.05, seed: int = 0, mode: str = "priority"):
        self.eps = check_scalar(eps, "eps", lo=0.0)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode = mode
        self.seed = check_int(seed, "seed", lo=0)
        self._rng = np.random.Generator(np.random.PCG64(self.seed))

    def draw(self, values, k: int, *, eligible=None) -> np.ndarray:
        """k distinct prompt ids (k,) int64, in draw order; P(next = x) ∝ w(x) among the rest.

        values: (P,) tracker values v̂ in [0, 1] (only the length is used in uniform mode).
        eligible: optional (P,) bool mask or (M,) distinct id array restricting the draw.
        """
        values = to_numpy(values, "values")
        if values.ndim != 1:
            raise ValueError(f"values must be 1-D (num_prompts,); got shape {values.shape}")
        P = values.shape[0]
        cand = self._eligible(eligible, P)
        m = P if cand is None else cand.shape[0]
        k = check_int(k, "k", lo=0)
        if k > m:
            raise ValueError(f"k={k} exceeds the population of {m} eligible prompts")
        if k == 0:
            return np.empty(0, dtype=np.int64)
        if self.mode == "uniform":
            picked = self._rng.choice(m, size=k, replace=False, shuffle=True).astype(np.int64)
        else:
            v = values if cand is None else values[cand]
            picked = self._weighted(priority_weights(v, self.eps), k)
        return picked if cand is None else cand[picked]

    def _weighted(self, w: np.ndarray, k: int) -> np.ndarray:
        m = w.shape[0]
        keys = self._rng.standard_exponential(m, dtype=np.float32)
        with np.errstate(divide="ignore"):
            np.divide(keys, w, out=keys)  # w = 0 -> inf: drawn only after all w > 0
        top = np.argpartition(keys, k - 1)[:k] if k < m else np.arange(m)
        top = top[np.argsort(keys[top], kind="stable")]
        n_pos = int(np.count_nonzero(np.isfinite(keys[top])))
        if n_pos < k:  # fewer than k positive weights: fill uniformly from the zero ones
            zero = np.flatnonzero(w == 0)
            top = np.concatenate([top[:n_pos], self._rng.permutation(zero)[: k - n_pos]])
        return top.astype(np.int64, copy=False)

    @staticmethod
    def _eligible(eligible, P: int) -> np.ndarray | None:
        if eligible is None:
            return None
        e = to_numpy(eligible, "eligible")
        if e.dtype == np.bool_:
            if e.shape != (P,):
                raise ValueError(f"eligible mask must have shape ({P},); got {e.shape}")
            return np.flatnonzero(e)
        ids = check_ids(e, P, name="eligible")
        if ids.size and np.unique(ids).size != ids.size:
            raise ValueError("eligible ids must be distinct; got repeated ids")
        return ids

    # ----------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """Settings and the PCG64 state as plain numpy arrays / scalars (JSON-safe)."""
        st = self._rng.bit_generator.state
        s, inc = st["state"]["state"], st["state"]["inc"]
        mask = (1 << 64) - 1
        words = [s >> 64, s & mask, inc >> 64, inc & mask]
        return {
            "eps": self.eps,
            "seed": self.seed,
            "mode": self.mode,
            "rng_state": np.array(words, dtype=np.uint64),  # [state_hi, state_lo, inc_hi, inc_lo]
            "rng_has_uint32": int(st["has_uint32"]),
            "rng_uinteger": int(st["uinteger"]),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore settings and RNG from `state_dict()`; ValueError if it does not fit."""
        keys = ("eps", "seed", "mode", "rng_state", "rng_has_uint32", "rng_uinteger")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"sampler state lacks keys {missing}; got {sorted(state)}")
        words = to_numpy(state["rng_state"], "state['rng_state']")
        if words.shape != (4,) or words.dtype != np.uint64:
            raise ValueError(
                f"sampler state 'rng_state' must be 4 uint64 words; got {words.dtype} {words.shape}"
            )
        mode = str(state["mode"])
        if mode not in MODES:
            raise ValueError(f"sampler state mode must be one of {', '.join(MODES)}; got {mode!r}")
        eps = check_scalar(state["eps"], "eps", lo=0.0)
        seed = check_int(state["seed"], "seed", lo=0)
        w = [int(x) for x in words]
        bitgen = np.random.PCG64()
        bitgen.state = {
            "bit_generator": "PCG64",
            "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
            "has_uint32": check_int(state["rng_has_uint32"], "rng_has_uint32", lo=0, hi=1),
            "uinteger": check_int(state["rng_uinteger"], "rng_uinteger", lo=0, hi=2**32 - 1),
        }
        self._rng = np.random.Generator(bitgen)
        self.eps, self.seed, self.mode = eps, seed, mode

    def __repr__(self) -> str:
        return f"PrioritySampler(eps={self.eps}, seed={self.seed}, mode={self.mode!r})"
