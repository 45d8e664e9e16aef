"""Tracker diagnostics: how hard every training prompt currently is, and how well we know it.

SPO's value tracker holds, for free, a success estimate v̂ = α/(α+β) and an effective
sample count N = α+β for every training prompt (spo-spec.md §2). From a checkpoint's
tracker state this module computes, with no model calls:

- histograms of v̂, N and — with the drift estimator — of the ρ each prompt would get if
  it were drawn now, ρ = clip(2^(−D/D_half), ρ_min, ρ_max) with D = S_now − S_last(x);
- the learnability frontier: the share of prompts with 0.1 <= v̂ <= 0.9 (both ends
  included), where a single sample still carries signal (|A| = |r − v̂| >= 0.1);
- the sampler's concentration (spec §5): for q = w/Σw, w = sqrt(v̂(1−v̂)) + ε (one draw;
  the trainer draws k distinct prompts per step by successive sampling from the same q)
      entropy H = −Σ q log q (nats), normalised H/log P, perplexity exp(H),
      Kish effective sample size ESS = (Σw)²/Σw² = 1/Σq²  (P when uniform);
- a parquet export of the tracker (prompt_id, prompt, value, count, last_step, ...).

Calibration scores v̂ against *fresh* rewards r_xj (n new samples per prompt from the
policy of the checkpoint, `spo eval RUN --calibration n`), over P sampled prompts; p̂_x is
the fresh pass rate of prompt x, ō the mean of all fresh rewards:
      Brier = mean_{x,j} (v̂_x − r_xj)²        (the proper score on individual outcomes)
- Murphy decomposition over equal-width bins b of v̂ on [0, 1] (n_b/n the bin's share,
  f̄_b its mean v̂, ō_b its mean fresh reward):
      REL = Σ_b (n_b/n)(f̄_b − ō_b)²      reliability: lag / miscalibration (lower is better)
      RES = Σ_b (n_b/n)(ō_b − ō)²        resolution: how far v̂ sorts prompts (higher better)
      UNC = mean (r − ō)²                 uncertainty (= ō(1 − ō) for binary r)
  REL − RES + UNC is exactly the Brier score of the binned forecast (every v̂ replaced by
  its bin mean f̄_b); the Brier score of v̂ itself adds the within-bin terms of Stephenson
  et al. (2008): Brier = REL − RES + UNC + WBV − WBC, WBV = Σ_b (n_b/n) var_b(v̂),
  WBC = 2 Σ_b (n_b/n) cov_b(v̂, r). Both identities are exact (tested).
- Discrimination: `auc`, the Mann–Whitney AUC of v̂ against the fresh per-sample outcomes
  (ties 1/2; 0.5 = v̂ does not rank prompts), and the Pearson / Spearman correlation of
  v̂ with p̂. `auc_ceiling` is the AUC of p̂ itself against the same outcomes: not a
  predictor (it has seen them), only the most any per-prompt score could reach here.
- Reference predictor: one constant for every prompt that is available *without* the fresh
  samples — by default (in `spo eval`) the tracker's own mean v̂ over the prompts it has
  seen. It carries the tracker's knowledge of the overall level (and shares its lag), so
  `brier_skill` = 1 − Brier / Brier(reference) measures what the per-prompt differences
  in v̂ add. (The old `brier_constant`, the mean of the very rewards being scored, was an
  in-sample oracle that no predictor can know in advance; it is no longer reported.)
  A prompt-independent prior such as the online init 0.5 would be easier to beat and
  would mostly measure the overall level, which RES and the AUC already separate out.
- `mse` = mean_x (v̂_x − p̂_x)² (includes p̂'s own noise ≈ p̂(1−p̂)/n); ECE =
  Σ_b (n_b/n)|f̄_b − ō_b|. v̂ tracks the pass rate of *recent* policies (forgetting-
  weighted), so a policy that is still improving shows up as v̂ below p̂: that lag is in
  REL and in the reliability diagram, not in RES or the AUC.

`write_diagnostics(checkpoint_dir, run_dir)` is the cheap entry the trainer calls at each
checkpoint: it writes `diagnostics.json` and `tracker.parquet` into the checkpoint and
appends the scalar summary to `RUN_DIR/diagnostics.jsonl` (kept when old checkpoints are
rotated away; `spo report` plots it).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from spo.algo.sampler import priority_weights

FRONTIER = (0.1, 0.9)
VALUE_BINS = 20
CALIBRATION_BINS = 10


# ----------------------------------------------------------------------- pure pieces
def histogram(x, bins: int, lo: float, hi: float) -> dict:
    """Equal-width histogram of x (n,) on [lo, hi] (values outside are clipped in)."""
    x = np.clip(np.asarray(x, dtype=np.float64), lo, hi)
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def frontier_share(value_P, lo: float = FRONTIER[0], hi: float = FRONTIER[1]) -> float:
    """Share of prompts with lo <= v̂ <= hi; nan for no prompts."""
    v = np.asarray(value_P, dtype=np.float64)
    if v.size == 0:
        return math.nan
    return float(np.mean((v >= lo) & (v <= hi)))


def sampler_stats(value_P, eps: float = 0.05, mode: str = "priority") -> dict:
    """Entropy, perplexity and Kish ESS of one draw from the sampler over P prompts.

    mode "priority": q ∝ sqrt(v̂(1−v̂)) + eps; "uniform": q = 1/P (GRPO's sampler).
    """
    v = np.asarray(value_P, dtype=np.float64)
    P = v.size
    if P == 0:
        return {
            "mode": mode,
            "entropy": math.nan,
            "entropy_norm": math.nan,
            "perplexity": math.nan,
            "ess": math.nan,
            "ess_fraction": math.nan,
        }
    if mode == "uniform":
        w_P = np.ones(P)
    else:
        w_P = priority_weights(v.astype(np.float32), eps=eps).astype(np.float64)
    total = w_P.sum()
    if total <= 0:  # eps = 0 and every v̂ in {0, 1}: the sampler falls back to uniform
        w_P, total = np.ones(P), float(P)
    q_P = w_P / total
    nz = q_P > 0
    entropy = float(-(q_P[nz] * np.log(q_P[nz])).sum())
    ess = float(total**2 / (w_P**2).sum())
    return {
        "mode": mode,
        "entropy": entropy,
        "entropy_norm": entropy / math.log(P) if P > 1 else 1.0,
        "perplexity": math.exp(entropy),
        "ess": ess,
        "ess_fraction": ess / P,
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of x (n,), ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def pearson(x, y) -> float:
    """Pearson correlation of x, y (n,); nan when n < 2 or either is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of average-tie ranks); nan as `pearson`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2:
        return math.nan
    return pearson(_ranks(x), _ranks(y))


