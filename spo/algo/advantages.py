"""Advantage estimators: SPO (spo-spec.md §4) and the group baselines of §7.

    spo      A = r − v̂₋₁(x),  Ã = (A − mean_B A)/(std_B A + 1e-8)   (whole batch, unbiased std)
    none     A = r,           Ã = (A − mean_B A)/(std_B A + 1e-8)   (no-baseline ablation)
    grpo     A = (r − mean_g r)/(std_g r + 1e-6)                    (per group g, unbiased std)
    dr_grpo  A = r − mean_g r
    rloo     A = r − mean_{g∖i} r = n_g/(n_g − 1)·(r − mean_g r)

v̂₋₁ must be the tracker value read BEFORE this sample is absorbed (unbiased gradient).

Every registry entry has one calling convention,
``ADVANTAGES[name](reward_B, *, baseline_B=None, group_id_B=None) -> adv_B``; each uses the
argument it needs (`ADVANTAGE_NEEDS_BASELINE` / `ADVANTAGE_NEEDS_GROUPS`) and ignores the
other, so a trainer can pass both.

Where we deviate from the reference code (verl's GRPO) and why: a group of one sample
gets advantage 0 (verl uses mean 0, std 1 there, i.e. A = r, which is no baseline at all),
and a group whose rewards are all equal gets exactly 0 even for fractional rewards (the
float mean of equal numbers need not equal them, which would give ±1e-17/1e-6 noise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from spo.algo._validate import as_float_tensor, check_tensor_range

SPO_EPS = 1e-8  # spec §4: Ã = (A − mean)/(std + 1e-8)
GRPO_EPS = 1e-6  # spec §7: (r − mean_group)/(std_group + 1e-6)


def _rewards(reward_B) -> torch.Tensor:
    r = as_float_tensor(reward_B, "reward_B")
    if r.dim() != 1:
        raise ValueError(f"reward_B must be 1-D (B,); got shape {tuple(r.shape)}")
    check_tensor_range(r, "reward_B", lo=0.0, hi=1.0)
    return r


def _groups(group_id_B, B: int) -> tuple[torch.Tensor, int]:
    """group_id_B (B,) arbitrary ints -> (dense index in 0..G-1 (B,), G)."""
    g = group_id_B if isinstance(group_id_B, torch.Tensor) else torch.as_tensor(group_id_B)
    if g.dim() != 1 or g.shape[0] != B:
        raise ValueError(f"group_id_B must have shape ({B},); got {tuple(g.shape)}")
    if torch.is_floating_point(g) or g.dtype == torch.bool or torch.is_complex(g):
        raise ValueError(f"group_id_B must be integer group ids; got dtype {g.dtype}")
    _, inv = torch.unique(g, return_inverse=True)
    return inv, (int(inv.max()) + 1 if B else 0)


def _batch_normalize(adv_B: torch.Tensor) -> torch.Tensor:
    if adv_B.numel() < 2:  # std of one sample is undefined: no signal, not NaN
        return torch.zeros_like(adv_B)
    return (adv_B - adv_B.mean()) / (adv_B.std() + SPO_EPS)


def spo_advantage(reward_B, baseline_B, *, normalize: bool = True) -> torch.Tensor:
    """Ã_B = (A − mean_B A)/(std_B A + 1e-8) with A = r − baseline (B,) -> (B,).

    reward_B: (B,) in [0, 1]; baseline_B: (B,) tracker values v̂₋₁ read before the update.
    normalize=False returns A itself. A batch of one gives zeros.
    """
    r = _rewards(reward_B)
    b = as_float_tensor(baseline_B, "baseline_B")
    if tuple(b.shape) != tuple(r.shape):
        raise ValueError(f"baseline_B must have shape {tuple(r.shape)}; got {tuple(b.shape)}")
    check_tensor_range(b, "baseline_B")
    dtype = torch.promote_types(r.dtype, b.dtype)
    adv = r.to(dtype) - b.to(device=r.device, dtype=dtype)
    return _batch_normalize(adv) if normalize else adv


def _group_stats(r: torch.Tensor, inv: torch.Tensor, G: int):
    n_G = torch.bincount(inv, minlength=G).to(r.dtype)
    sum_G = torch.zeros(G, dtype=r.dtype, device=r.device).index_add_(0, inv, r)
    lo = torch.full((G,), float("inf"), dtype=r.dtype, device=r.device)
    hi = torch.full((G,), float("-inf"), dtype=r.dtype, device=r.device)
    lo = lo.scatter_reduce(0, inv, r, "amin")
    hi = hi.scatter_reduce(0, inv, r, "amax")
    flat_B = (lo == hi)[inv]  # all rewards of the sample's group are equal
    return n_G, sum_G, flat_B


def grpo_advantage(reward_B, group_id_B, *, scale: str | None = "std") -> torch.Tensor:
    """A_B = (r − mean_g r)/(std_g r + 1e-6) per group (scale="std"); r − mean_g r if None.

    reward_B: (B,) in [0, 1]; group_id_B: (B,) int, equal ids = same prompt.
    std is unbiased (torch.std); groups of one and equal-reward groups give exactly 0.
    scale=None is Dr. GRPO.
    """
    if scale not in ("std", None):
        raise ValueError(f"scale must be 'std' or None (Dr. GRPO); got {scale!r}")
    r = _rewards(reward_B)
    inv, G = _groups(group_id_B, r.shape[0])
    if G == 0:
        return torch.zeros_like(r)
    n_G, sum_G, flat_B = _group_stats(r, inv, G)
    dev = r - (sum_G / n_G)[inv]
    if scale == "std":
        var_G = torch.zeros_like(sum_G).index_add_(0, inv, dev * dev) / (n_G - 1).clamp(min=1)
        dev = dev / (var_G.sqrt()[inv] + GRPO_EPS)
    return torch.where(flat_B, torch.zeros_like(dev), dev)


def rloo_advantage(reward_B, group_id_B) -> torch.Tensor:
    """A_B = r − (Σ_g r − r)/(n_g − 1): leave-one-out group mean as baseline -> (B,).

    reward_B: (B,) in [0, 1]; group_id_B: (B,) int. Groups of one and equal-reward
    groups give exactly 0.
    """
    r = _rewards(reward_B)
    inv, G = _groups(group_id_B, r.shape[0])
    if G == 0:
        return torch.zeros_like(r)
    n_G, sum_G, flat_B = _group_stats(r, inv, G)
    n_B = n_G[inv]
    adv = r - (sum_G[inv] - r) / (n_B - 1).clamp(min=1)
    return torch.where(flat_B | (n_B < 2), torch.zeros_like(adv), adv)


def group_baseline(reward_B, group_id_B, *, leave_one_out: bool = False) -> torch.Tensor:
    """b_B = mean_g r, or (Σ_g r − r)/(n_g − 1) with leave_one_out=True (RLOO) -> (B,).

    reward_B: (B,) in [0, 1]; group_id_B: (B,) int. A group of one and a group whose rewards
    are all equal get b = r exactly (their advantage is 0, see grpo/rloo_advantage).
    """
    r = _rewards(reward_B)
    inv, G = _groups(group_id_B, r.shape[0])
    if G == 0:
        return r.clone()
    n_G, sum_G, flat_B = _group_stats(r, inv, G)
    n_B = n_G[inv]
    loo_B = (sum_G[inv] - r) / (n_B - 1).clamp(min=1)
    b = loo_B if leave_one_out else (sum_G / n_G)[inv]
    return torch.where(flat_B | (n_B < 2), r, b)


# ------------------------------------------------------------------------- registry
AdvantageFn = Callable[..., torch.Tensor]


def _need(name: str, arg: str, value) -> None:
    if value is None:
        raise ValueError(f"advantage {name!r} needs {arg}; got None")


def _spo(reward_B, *, baseline_B=None, group_id_B=None) -> torch.Tensor:
    _need("spo", "baseline_B (tracker values read before the update)", baseline_B)
    return spo_advantage(reward_B, baseline_B)


def _none(reward_B, *, baseline_B=None, group_id_B=None) -> torch.Tensor:
    r = _rewards(reward_B)
    return spo_advantage(r, torch.zeros_like(r))


def _grpo(reward_B, *, baseline_B=None, group_id_B=None) -> torch.Tensor:
    _need("grpo", "group_id_B", group_id_B)
    return grpo_advantage(reward_B, group_id_B, scale="std")


def _dr_grpo(reward_B, *, baseline_B=None, group_id_B=None) -> torch.Tensor:
    _need("dr_grpo", "group_id_B", group_id_B)
    return grpo_advantage(reward_B, group_id_B, scale=None)


def _rloo(reward_B, *, baseline_B=None, group_id_B=None) -> torch.Tensor:
    _need("rloo", "group_id_B", group_id_B)
    return rloo_advantage(reward_B, group_id_B)


class UnknownNameError(ValueError, KeyError):
    """Unknown registry name; a ValueError (and a KeyError, for `name in`/`[]` code)."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class Registry(dict):
    """A dict that answers an unknown name with the list of valid ones."""

    def __init__(self, kind: str, entries: dict):
        super().__init__(entries)
        self.kind = kind

    def __missing__(self, name):
        raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self))}")


