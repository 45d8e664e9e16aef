"""Storage for the reference code's "replay" divergence estimator (spec §2).

For every prompt it keeps the response sampled at the prompt's last visit and that
response's per-token log-probs under the policy right after that step. After a later
update the trainer re-scores the stored response; D = token-mean |Δ log p|. This costs
one stored response per visited prompt (reported as `rho/replay_bytes`) and two extra
no-grad forward passes per step — the price of the reference estimator, which is why
`tracker.rho=drift` (O(1) per prompt) is the default.
"""

from __future__ import annotations

import numpy as np


class ReplayStore:
    """prompt index -> (completion token ids int32 (T,), log-probs float32 (T,))."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __contains__(self, prompt: object) -> bool:
        return int(prompt) in self._items  # type: ignore[call-overload]

    def __len__(self) -> int:
        return len(self._items)

    def get(self, prompt: int) -> tuple[np.ndarray, np.ndarray]:
        return self._items[prompt]

    def put(self, prompt: int, tokens_T: np.ndarray, logp_T: np.ndarray) -> None:
        if tokens_T.shape != logp_T.shape:
            raise ValueError(f"tokens {tokens_T.shape} and logp {logp_T.shape} differ in shape")
        self._items[prompt] = (tokens_T.astype(np.int32), logp_T.astype(np.float32))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes + lp.nbytes for t, lp in self._items.values())

    def state_dict(self) -> dict[str, np.ndarray]:
        prompt_idx = np.array(sorted(self._items), dtype=np.int64)
        lengths = np.array([len(self._items[k][0]) for k in prompt_idx], dtype=np.int64)

        def cat(j: int, dt) -> np.ndarray:
            if not len(prompt_idx):
                return np.zeros(0, dt)
            return np.concatenate([self._items[k][j] for k in prompt_idx]).astype(dt)

        return {
            "prompt_idx": prompt_idx,
            "length": lengths,
            "tokens": cat(0, np.int32),
            "logp": cat(1, np.float32),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self._items = {}
        # "prompt" is the key checkpoints written before the one-name-per-concept rename use
        prompt_idx = state.get("prompt_idx", state.get("prompt", ())) if state else ()
        if len(prompt_idx) == 0:
            return
        bounds = np.concatenate([[0], np.cumsum(state["length"])])
        for i, key in enumerate(prompt_idx):
            lo, hi = bounds[i], bounds[i + 1]
            self._items[int(key)] = (state["tokens"][lo:hi].copy(), state["logp"][lo:hi].copy())