def auc(score_P, reward_PN) -> float:
    """Mann–Whitney AUC of a per-prompt score against per-sample outcomes, ties = 1/2.

    AUC = Σ_ij r_i (1 − r_j) [1(s_i > s_j) + ½·1(s_i = s_j)] / (Σ_i r_i · Σ_j (1 − r_j))
    over all samples i, j (sample i of prompt x has score s_x): for binary r, the chance
    that a random success outscores a random failure; a fractional r counts as r of a
    success and 1 − r of a failure. nan when there are no successes or no failures.
    """
    s = np.asarray(score_P, dtype=np.float64)
    r = np.asarray(reward_PN, dtype=np.float64)
    pos_P, neg_P = r.sum(1), (1 - r).sum(1)
    total = pos_P.sum() * neg_P.sum()
    if total <= 0:
        return math.nan
    uniq, inverse = np.unique(s, return_inverse=True)
    pos_U = np.bincount(inverse, weights=pos_P, minlength=uniq.size)
    neg_U = np.bincount(inverse, weights=neg_P, minlength=uniq.size)
    below_U = np.cumsum(neg_U) - neg_U  # failures with a strictly lower score
    return float((pos_U * (below_U + 0.5 * neg_U)).sum() / total)


def calibration(
    value_P, reward_PN, n_bins: int = CALIBRATION_BINS, *, reference: float | None = None
) -> dict:
    """v̂ (P,) scored against fresh rewards (P, N) in [0, 1]; see the module docstring.

    reference: the constant the skill score compares with, a prediction made without the
    fresh samples (`spo eval` passes the tracker's mean v̂ over its seen prompts); None:
    the mean of `value_P`. Bins are equal-width on [0, 1]; prompt x falls in bin
    min(floor(v̂·n_bins), n_bins − 1). Empty bins are reported with count 0 and null means.
    """
    v = np.asarray(value_P, dtype=np.float64)
    r = np.asarray(reward_PN, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != v.shape[0] or r.shape[1] == 0 or v.ndim != 1:
        raise ValueError(f"need value_P (P,) and reward_PN (P, N >= 1); got {v.shape}, {r.shape}")
    if v.size == 0:
        raise ValueError("calibration needs at least one prompt")
    ref = float(v.mean()) if reference is None else float(reference)
    if not 0.0 <= ref <= 1.0:
        raise ValueError(f"reference prediction must be in [0, 1], got {ref}")
    rate_P = r.mean(1)
    rate = float(r.mean())  # ō: every prompt has N samples, so prompt and sample means agree
    brier = float(np.mean((v[:, None] - r) ** 2))
    uncertainty = float(np.mean((r - rate) ** 2))  # = ō(1 − ō) for binary rewards
    brier_reference = (ref - rate) ** 2 + uncertainty
    bin_P = np.minimum((v * n_bins).astype(np.int64), n_bins - 1)
    bins, ece, rel, res, wbv, wbc = [], 0.0, 0.0, 0.0, 0.0, 0.0
    for b in range(n_bins):
        sel = bin_P == b
        n = int(sel.sum())
        vm = float(v[sel].mean()) if n else None
        rm = float(rate_P[sel].mean()) if n else None
        if n:
            w = n / v.size
            ece += w * abs(vm - rm)
            rel += w * (vm - rm) ** 2
            res += w * (rm - rate) ** 2
            dv = v[sel] - vm
            wbv += w * float(np.mean(dv**2))
            wbc += w * 2 * float(np.mean(dv[:, None] * (r[sel] - rm)))
        bins.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": n,
                "value_mean": vm,
                "rate_mean": rm,
            }
        )
    return {
        "n_prompts": int(v.size),
        "samples_per_prompt": int(r.shape[1]),
        "brier": brier,
        "reliability": rel,
        "resolution": res,
        "uncertainty": uncertainty,
        "brier_binned": rel - res + uncertainty,
        "within_bin_variance": wbv,
        "within_bin_covariance": wbc,
        "reference": ref,
        "brier_reference": brier_reference,
        "brier_skill": 1 - brier / brier_reference if brier_reference > 0 else math.nan,
        "auc": auc(v, r),
        "auc_ceiling": auc(rate_P, r),
        "pearson": pearson(v, rate_P),
        "spearman": spearman(v, rate_P),
        "mse": float(np.mean((v - rate_P) ** 2)),
        "ece": float(ece),
        "value_mean": float(v.mean()),
        "rate_mean": rate,
        "bins": bins,
    }


