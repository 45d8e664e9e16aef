"""A learned value V(x) for the critic arm: a linear head on prompt features, fit by MSE.

The critic arm replaces SPO's per-prompt tracker v̂₋₁(x) (spo-spec.md §2, §4) by a learned
function of the prompt, everything else equal. For a batch of B prompts with features h:

    z_B   = (h_B − mean_B h) / sqrt(σ² + 1e-5)      centred on the batch, running scale σ²
    V_B   = clip(b + w·z_B / D, 0, 1)               θ = [w; b], D = feature size
    A     = r − V₋₁,  Ã = (A − mean_B A)/(std_B A + 1e-8)     (`spo_advantage`, §4)
    fit:  σ² ← (1 − m)·σ² + m·var_B(h), m = max(momentum, 1/n) at the n-th batch (an even
          average of the first batches, then an EMA); then `updates_per_step` Adam steps
          on mean_B (b + w·z_B/D − r)²

V₋₁ is read BEFORE the head sees this batch's rewards (as v̂₋₁: no sample's own reward in
its baseline; the batch mean uses prompts only, so V stays a valid baseline). The head
starts at w = 0, b = init_value: V ≡ init_value for every prompt, the tracker's flat prior.

Why a linear output and MSE: least squares on θ is convex, and its minimiser, like the
tracker's, estimates E[r | x] for binary and fractional rewards alike. A sigmoid under MSE
is not: a prompt it saturates on the wrong side gets no gradient (seen on the tiny test
model: a prompt stuck at V = 1.0 with reward 0). Clipping to [0, 1] where V is read only
moves it closer to any reward in [0, 1], and keeps the advantage's range check happy.

Why centre on the batch: Ã is normalised over the batch, so a shift of V common to the
whole batch never reaches the gradient; only how V varies between the batch's prompts
does. The features of all prompts move together as the policy trains (on the tiny test
model, a new batch standardised with the previous batches' running mean had mean |z| ≈ 8,
all of one sign: a common-mode drift, which a running mean turns into a swing of every
V). Centring on the batch's own mean removes that drift; b carries the overall level.
Why scale per coordinate: what tells prompts apart lives in small-variance directions of h
(the chat template and instruction dominate it); on raw features a linear head needs huge
weights there, which Adam reaches only after hundreds of steps. The running within-batch
variance puts every direction on a unit scale. Why 1/D: Adam moves every coordinate of θ
by about lr per step whatever the gradient's scale, so one step moves V by at most
lr·(1 + mean_i |z_i|) ≈ 1.8·lr for standardised z — lr means the same for any trunk
(with 1/sqrt(D) it would be ≈ 0.8·lr·sqrt(D): 0.4 for SmolLM2's D = 576 at lr 0.02).

Pure torch, no model: the features come from `spo.policy.features.prompt_hidden`, the
orchestration from `spo.train.critic`. State (θ, σ², Adam's moments, the counts)
round-trips through numpy (`state_dict`) for checkpoints, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from spo.algo._validate import check_scalar

VAR_EPS = 1e-5  # as torch's BatchNorm


class ValueHead:
    """V_B = clip(b + w·z_B/D, 0, 1) on batch-centred, scaled features; fit by MSE, Adam.

    dim: feature size D; lr, updates_per_step: Adam's step size and steps per `fit`;
    init_value: V of every prompt before the first fit, in [0, 1]; momentum: the least
    weight of a new batch in the running feature variance σ².
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
        self.var_D = torch.ones(self.dim)
        self.batches = 0  # batches folded into var_D
        self.theta = torch.zeros(self.dim + 1)
        self.theta[-1] = init_value
        self.theta.requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.theta], lr=lr)

    @property
    def num_parameters(self) -> int:
        """Trained parameters (D + 1); Adam keeps two moments per parameter besides."""
        return self.theta.numel()

    def features(self, hidden_BD: torch.Tensor) -> torch.Tensor:
        """φ_BD = [z_B/D, 1] with z_B = (h_B − mean_B h)/sqrt(σ² + 1e-5): (B, D) -> (B, D+1)
        float32. The rows are centred on their own mean: pass the whole batch at once."""
        h = torch.as_tensor(hidden_BD).detach().float()
        if h.dim() != 2 or h.shape[1] != self.dim:
            raise ValueError(f"hidden_BD must have shape (B, {self.dim}); got {tuple(h.shape)}")
        phi = (h - h.mean(0)) / torch.sqrt(self.var_D + VAR_EPS) / self.dim
        return torch.cat([phi, torch.ones(h.shape[0], 1)], dim=1)

    def value(self, hidden_BD: torch.Tensor) -> torch.Tensor:
        """V_B = clip(θ·φ(h_B), 0, 1): a batch's (B, D) features -> (B,) float32, no gradient."""
        with torch.no_grad():
            return (self.features(hidden_BD) @ self.theta).clamp(0.0, 1.0)

    def fit(self, hidden_BD: torch.Tensor, reward_B) -> dict[str, float]:
        """Fold the batch into σ², then `updates_per_step` Adam steps on
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
        self.batches += 1
        m = max(self.momentum, 1.0 / self.batches)  # the first batch sets it
        self.var_D = (1 - m) * self.var_D + m * h.var(0, unbiased=False)

    def state_dict(self) -> dict:
        """θ, σ², Adam's moments and the counts as numpy arrays / ints (checkpointable)."""
        state = self.optimizer.state.get(self.theta, {})
        zeros = np.zeros(self.dim + 1, dtype=np.float32)
        return {
            "theta": self.theta.detach().numpy().copy(),
            "var": self.var_D.numpy().copy(),
            "batches": self.batches,
            "exp_avg": state["exp_avg"].numpy().copy() if state else zeros,
            "exp_avg_sq": state["exp_avg_sq"].numpy().copy() if state else zeros.copy(),
            "adam_step": int(state["step"]) if state else 0,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` output exactly; a head of another size is a ValueError."""
        sizes = {"theta": 1, "exp_avg": 1, "exp_avg_sq": 1, "var": 0}  # D + this
        arrays = {k: np.asarray(state[k], dtype=np.float32) for k in sizes}
        for name, arr in arrays.items():
            if arr.shape != (self.dim + sizes[name],):
                raise ValueError(
                    f"critic state {name} has shape {arr.shape}, this head needs "
                    f"({self.dim + sizes[name]},)"
                )
        with torch.no_grad():
            self.theta.copy_(torch.from_numpy(arrays["theta"]))
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
