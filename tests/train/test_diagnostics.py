"""Tracker diagnostics: calibration, frontier, sampler entropy/ESS by hand; files on disk."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from spo.algo import ValueTracker
from spo.train.checkpoint import write_state
from spo.train.diagnostics import (
    auc,
    calibration,
    checkpoint_diagnostics,
    frontier_share,
    pearson,
    pending_rho,
    read_diagnostics_log,
    sampler_stats,
    spearman,
    tracker_summary,
    write_diagnostics,
)

# ------------------------------------------------------------------ calibration


def test_calibration_hand_computed():
    value_P = [0.2, 0.8, 0.5]
    reward_PN = [[0, 0, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]]  # rates 0.25, 0.75, 0.25
    c = calibration(value_P, reward_PN)
    # Brier over the 12 outcomes: (3·0.2² + 0.8²) + (3·0.2² + 0.8²) + (0.5² + 3·0.5²) = 2.52
    assert c["brier"] == pytest.approx(2.52 / 12)
    # MSE against the rates: (0.05² + 0.05² + 0.25²)/3
    assert c["mse"] == pytest.approx(0.0675 / 3)
    # ECE: one prompt in each of bins 2, 5, 8 -> (0.05 + 0.05 + 0.25)/3
    assert c["ece"] == pytest.approx(0.35 / 3)
    # Murphy terms, ō = 5/12: REL = mean squared bin gap, RES = spread of the bin rates
    assert c["reliability"] == pytest.approx(0.0675 / 3)
    assert c["resolution"] == pytest.approx((2 * (1 / 6) ** 2 + (1 / 3) ** 2) / 3)  # 1/18
    assert c["uncertainty"] == pytest.approx(5 / 12 * 7 / 12)
    assert c["within_bin_variance"] == 0 and c["within_bin_covariance"] == 0  # 1 per bin
    assert c["brier_binned"] == pytest.approx(c["brier"])
    # reference: the mean v̂ 0.5 for every prompt -> (0.5 − 5/12)² + 35/144 = 0.25
    assert c["reference"] == pytest.approx(0.5)
    assert c["brier_reference"] == pytest.approx(0.25)
    assert c["brier_skill"] == pytest.approx(1 - 0.21 / 0.25)
    assert "brier_constant" not in c  # the in-sample oracle is gone
    # AUC, 5 successes x 7 failures: the success at 0.2 ties its 3 failures (1.5), the one
    # at 0.5 beats 3 and ties 3 (4.5), the 3 at 0.8 beat 6 and tie 1 (3 · 6.5)
    assert c["auc"] == pytest.approx(25.5 / 35)
    assert c["pearson"] == pytest.approx(math.sqrt(3) / 2)
    assert c["spearman"] == pytest.approx(math.sqrt(3) / 2)  # ranks 1,3,2 vs 1.5,3,1.5
    assert [b["count"] for b in c["bins"]] == [0, 0, 1, 0, 0, 1, 0, 0, 1, 0]
    assert c["bins"][5] == {"lo": 0.5, "hi": 0.6, "count": 1, "value_mean": 0.5, "rate_mean": 0.25}
    assert c["bins"][0]["value_mean"] is None
    assert c["value_mean"] == pytest.approx(0.5)
    assert c["rate_mean"] == pytest.approx(5 / 12)
    assert (c["n_prompts"], c["samples_per_prompt"]) == (3, 4)


def test_calibration_pools_prompts_within_a_bin_and_puts_one_in_the_last_bin():
    c = calibration([0.31, 0.39, 1.0, 0.0], [[1, 1], [0, 0], [1, 1], [0, 1]], n_bins=5)
    # bin 1 ([0.2, 0.4)): mean v̂ 0.35 vs mean rate 0.5; bin 4 holds v̂ = 1.0; bin 0 v̂ = 0
    assert [b["count"] for b in c["bins"]] == [1, 2, 0, 0, 1]
    assert c["bins"][1]["value_mean"] == pytest.approx(0.35)
    assert c["bins"][1]["rate_mean"] == pytest.approx(0.5)
    assert c["ece"] == pytest.approx((0.5 + 2 * 0.15 + 0.0) / 4)
    # ō = 5/8. REL = ½·0.15² + ¼·0.5²; RES = ½·0.125² + ¼·0.375² + ¼·0.125²; UNC = 15/64
    assert c["reliability"] == pytest.approx(0.07375)
    assert c["resolution"] == pytest.approx(0.046875)
    assert c["uncertainty"] == pytest.approx(15 / 64)
    assert c["brier_binned"] == pytest.approx(0.26125)
    # bin 1: v̂ = 0.35 ∓ 0.04 -> WBV = ½·0.0016; the lower v̂ has the successes ->
    # WBC = 2·½·mean(−0.04·0.5, ..., 0.04·(−0.5)) = −0.02
    assert c["within_bin_variance"] == pytest.approx(0.0008)
    assert c["within_bin_covariance"] == pytest.approx(-0.02)
    # Brier itself: (2·0.69² + 2·0.39² + 0 + 1)/8
    assert c["brier"] == pytest.approx(2.2564 / 8)
    assert c["brier"] == pytest.approx(0.26125 + 0.0008 + 0.02)


def test_murphy_identities_hold_exactly_on_random_data():
    rng = np.random.default_rng(7)
    for n_bins in (1, 3, 10):
        v = rng.uniform(size=40)
        r = (rng.uniform(size=(40, 5)) < rng.uniform(size=(40, 1))).astype(float)
        r[:3] = rng.uniform(size=(3, 5))  # fractional rewards: UNC is Var(r), still exact
        c = calibration(v, r, n_bins=n_bins)
        terms = c["reliability"] - c["resolution"] + c["uncertainty"]
        assert c["brier_binned"] == pytest.approx(terms, abs=1e-12)
        # the binned forecast: every v̂ replaced by its bin's mean v̂
        bin_P = np.minimum((v * n_bins).astype(int), n_bins - 1)
        fbar = np.array([v[bin_P == b].mean() for b in bin_P])
        assert c["brier_binned"] == pytest.approx(np.mean((fbar[:, None] - r) ** 2), abs=1e-12)
        wb = c["within_bin_variance"] - c["within_bin_covariance"]
        assert c["brier"] == pytest.approx(terms + wb, abs=1e-12)


def test_reference_is_given_not_taken_from_the_scored_rewards():
    r = [[1, 1], [1, 0]]  # ō = 0.75
    c = calibration([0.6, 0.4], r, reference=0.3)
    assert c["brier_reference"] == pytest.approx(np.mean((0.3 - np.asarray(r)) ** 2))
    assert c["brier_skill"] == pytest.approx(1 - c["brier"] / c["brier_reference"])
    # the reference never moves with the fresh rewards (an in-sample mean would)
    c2 = calibration([0.6, 0.4], [[0, 0], [0, 1]], reference=0.3)
    assert c2["reference"] == c["reference"] == 0.3
    with pytest.raises(ValueError, match="reference"):
        calibration([0.5], [[1]], reference=1.5)


def test_auc_is_mann_whitney_with_half_ties():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 4, size=12) / 4  # many ties
    r = (rng.uniform(size=(12, 3)) < 0.5).astype(float)
    pos = [s[i] for i in range(12) for j in range(3) if r[i, j] == 1]
    neg = [s[i] for i in range(12) for j in range(3) if r[i, j] == 0]
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert auc(s, r) == pytest.approx(brute)
    assert auc([0.1, 0.9], [[0, 0], [1, 1]]) == 1.0
    assert auc([0.9, 0.1], [[0, 0], [1, 1]]) == 0.0
    assert auc([0.5, 0.5], [[0, 1], [1, 0]]) == 0.5
    assert math.isnan(auc([0.1, 0.9], [[1, 1], [1, 1]]))  # no failures


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(4)
    x, y = rng.integers(0, 5, 30), rng.integers(0, 3, 30)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])) and math.isnan(pearson([1], [2]))


def test_brier_is_mse_plus_outcome_noise_for_binary_rewards():
    rng = np.random.default_rng(0)
    v = rng.uniform(size=50)
    r = (rng.uniform(size=(50, 8)) < v[:, None]).astype(float)
    c = calibration(v, r)
    rate = r.mean(1)
    assert c["brier"] == pytest.approx(c["mse"] + np.mean(rate * (1 - rate)))
    assert c["pearson"] > 0.5 and c["auc"] > 0.7  # outcomes drawn from v̂ itself
    assert c["auc"] <= c["auc_ceiling"] + 1e-12
    assert c["brier_skill"] > 0


def test_calibration_rejects_bad_shapes():
    with pytest.raises(ValueError, match="reward_PN"):
        calibration([0.5, 0.5], [[1, 0]])
    with pytest.raises(ValueError, match="reward_PN"):
        calibration([0.5], [[]])


# --------------------------------------------------------- frontier and sampler


def test_frontier_includes_both_ends():
    assert frontier_share([0.05, 0.1, 0.5, 0.9, 0.95]) == pytest.approx(3 / 5)
    assert math.isnan(frontier_share([]))


def test_sampler_stats_hand_computed():
    s = sampler_stats([0.0, 1.0, 0.5, 0.5], eps=0.05)
    # w = [0.05, 0.05, 0.55, 0.55], Σw = 1.2, Σw² = 0.61, q = [1, 1, 11, 11]/24
    assert s["ess"] == pytest.approx(1.44 / 0.61, rel=1e-6)
    assert s["ess_fraction"] == pytest.approx(1.44 / 0.61 / 4, rel=1e-6)
    h = -2 * (1 / 24) * math.log(1 / 24) - 2 * (11 / 24) * math.log(11 / 24)
    assert s["entropy"] == pytest.approx(h, rel=1e-6)
    assert s["entropy_norm"] == pytest.approx(h / math.log(4), rel=1e-6)
    assert s["perplexity"] == pytest.approx(math.exp(h), rel=1e-6)


def test_sampler_stats_uniform_cases():
    for s in (sampler_stats(np.full(10, 0.5)), sampler_stats(np.random.rand(10), mode="uniform")):
        assert s["ess"] == pytest.approx(10)
        assert s["entropy"] == pytest.approx(math.log(10))
        assert s["entropy_norm"] == pytest.approx(1.0)
    # eps = 0 and every prompt solved or hopeless: the sampler falls back to uniform
    assert sampler_stats([0.0, 1.0, 1.0], eps=0.0)["ess"] == pytest.approx(3)


def test_pending_rho_from_drift_state():
    drift = {"total": 0.12, "visit_total": np.array([np.nan, 0.12, 0.06, 0.0], np.float32)}
    cfg = {"rho": "drift", "d_half": 0.06, "rho_min": 0.4, "rho_max": 0.96}
    rho = pending_rho(drift, cfg)
    # D = [0 (never seen), 0, 0.06, 0.12] -> 2^(-D/0.06) = [1, 1, 0.5, 0.25], clipped
    np.testing.assert_allclose(rho, [0.96, 0.96, 0.5, 0.4], rtol=1e-5)
    assert pending_rho(drift, {**cfg, "rho": "constant"}) is None


# ---------------------------------------------------------------- summaries, files


def _tracker(num_prompts: int = 6) -> ValueTracker:
    t = ValueTracker(num_prompts)
    t.update([0, 1, 2], [1.0, 0.0, 1.0], 0.9, step=1)
    t.update([0, 1], [1.0, 0.0], 0.9, step=2)
    return t


def test_tracker_summary_counts_seen_prompts():
    t = _tracker()
    s = tracker_summary(t.state_dict())
    v = t.values()
    assert s["num_prompts"] == 6
    assert s["seen_fraction"] == pytest.approx(0.5)
    assert s["value_mean"] == pytest.approx(v.mean(), rel=1e-6)
    assert s["frontier"] == pytest.approx(np.mean((v >= 0.1) & (v <= 0.9)))
    seen = v[:3]
    assert s["frontier_seen"] == pytest.approx(np.mean((seen >= 0.1) & (seen <= 0.9)))
    assert s["too_hard_seen"] == pytest.approx(np.mean(seen < 0.1))
    assert sum(s["histograms"]["value"]["counts"]) == 6
    assert sum(s["histograms"]["value_seen"]["counts"]) == 3
    assert sum(s["histograms"]["count"]["counts"]) == 6
    assert s["sampler"]["ess"] == pytest.approx(sampler_stats(v)["ess"])


def _checkpoint(tmp_path, tracker: ValueTracker, step: int = 2):
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / f"step_{step:06d}"
    ckpt.mkdir(parents=True)
    P = tracker.num_prompts
    state = {
        "step": step,
        "samples_seen": 8 * step,
        "train_seconds": 1.5,
        "prompt_ids": np.array([f"p{i}" for i in range(P)]),
        "tracker": tracker.state_dict(),
        "drift": {
            "total": 0.1,
            "visit_total": np.where(tracker.last_step() >= 0, 0.04, np.nan).astype(np.float32),
        },
        "sampler": {"eps": 0.05, "mode": "priority"},
    }
    write_state(ckpt, state)
    (run / "config.yaml").write_text("algo: spo\ntracker:\n  rho: drift\n  d_half: 0.06\n")
    (ckpt / "COMPLETE").write_text(json.dumps({"step": step}))
    return run, ckpt


def test_write_diagnostics_files(tmp_path):
    t = _tracker()
    run, ckpt = _checkpoint(tmp_path, t)
    prompts = [f"prompt {i}" for i in range(6)]
    s = write_diagnostics(ckpt, run, prompts=prompts)
    assert (s["step"], s["samples"]) == (2, 16)
    on_disk = json.loads((ckpt / "diagnostics.json").read_text())
    assert on_disk["frontier_seen"] == pytest.approx(s["frontier_seen"])
    assert "rho" in on_disk["histograms"]  # drift state + rho=drift in the run's config
    table = pq.read_table(ckpt / "tracker.parquet").to_pydict()
    assert table["prompt_id"] == [f"p{i}" for i in range(6)]
    assert table["prompt"] == prompts
    np.testing.assert_allclose(table["value"], t.values(), rtol=1e-6)
    np.testing.assert_allclose(table["count"], t.count(np.arange(6)), rtol=1e-6)
    assert table["last_step"] == [2, 2, 1, -1, -1, -1]
    # seen prompts moved 0.1 - 0.04 = 0.06 = d_half -> rho 0.5, clipped to rho_min 0.875
    np.testing.assert_allclose(table["rho_if_drawn"], [0.875] * 3 + [0.96] * 3, rtol=1e-6)
    # the run-level log: one row per step, the last write of a step wins
    write_diagnostics(ckpt, run)
    log = read_diagnostics_log(run)
    assert len(log) == 1 and log[0]["step"] == 2
    assert log[0]["sampler_ess_fraction"] == pytest.approx(s["sampler"]["ess_fraction"])
    assert checkpoint_diagnostics(ckpt)["frontier"] == pytest.approx(s["frontier"])


def test_write_diagnostics_without_run_dir_or_prompts(tmp_path):
    run, ckpt = _checkpoint(tmp_path, _tracker())
    write_diagnostics(ckpt)
    assert "prompt" not in pq.read_table(ckpt / "tracker.parquet").column_names
    assert not (run / "diagnostics.jsonl").exists()
    text = (ckpt / "diagnostics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_visit_summary_hand_computed_and_in_the_scalar_row():
    from spo.train.diagnostics import scalar_row, visit_summary

    v = visit_summary([0, 10, 20, 30, 40])  # p10 = 0 + 0.4 * 10, median 20, mean 20
    assert v == {"min": 0.0, "p10": 4.0, "median": 20.0, "mean": 20.0, "max": 40.0}
    assert visit_summary([]) == {}
    summary = {"sampler": dict.fromkeys(("entropy_norm", "perplexity", "ess", "ess_fraction"), 1)}
    row = scalar_row({**summary, "visits": v}, step=3, samples=100)
    assert row["visits_min"] == 0.0 and row["visits_median"] == 20.0
    assert not any(k.startswith("visits") for k in scalar_row(summary, step=3, samples=100))