def rescore_calibration(cal: dict, reference: float | None = None) -> dict:
    """A stored calibration record with the current keys (`calibration`'s).

    Records written before the Murphy/AUC/reference keys existed kept v̂, the fresh rates
    and the samples per prompt but not the rewards; for binary rewards (every rate × n an
    integer) those determine every score, so they are rescored with `reference` (the
    tracker's mean v̂ over its seen prompts at that step). Current records, or rates that
    are not binary counts, are returned unchanged.
    """
    if "brier_skill" in cal or "value" not in cal:
        return cal
    reward = cal.get("reward")
    if reward is None:
        n = int(cal.get("samples_per_prompt") or 0)
        succ_P = np.asarray(cal.get("rate", []), dtype=np.float64) * n
        if n == 0 or succ_P.size != len(cal["value"]) or not np.allclose(succ_P, succ_P.round()):
            return cal
        reward = (np.arange(n)[None, :] < succ_P.round()[:, None]).astype(np.float64)
    keep = {k: cal[k] for k in ("step", "prompt_ids", "value", "rate") if k in cal}
    out = {**calibration(cal["value"], reward, reference=reference), **keep}
    out["rescored"] = "from the stored per-prompt v̂ and fresh rates (binary rewards)"
    return out


def pending_rho(drift_state: dict, tracker_cfg: dict) -> np.ndarray | None:
    """ρ each prompt would get if drawn now (drift estimator), (P,); None if not computable.

    Never-visited prompts get ρ_max (D = 0, as in `DriftTracker.divergence`).
    """
    from spo.algo.forgetting import rho_from_divergence

    if tracker_cfg.get("rho", "drift") != "drift" or "visit_total" not in drift_state:
        return None
    last = np.asarray(drift_state["visit_total"], dtype=np.float64)
    d = float(np.float32(drift_state["total"])) - last
    d = np.where(np.isnan(last), 0.0, np.maximum(d, 0.0))
    return np.asarray(
        rho_from_divergence(
            d,
            d_half=tracker_cfg.get("d_half", 0.06),
            rho_min=tracker_cfg.get("rho_min", 0.875),
            rho_max=tracker_cfg.get("rho_max", 0.96),
        )
    )


