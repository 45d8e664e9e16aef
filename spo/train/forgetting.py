"""The forgetting factor ρ of the trainer: one estimator object per `tracker.rho` mode.

The math is `spo.algo.forgetting` (spo-spec.md §2); this module feeds it the trainer's
policy. Every estimator answers once per step, after the policy update and before the
tracker absorbs the step's rewards:

    rho_kw, stats = estimator.step(prompt_idx_B, batch, rollouts, old_logp_BT)
    spo.observe(prompt_idx_B, reward_B, step=step, **rho_kw)

`rho_kw` are `SPOState.observe` arguments (`rho=` or `divergence=`, or none: the drift
clock), `stats` the estimator's step metrics (`rho/...`). Each estimator checkpoints only
its own state under its own key of the trainer's state (`key`, None = nothing to keep):

- `ConstantRho`  ρ = tracker.rho_constant; no state.
- `DriftRho`     cumulative policy drift on a few re-scored sequences of the batch; state:
                 SPOState's drift clock (key "drift", `DriftTracker.state_dict`).
- `ReplayRho`    the reference code's estimator: re-score the response stored at each
                 prompt's last visit; state: the `ReplayStore` plus the drift clock that
                 serves offline-initialised prompts' first visits (key "replay").

Checkpoints of the code before these objects held both "drift" and "replay" whatever the
mode; they load as they are (the active estimator reads its key, the other is ignored). A
key missing from a checkpoint (a run resumed under another mode) means the estimator's
fresh state, as an unused estimator's state was in those old checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from spo.algo import SPOState, policy_drift, replay_divergence
from spo.policy.batch import pack
from spo.train.replay import ReplayStore


class Scorer(Protocol):  # the trainer's updater (local or the Ray trainer group)
    def logp(self, batch) -> torch.Tensor:
        """Per-token log-probs (B, T) of a packed batch under the current policy, no grad."""


class RhoEstimator(Protocol):
    key: str | None  # checkpoint key of its state; None = stateless

    def step(self, prompt_idx_B, batch, rollouts, old_logp_BT) -> tuple[dict, dict[str, float]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ConstantRho:
    """ρ = `rho` for every sample."""

    key = None

    def __init__(self, rho: float):
        self.rho = rho

    def step(self, prompt_idx_B, batch, rollouts, old_logp_BT) -> tuple[dict, dict[str, float]]:
        return {"rho": self.rho}, {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DriftRho:
    """d = policy_drift on the first `sample` sequences of the step's batch, added to
    SPOState's drift clock; `observe` then reads D(x) from the clock and marks x."""

    key = "drift"

    def __init__(self, spo: SPOState, scorer: Scorer, sample: int):
        self.spo, self.scorer, self.sample = spo, scorer, sample

    def step(self, prompt_idx_B, batch, rollouts, old_logp_BT) -> tuple[dict, dict[str, float]]:
        n = min(self.sample, len(prompt_idx_B))
        sub = batch.select(torch.arange(n))
        new = self.scorer.logp(sub)
        step_drift = float(
            policy_drift(new, old_logp_BT[:n, : new.shape[1]], sub.completion_mask_BT)
        )
        self.spo.advance(step_drift)  # observe() reads D(x) from the clock and marks x
        return {}, {"rho/step_drift": step_drift}

    def state_dict(self) -> dict:
        return self.spo.drift.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.spo.drift.load_state_dict(state)


class ReplayRho:
    """D(x) = replay_divergence of the response stored at x's last visit, re-scored now;
    then this step's responses and their post-update log-probs replace the stored ones.

    A prompt initialised offline (`SPOState.init_from_counts`) has no stored response at
    its first visit; its D is the drift accumulated since initialisation on SPOState's
    drift clock, which this estimator advances every step by `policy_drift` of the whole
    batch (the before/after log-probs it computes anyway, so it costs nothing extra)."""

    key = "replay"

    def __init__(
        self, spo: SPOState, scorer: Scorer, prompt_tokens: Sequence[list[int]], pad_id: int
    ):
        self.spo, self.scorer, self.prompt_tokens, self.pad_id = spo, scorer, prompt_tokens, pad_id
        self.store = ReplayStore()

    def step(self, prompt_idx_B, batch, rollouts, old_logp_BT) -> tuple[dict, dict[str, float]]:
        d_B = np.zeros(len(prompt_idx_B), dtype=np.float32)
        known = [i for i, idx in enumerate(prompt_idx_B) if idx in self.store]
        with torch.no_grad():
            if known:
                stored = [self.store.get(int(prompt_idx_B[i])) for i in known]
                old = pack(
                    [self.prompt_tokens[prompt_idx_B[i]] for i in known],
                    [s[0].tolist() for s in stored],
                    pad_id=self.pad_id,
                )
                new = self.scorer.logp(old)
                stored_BT = torch.zeros_like(new)
                for row, (_, lp) in enumerate(stored):
                    stored_BT[row, : len(lp)] = torch.from_numpy(lp)
                d_B[known] = replay_divergence(new, stored_BT, old.completion_mask_BT).numpy()
            after = self.scorer.logp(batch)
        mask_BT = batch.completion_mask_BT
        self.spo.advance(float(policy_drift(after, old_logp_BT[:, : after.shape[1]], mask_BT)))
        fresh_B = np.ones(len(prompt_idx_B), dtype=bool)
        fresh_B[known] = False
        if fresh_B.any():  # never stored: D since offline init on the drift clock (0 if none)
            d_B[fresh_B] = self.spo.drift.divergence(np.asarray(prompt_idx_B)[fresh_B])
        lengths = mask_BT.sum(1).tolist()
        for row, idx in enumerate(prompt_idx_B):
            n_tok = int(lengths[row])
            self.store.put(
                int(idx),
                np.asarray(rollouts.completion_ids[row], dtype=np.int32),
                after[row, :n_tok].numpy().astype(np.float32),
            )
        return {"divergence": d_B}, {"rho/replay_bytes": float(self.store.nbytes)}

    def state_dict(self) -> dict:
        return {**self.store.state_dict(), "drift": self.spo.drift.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.store.load_state_dict(state)
        if "drift" in state:  # absent in checkpoints from before offline-init drift
            self.spo.drift.load_state_dict(state["drift"])


def make_estimator(
    mode: str,
    *,
    spo: SPOState,
    scorer: Scorer,
    prompt_tokens: Sequence[list[int]],
    pad_id: int,
    rho_constant: float,
    drift_sample: int,
) -> RhoEstimator:
    """The estimator of `tracker.rho` = constant | drift | replay (only that one is built)."""
    if mode == "constant":
        return ConstantRho(rho_constant)
    if mode == "drift":
        return DriftRho(spo, scorer, drift_sample)
    if mode == "replay":
        return ReplayRho(spo, scorer, prompt_tokens, pad_id)
    raise ValueError(f"tracker.rho must be constant, drift or replay; got {mode!r}")
