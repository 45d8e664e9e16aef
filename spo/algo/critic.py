"""A learned value V(x) for the critic arm: a linear head on prompt features, fit by MSE.

The critic arm replaces SPO's per-prompt tracker v̂₋₁(x) (spo-spec.md §2, §4) by a learned
function of the prompt, everything else equal:

    φ(x)  = [(h(x) − μ) / sqrt(σ² + 1e-5) / D, 1]     h(x): (D,) prompt features
    V(x)  = clip(θ·φ(x), 0, 1),  θ = [w; b]                   a success probability
    A     = r − V₋₁(x),  Ã = (A − mean_B A)/(std_B A + 1e-8)    (`spo_advantage`, §4)
    fit:  μ, σ² ← EMA of the batch's feature mean / variance (momentum 0.1; the first
          batch sets them), then `updates_per_step` Adam steps on mean_B (θ·φ(x) − r)²

V₋₁ is read BEFORE the head sees this batch's rewards (as v̂₋₁: no sample's own reward in
its baseline). The head starts at w = 0, b = init_value: V ≡ init_value for every
prompt, the tracker's flat prior.

Why a linear output and MSE: least squares on θ·φ is convex, and its minimiser, like the
tracker's, estimates E[r | x] for binary and fractional rewards alike. A sigmoid under MSE
is not: a prompt it saturates on the wrong side gets no gradient (seen on the tiny test
model: a prompt stuck at V = 1.0 with reward 0). Clipping to [0, 1] where V is read only
moves it closer to any reward in [0, 1], and keeps the advantage's range check happy.

Why standardise per coordinate: the final hidden states of different prompts share a large
common component (chat template, instruction), and what tells prompts apart lives in
small-variance directions; on raw (or merely unit-norm) features a linear head needs huge
weights there, which Adam reaches only after hundreds of steps (on the tiny test model it
could not separate two halves of the prompts in 150 fits). Running statistics (BatchNorm's
eval-mode normalisation, without affine) put every direction on a unit scale. Adam moves
every coordinate of θ by about lr per step whatever the gradient's scale, so the 1/D
makes lr mean the same for any trunk: one step moves V(x) by at most lr·(1 + mean_i |z_i|)
≈ 1.8·lr for standardised z (with 1/sqrt(D) it would be ≈ 0.8·lr·sqrt(D): 0.4 for
SmolLM2's D = 576 at lr 0.02, an overshoot on the first steps). The statistics are
running, not the batch's own, so V(x) of a prompt does not depend on which other prompts
share its batch.

Pure torch, no model: the features come from `spo.policy.features.prompt_hidden`, the
orchestration from `spo.train.critic`. State (θ, μ, σ², Adam's moments and step count)
round-trips through numpy (`state_dict`) for checkpoints, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from spo.algo._validate import check_scalar

VAR_EPS = 1e-5  # as torch's BatchNorm


class ValueHead:
    """V(x) = clip(θ·φ(x), 0, 1) on running-standardised features, fit by MSE with Adam.

    dim: feature size D; lr, updates_per_step: Adam's step size and steps per `fit`;
    init_value: V of every prompt before the first fit, in (0, 1); momentum: weight of a
    new batch in the running feature mean / variance.
    """

    def __init__(
        self,
        dim: int,
        *,
        lr: float = 0.02,
        updates_per_step: int = 4,
        init_value: float = 0.5,
        momentum: float = 0.1,
    ):
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1; got {dim}")
        lr = check_scalar(lr, "lr", lo=0.0, lo_open=True)
        if int(updates_per_step) < 1:
            raise ValueError(f"updates_per_step must be >= 1; got {updates_per_step}")
        init_value = check_scalar(init_value, "init_value", lo=0.0, hi=1.0)
        self.momentum = check_scalar(momentum, "momentum", lo=0.0, hi=1.0, lo_open=True)
        self.dim, self.updates_per_step = int(dim), int(updates_per_step)
        self.mean_D, self.var_D = torch.zeros(self.dim), torch.ones(self.dim)
        self.batches = 0  # batches folded into mean_D / var_D
        self.theta = torch.zeros(self.dim + 1)
        self.theta[-1] = init_value
        self.theta.requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.theta], lr=lr)

    @property
    def num_parameters(self) -> int:
        """Trained parameters (D + 1); Adam keeps two moments per parameter besides."""
        return self.theta.numel()

    def features(self, hidden_BD: torch.Tensor) -> torch.Tensor:
        """φ_BD = [(h − μ)/sqrt(σ² + 1e-5)/D, 1]: (B, D) -> (B, D+1) float32."""
        h = torch.as_tensor(hidden_BD).detach().float()
        if h.dim() != 2 or h.shape[1] != self.dim:
            raise ValueError(f"hidden_BD must have shape (B, {self.dim}); got {tuple(h.shape)}")
        phi = (h - self.mean_D) / torch.sqrt(self.var_D + VAR_EPS) / self.dim
        return torch.cat([phi, torch.ones(h.shape[0], 1)], dim=1)

    def value(self, hidden_BD: torch.Tensor) -> torch.Tensor:
        """V_B = clip(θ·φ(h), 0, 1): (B, D) features -> (B,) float32, no gradient."""
        with torch.no_grad():
            return (self.features(hidden_BD) @ self.theta).clamp(0.0, 1.0)

    def fit(self, hidden_BD: torch.Tensor, reward_B) -> dict[str, float]:
        """Fold the batch into μ, σ², then `updates_per_step` Adam steps on
        mean_B (θ·φ(h) − r)²; returns mean_B (V − r)² of V as `value` gives it, before
        (`loss`) and after the fit (`fit_loss`)."""
        r = torch.as_tensor(reward_B, dtype=torch.float32).detach().reshape(-1)
        if r.shape[0] != len(hidden_BD):
            raise ValueError(f"reward_B must have shape ({len(hidden_BD)},); got {tuple(r.shape)}")
        before = float((self.value(hidden_BD) - r).pow(2).mean())
        self._fold(hidden_BD)
        phi = self.features(hidden_BD)
        for _ in range(self.updates_per_step):
            loss = (phi @ self.theta - r).pow(2).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return {"loss": before, "fit_loss": float((self.value(hidden_BD) - r).pow(2).mean())}

    def _fold(self, hidden_BD: torch.Tensor) -> None:
        h = torch.as_tensor(hidden_BD).detach().float()
        mean, var = h.mean(0), h.var(0, unbiased=False)
        m = 1.0 if self.batches == 0 else self.momentum
        self.mean_D = (1 - m) * self.mean_D + m * mean
        self.var_D = (1 - m) * self.var_D + m * var
        self.batches += 1

    def state_dict(self) -> dict:
        """θ, μ, σ², Adam's moments and the counts as numpy arrays / ints (checkpointable)."""
        state = self.optimizer.state.get(self.theta, {})
        zeros = np.zeros(self.dim + 1, dtype=np.float32)
        return {
            "theta": self.theta.detach().numpy().copy(),
            "mean": self.mean_D.numpy().copy(),
            "var": self.var_D.numpy().copy(),
            "batches": self.batches,
            "exp_avg": state["exp_avg"].numpy().copy() if state else zeros,
            "exp_avg_sq": state["exp_avg_sq"].numpy().copy() if state else zeros.copy(),
            "adam_step": int(state["step"]) if state else 0,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` output exactly; a head of another size is a ValueError."""
        sizes = {"theta": 1, "exp_avg": 1, "exp_avg_sq": 1, "mean": 0, "var": 0}  # D + this
        arrays = {k: np.asarray(state[k], dtype=np.float32) for k in sizes}
        for name, arr in arrays.items():
            if arr.shape != (self.dim + sizes[name],):
                raise ValueError(
                    f"critic state {name} has shape {arr.shape}, this head needs "
                    f"({self.dim + sizes[name]},)"
                )
        with torch.no_grad():
            self.theta.copy_(torch.from_numpy(arrays["theta"]))
        self.mean_D = torch.from_numpy(arrays["mean"].copy())
        self.var_D = torch.from_numpy(arrays["var"].copy())
        self.batches = int(state["batches"])
        step = int(state["adam_step"])
        self.optimizer.state.clear()
        if step:
            self.optimizer.state[self.theta] = {
                "step": torch.tensor(float(step)),
                "exp_avg": torch.from_numpy(arrays["exp_avg"].copy()),
                "exp_avg_sq": torch.from_numpy(arrays["exp_avg_sq"].copy()),
            }