def tracker_arrays(tracker_state: dict) -> dict[str, np.ndarray]:
    """value, count, last_step (P,) from `ValueTracker.state_dict()`."""
    a = np.asarray(tracker_state["alpha"], dtype=np.float64)
    b = np.asarray(tracker_state["beta"], dtype=np.float64)
    return {
        "value": a / (a + b),
        "count": a + b,
        "last_step": np.asarray(tracker_state["last_step"], dtype=np.int64),
    }


def tracker_summary(
    tracker_state: dict,
    *,
    eps: float = 0.05,
    mode: str = "priority",
    rho_P: np.ndarray | None = None,
) -> dict:
    """Scalars and histograms of one tracker state (no model calls)."""
    arr = tracker_arrays(tracker_state)
    v, n, seen = arr["value"], arr["count"], arr["last_step"] >= 0
    n_max = max(2.0, float(n.max()) if n.size else 1.0)
    lo, hi = FRONTIER
    out = {
        "num_prompts": int(v.size),
        "seen_fraction": float(seen.mean()) if v.size else math.nan,
        "value_mean": float(v.mean()) if v.size else math.nan,
        "value_mean_seen": float(v[seen].mean()) if seen.any() else math.nan,
        "count_mean": float(n.mean()) if v.size else math.nan,
        "frontier": frontier_share(v),
        "frontier_seen": frontier_share(v[seen]),
        "too_hard_seen": float(np.mean(v[seen] < lo)) if seen.any() else math.nan,
        "solved_seen": float(np.mean(v[seen] > hi)) if seen.any() else math.nan,
        "sampler": sampler_stats(v, eps=eps, mode=mode),
        "histograms": {
            "value": histogram(v, VALUE_BINS, 0.0, 1.0),
            "value_seen": histogram(v[seen], VALUE_BINS, 0.0, 1.0),
            "count": histogram(n, 25, 0.0, math.ceil(n_max * 1.04)),
        },
    }
    if rho_P is not None and rho_P.size:
        out["rho_mean_seen"] = float(rho_P[seen].mean()) if seen.any() else math.nan
        out["histograms"]["rho"] = histogram(
            rho_P[seen] if seen.any() else rho_P,
            20,
            float(tracker_state.get("rho_min", 0.875)),
            float(tracker_state.get("rho_max", 0.96)),
        )
    return out


def scalar_row(summary: dict, *, step: int, samples: int) -> dict:
    """The flat record appended to RUN_DIR/diagnostics.jsonl."""
    keys = (
        "seen_fraction",
        "value_mean",
        "value_mean_seen",
        "count_mean",
        "frontier",
        "frontier_seen",
        "too_hard_seen",
        "solved_seen",
        "rho_mean_seen",
    )
    row = {"step": step, "samples": samples}
    row.update({k: summary[k] for k in keys if k in summary})
    row.update({f"visits_{k}": x for k, x in (summary.get("visits") or {}).items()})
    row.update(
        {
            f"sampler_{k}": summary["sampler"][k]
            for k in ("entropy_norm", "perplexity", "ess", "ess_fraction")
        }
    )
    return row