ADVANTAGES: Registry = Registry(
    "advantage",
    {"spo": _spo, "none": _none, "grpo": _grpo, "dr_grpo": _dr_grpo, "rloo": _rloo},
)
ADVANTAGE_NEEDS_GROUPS = frozenset({"grpo", "dr_grpo", "rloo"})
# The baseline b of A = r − b each entry subtracts (before GRPO's std scaling and SPO's batch
# normalisation): "given" = baseline_B (SPO's v̂₋₁), "zero", "group_mean", "leave_one_out".
# Every built-in entry has a row (tests/algo/test_advantages.py checks it); an entry added
# elsewhere without one gets `advantage_baseline`'s `default`.
ADVANTAGE_BASELINE = {
    "spo": "given",
    "none": "zero",
    "grpo": "group_mean",
    "dr_grpo": "group_mean",
    "rloo": "leave_one_out",
}
ADVANTAGE_NEEDS_BASELINE = frozenset({"spo"})


def advantage_baseline(
    name: str, reward_B, *, baseline_B=None, group_id_B=None, default: str | None = None
) -> torch.Tensor:
    """b_B (B,) float: the baseline ADVANTAGES[name] subtracts from reward_B, so that the
    variance ratio Var(r − b)/Var(r) of different algorithms compares like with like.

    The kind is ADVANTAGE_BASELINE[name], else `default` (one of its kinds; the trainer
    passes "group_mean" for grouped algorithms, "given" otherwise)."""
    ADVANTAGES[name]  # unknown name -> the registry's error listing the valid ones
    kind = ADVANTAGE_BASELINE.get(name, default)
    kinds = sorted(set(ADVANTAGE_BASELINE.values()))
    if kind not in kinds:
        raise ValueError(
            f"advantage {name!r} has no ADVANTAGE_BASELINE row; add one or pass default= "
            f"one of {', '.join(kinds)} (got {kind!r})"
        )
    r = _rewards(reward_B)
    if kind == "given":
        _need(name, "baseline_B", baseline_B)
        b = as_float_tensor(baseline_B, "baseline_B")
        if tuple(b.shape) != tuple(r.shape):
            raise ValueError(f"baseline_B must have shape {tuple(r.shape)}; got {tuple(b.shape)}")
        return b.to(r.dtype)
    if kind == "zero":
        return torch.zeros_like(r)
    _need(name, "group_id_B", group_id_B)
    return group_baseline(r, group_id_B, leave_one_out=kind == "leave_one_out")


def get_advantage(name: str) -> AdvantageFn:
    """ADVANTAGES[name]: `fn(reward_B, *, baseline_B=None, group_id_B=None) -> adv_B`."""
    return ADVANTAGES[name]
