"""A learned value V(x) for the critic arm: a linear head on prompt features, fit by MSE.

The critic arm replaces SPO's per-prompt tracker v̂₋₁(x) (spo-spec.md §2, §4) by a learned
function of the prompt, everything else equal:

    φ(x)  = layer_norm(h(x)) / sqrt(D)       h(x): (D,) prompt features; φ: unit norm, centred
    V(x)  = σ(w·φ(x) + b)                    in (0, 1), like a success probability
    A     = r − V₋₁(x),  Ã = (A − mean_B A)/(std_B A + 1e-8)    (`spo_advantage`, §4)
    fit:  `updates_per_step` Adam steps on mean_B (V(x) − r)²  after V₋₁ was read

V₋₁ is read BEFORE the head sees this batch's rewards (as v̂₋₁: no sample's own reward in
its baseline). The head starts at w = 0, b = logit(init_value): V ≡ init_value for every
prompt, the tracker's flat prior. Normalising φ makes Adam's step size mean the same for any
trunk (hidden size, activation scale): a step of lr per coordinate moves the logit by at
most lr·sqrt(D+1). A sigmoid keeps V in [0, 1] (the advantage checks its baseline's range);
MSE (not cross-entropy) because the brief of the arm is a regression on the reward, which
may be fractional.

Pure torch, no model: the features come from `spo.policy.features.prompt_hidden`, the
orchestration from `spo.train.critic`. State (θ = [w; b] and Adam's moments and step count)
round-trips through numpy (`state_dict`) for checkpoints, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from spo.algo._validate import check_scalar


def value_features(hidden_BD: torch.Tensor) -> torch.Tensor:
    """φ_BD = [layer_norm(h)/sqrt(D), 1]: (B, D) -> (B, D+1) float32, the bias column last."""
    h = hidden_BD.detach().float()
    if h.dim() != 2:
        raise ValueError(f"hidden_BD must be 2-D (B, D); got shape {tuple(h.shape)}")
    D = h.shape[1]
    phi = F.layer_norm(h, (D,)) / math.sqrt(D)
    return torch.cat([phi, torch.ones(h.shape[0], 1)], dim=1)


class ValueHead:
    """V(x) = σ(θ·[φ(x), 1]) with θ = [w; b], fit to rewards by MSE with Adam.

    dim: feature size D; lr, updates_per_step: Adam's step size and steps per `fit`;
    init_value: V of every prompt before the first fit, in (0, 1).
    """

    def __init__(
        self,
        dim: int,
        *,
        lr: float = 0.03,
        updates_per_step: int = 4,
        init_value: float = 0.5,
    ):
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1; got {dim}")
        lr = check_scalar(lr, "lr", lo=0.0, lo_open=True)
        if int(updates_per_step) < 1:
            raise ValueError(f"updates_per_step must be >= 1; got {updates_per_step}")
        init_value = check_scalar(
            init_value, "init_value", lo=0.0, hi=1.0, lo_open=True, hi_open=True
        )
        self.dim, self.updates_per_step = int(dim), int(updates_per_step)
        self.theta = torch.zeros(self.dim + 1)
        self.theta[-1] = math.log(init_value / (1 - init_value))
        self.theta.requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.theta], lr=lr)

    @property
    def num_parameters(self) -> int:
        """Trained parameters (D + 1); Adam keeps two moments per parameter besides."""
        return self.theta.numel()

    def _check(self, hidden_BD: torch.Tensor) -> torch.Tensor:
        phi = value_features(hidden_BD)
        if phi.shape[1] != self.dim + 1:
            raise ValueError(f"hidden_BD must have {self.dim} features; got {phi.shape[1] - 1}")
        return phi

    def value(self, hidden_BD: torch.Tensor) -> torch.Tensor:
        """V_B = σ(θ·φ(h)): (B, D) features -> (B,) float32 in (0, 1), no gradient."""
        with torch.no_grad():
            return torch.sigmoid(self._check(hidden_BD) @ self.theta)

    def fit(self, hidden_BD: torch.Tensor, reward_B: torch.Tensor) -> dict[str, float]:
        """`updates_per_step` Adam steps on mean_B (V − r)²; returns the loss before the
        first and after the last step (`loss`, `fit_loss`)."""
        phi = self._check(hidden_BD)
        r = torch.as_tensor(reward_B, dtype=torch.float32).detach().reshape(-1)
        if r.shape[0] != phi.shape[0]:
            raise ValueError(f"reward_B must have shape ({phi.shape[0]},); got {tuple(r.shape)}")
        before = None
        for _ in range(self.updates_per_step):
            loss = (torch.sigmoid(phi @ self.theta) - r).pow(2).mean()
            before = float(loss.detach()) if before is None else before
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            after = float((torch.sigmoid(phi @ self.theta) - r).pow(2).mean())
        return {"loss": before, "fit_loss": after}

    def state_dict(self) -> dict:
        """θ, Adam's moments and step count as numpy arrays / an int (checkpointable)."""
        state = self.optimizer.state.get(self.theta, {})
        zeros = np.zeros(self.dim + 1, dtype=np.float32)
        return {
            "theta": self.theta.detach().numpy().copy(),
            "exp_avg": state["exp_avg"].numpy().copy() if state else zeros,
            "exp_avg_sq": state["exp_avg_sq"].numpy().copy() if state else zeros.copy(),
            "adam_step": int(state["step"]) if state else 0,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` output exactly; a head of another size is a ValueError."""
        arrays = {
            k: np.asarray(state[k], dtype=np.float32) for k in ("theta", "exp_avg", "exp_avg_sq")
        }
        for name, arr in arrays.items():
            if arr.shape != (self.dim + 1,):
                raise ValueError(
                    f"critic state {name} has shape {arr.shape}, this head needs ({self.dim + 1},)"
                )
        with torch.no_grad():
            self.theta.copy_(torch.from_numpy(arrays["theta"]))
        step = int(state["adam_step"])
        self.optimizer.state.clear()
        if step:
            self.optimizer.state[self.theta] = {
                "step": torch.tensor(float(step)),
                "exp_avg": torch.from_numpy(arrays["exp_avg"].copy()),
                "exp_avg_sq": torch.from_numpy(arrays["exp_avg_sq"].copy()),
            }