# -------------------------------------------------------------------------- files
def write_tracker_parquet(
    path: Path, tracker_state: dict, prompt_ids, *, prompts=None, rho_P: np.ndarray | None = None
) -> Path:
    """One row per training prompt: prompt_id, prompt, value, count, last_step, alpha, beta."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arr = tracker_arrays(tracker_state)
    ids = [str(x) for x in prompt_ids]
    if len(ids) != arr["value"].size:
        raise ValueError(f"{len(ids)} prompt ids for a tracker of {arr['value'].size} prompts")
    cols = {"prompt_id": pa.array(ids, pa.string())}
    if prompts is not None:
        cols["prompt"] = pa.array([str(p) for p in prompts], pa.string())
    cols.update(
        {
            "value": pa.array(arr["value"].astype(np.float32)),
            "count": pa.array(arr["count"].astype(np.float32)),
            "last_step": pa.array(arr["last_step"].astype(np.int32)),
            "alpha": pa.array(np.asarray(tracker_state["alpha"], dtype=np.float32)),
            "beta": pa.array(np.asarray(tracker_state["beta"], dtype=np.float32)),
        }
    )
    if rho_P is not None:
        cols["rho_if_drawn"] = pa.array(rho_P.astype(np.float32))
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.table(cols), tmp)
    os.replace(tmp, path)
    return path


def jsonable(obj):
    """obj with non-finite floats as None and numpy scalars as Python numbers (strict JSON)."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj) -> None:
    """Strict JSON (NaN -> null), written to a temp file and renamed into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1))
    os.replace(tmp, path)


def checkpoint_config(checkpoint_dir: Path) -> dict:
    """The resolved TrainConfig saved with a checkpoint (or its run), as a plain dict."""
    from omegaconf import OmegaConf

    for path in (checkpoint_dir / "config.yaml", checkpoint_dir.parent.parent / "config.yaml"):
        if path.is_file():
            return OmegaConf.to_container(OmegaConf.load(path))
    return {}


def _diagnose(checkpoint_dir: Path, state: dict | None) -> tuple[dict, dict, np.ndarray | None]:
    from spo.train.checkpoint import read_state

    state = read_state(checkpoint_dir) if state is None else state
    cfg = checkpoint_config(checkpoint_dir)
    sampler = state.get("sampler", {})
    rho_P = pending_rho(state.get("drift", {}), cfg.get("tracker", {}))
    summary = tracker_summary(
        state["tracker"],
        eps=float(sampler.get("eps", 0.05)),
        mode=str(sampler.get("mode", "priority")),
        rho_P=rho_P,
    )
    summary["step"] = int(state.get("step", 0))
    summary["samples"] = int(state.get("samples_seen", 0))
    if "visits" in state:
        summary["visits"] = visit_summary(state["visits"])
    return summary, state, rho_P


def visit_summary(visits_P) -> dict:
    """Samples drawn per training prompt so far: min, p10, median, mean, max."""
    v = np.asarray(visits_P, dtype=np.float64).reshape(-1)
    if not v.size:
        return {}
    p10, median = np.percentile(v, [10, 50])
    return {
        "min": float(v.min()),
        "p10": float(p10),
        "median": float(median),
        "mean": float(v.mean()),
        "max": float(v.max()),
    }


def checkpoint_diagnostics(checkpoint_dir, state: dict | None = None) -> dict:
    """Summary of a checkpoint's tracker (reads state.npz/state.json; no model calls)."""
    return _diagnose(Path(checkpoint_dir), state)[0]


def write_diagnostics(checkpoint_dir, run_dir=None, *, prompts=None) -> dict:
    """Write CHECKPOINT/diagnostics.json + tracker.parquet; append to RUN_DIR/diagnostics.jsonl.

    prompts: texts in tracker order (the trainer passes its training prompts); without
    them the parquet has no `prompt` column. Cheap: reads the state files, no model.
    Returns the summary dict.
    """
    checkpoint_dir = Path(checkpoint_dir)
    summary, state, rho_P = _diagnose(checkpoint_dir, None)
    write_json(checkpoint_dir / "diagnostics.json", summary)
    write_tracker_parquet(
        checkpoint_dir / "tracker.parquet",
        state["tracker"],
        state["prompt_ids"],
        prompts=prompts,
        rho_P=rho_P,
    )
    if run_dir is not None:
        row = jsonable(scalar_row(summary, step=summary["step"], samples=summary["samples"]))
        with open(Path(run_dir) / "diagnostics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return summary


def read_diagnostics_log(run_dir) -> list[dict]:
    """RUN_DIR/diagnostics.jsonl, one row per step (the last write of a step wins)."""
    path = Path(run_dir) / "diagnostics.jsonl"
    if not path.is_file():
        return []
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            rows[int(row["step"])] = row
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return [rows[s] for s in sorted(rows)]
