"""Input checks shared by `spo.algo`: each failure is one `ValueError` line for a person.

The message names the argument, the bad value and (where it helps) its position, e.g.
``rewards must be in [0, 1]; got 1.5 at index 3``. Checks are vectorised (a min/max or
`isfinite` pass), so they cost microseconds on a batch and milliseconds on 10M prompts.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch


def _first_bad(bad: np.ndarray) -> str:
    idx = np.flatnonzero(np.ravel(bad))
    return f" at index {int(idx[0])}" if idx.size else ""


def to_numpy(x, name: str) -> np.ndarray:
    """Array-like or torch tensor -> numpy array (no copy when already numpy)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be array-like; got {type(x).__name__}") from e


def check_ids(ids, num_prompts: int, name: str = "ids") -> np.ndarray:
    """Integer prompt ids in [0, num_prompts) -> 1-D int64 array."""
    arr = to_numpy(ids, name)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integer prompt ids; got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_prompts:
        bad = (arr < 0) | (arr >= num_prompts)
        value = int(arr[np.flatnonzero(bad)[0]])
        raise ValueError(f"{name} out of range [0, {num_prompts}); got {value}{_first_bad(bad)}")
    return arr


def check_in_range(
    x, name: str, *, lo: float = 0.0, hi: float = 1.0, shape=None, dtype=np.float64
) -> np.ndarray:
    """Finite values in [lo, hi] -> numpy array of `dtype`, broadcast to `shape` if given."""
    arr = to_numpy(x, name)
    if arr.dtype == np.bool_:
        arr = arr.astype(dtype)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if shape is not None:
        if arr.ndim == 0:
            arr = np.broadcast_to(arr, shape)
        elif arr.shape != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}; got {arr.shape}")
    if arr.size:
        amin, amax = arr.min(), arr.max()
        if not (lo <= amin and amax <= hi):  # also catches NaN (comparisons are False)
            bad = ~((arr >= lo) & (arr <= hi))
            value = arr.reshape(-1)[np.flatnonzero(bad)[0]]
            raise ValueError(f"{name} must be in [{lo:g}, {hi:g}]; got {value}{_first_bad(bad)}")
    return arr


def check_rho(rho, shape, name: str = "rho") -> np.ndarray:
    """Forgetting factors in (0, 1] -> float64 array broadcast to `shape`."""
    arr = check_in_range(rho, name, lo=0.0, hi=1.0, shape=shape)
    if arr.size and arr.min() <= 0.0:
        bad = arr <= 0.0
        raise ValueError(
            f"{name} must be in (0, 1]; got {arr.reshape(-1)[np.flatnonzero(bad)[0]]}"
            f"{_first_bad(bad)}"
        )
    return arr


def _unwrap(x):
    """0-d numpy array / one-element tensor -> its Python scalar (checkpoints store both)."""
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return x.item()
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    return x


def check_scalar(
    x,
    name: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number within the given (open or closed) bounds -> float."""
    x = _unwrap(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise ValueError(f"{name} must be a real number; got {x!r}")
    v = float(x)
    ok = np.isfinite(v)
    if lo is not None:
        ok = ok and (v > lo if lo_open else v >= lo)
    if hi is not None:
        ok = ok and (v < hi if hi_open else v <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"{name} must be in {left}{lo_s}, {hi_s}{right}; got {x!r}")
    return v


def check_int(x, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (Python or numpy) within [lo, hi] -> int."""
    x = _unwrap(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {x!r}")
    v = int(x)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise ValueError(f"{name} must be in [{lo_s}, {hi_s}]; got {v}")
    return v


def check_rho_bounds(rho_min: float, rho_max: float) -> tuple[float, float]:
    """0 < rho_min < 1 (so N₀ = 1/(1−rho_min) is finite) and rho_min <= rho_max <= 1."""
    rho_min = check_scalar(rho_min, "rho_min", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    rho_max = check_scalar(rho_max, "rho_max", lo=0.0, hi=1.0, lo_open=True)
    if rho_max < rho_min:
        raise ValueError(f"rho_max must be >= rho_min={rho_min}; got {rho_max}")
    return rho_min, rho_max


def as_float_tensor(x, name: str) -> torch.Tensor:
    """Array-like/tensor -> floating torch tensor (float32 unless already floating)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(to_numpy(x, name))
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    return t


def check_tensor_range(
    t: torch.Tensor, name: str, *, lo: float | None = None, hi: float | None = None
) -> None:
    """Raise if `t` has a NaN/inf or a value outside [lo, hi]."""
    if t.numel() == 0:
        return
    bad = ~torch.isfinite(t)
    if lo is not None:
        bad |= t < lo
    if hi is not None:
        bad |= t > hi
    if bool(bad.any()):
        i = int(torch.nonzero(bad.reshape(-1))[0])
        if lo is None and hi is None:
            need = "finite"
        else:
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            need = f"finite and in [{lo_s}, {hi_s}]"
        raise ValueError(f"{name} must be {need}; got {t.reshape(-1)[i].item()} at index {i}")
