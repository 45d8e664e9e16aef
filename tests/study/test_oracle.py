"""Oracle share Var_x(p)/Var(r) and few-sample baselines: hand-computed cases, brute force,
and a simulation with a known share."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from spo.study.oracle import (
    bootstrap_interval,
    few_sample_baseline_ratio,
    oracle_report,
    variance_components,
)

R = [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]  # rates 0.5, 1, 0


def test_variance_components_hand_computed():
    c = variance_components(R)
    # σ̂²: row variances (ddof 1) 1/3, 0, 0 -> 1/9; Var(p̂) (ddof 1) = 0.5/2 = 0.25
    assert c["var_within"] == pytest.approx(1 / 9)
    assert c["var_between"] == pytest.approx(0.25 - (1 / 9) / 4)  # 2/9
    assert c["var_reward"] == pytest.approx(1 / 3)
    assert c["oracle_share"] == pytest.approx(2 / 3)
    assert c["var_reward_pooled"] == pytest.approx(0.25)  # 6 ones in 12
    assert c["oracle_share_plugin"] == pytest.approx((0.5 / 3) / 0.25)
    assert (c["n_prompts"], c["samples_per_prompt"], c["reward_mean"]) == (3, 4, 0.5)


def test_few_sample_ratio_hand_computed_and_by_brute_force():
    # row [1,1,0,0], m = 1: every sample's 3 one-sample baselines give squared errors
    # averaging 2/3; the constant rows give 0 -> (4 · 2/3)/12 / Var(r) = (2/9)/0.25
    assert few_sample_baseline_ratio(R, 1) == pytest.approx(8 / 9)
    rng = np.random.default_rng(3)
    r = rng.uniform(size=(5, 6)) < rng.uniform(size=(5, 1))
    r = r.astype(float)
    for m in (1, 2, 3, 5):
        errs = []
        for row in r:
            for k in range(6):
                others = np.delete(row, k)
                errs += [
                    (row[k] - others[list(s)].mean()) ** 2
                    for s in itertools.combinations(range(5), m)
                ]
        # every sample has the same number of subsets: the plain mean is the exact average
        assert few_sample_baseline_ratio(r, m) == pytest.approx(np.mean(errs) / r.var())


def test_simulated_share_is_recovered_and_plugin_is_biased_up():
    rng = np.random.default_rng(0)
    P, K = 4000, 16
    p = rng.choice([0.1, 0.7], size=P)  # Var_x(p) = 0.09, E[p(1−p)] = 0.15
    r = (rng.uniform(size=(P, K)) < p[:, None]).astype(float)
    c = variance_components(r)
    assert c["oracle_share"] == pytest.approx(0.09 / 0.24, abs=0.01)
    # plug-in adds ≈ E[σ²]/K to the numerator: 0.15/16 ≈ 0.0094
    assert c["oracle_share_plugin"] - c["oracle_share"] == pytest.approx(0.15 / 16 / 0.24, abs=0.01)
    # a baseline from m samples keeps (1 − share)(1 + 1/m) of Var(r)
    for m in (1, 4):
        assert few_sample_baseline_ratio(r, m) == pytest.approx(0.15 / 0.24 * (1 + 1 / m), abs=0.02)
    # no spread across prompts: share ≈ 0, plug-in ≈ 1/K
    flat = (rng.uniform(size=(P, K)) < 0.3).astype(float)
    c = variance_components(flat)
    assert abs(c["oracle_share"]) < 0.01
    assert c["oracle_share_plugin"] == pytest.approx(1 / K, abs=0.01)


def test_bootstrap_interval_covers_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    p = rng.uniform(size=64)
    r = (rng.uniform(size=(64, 16)) < p[:, None]).astype(float)
    share = variance_components(r)["oracle_share"]
    lo, hi = bootstrap_interval(r, lambda x: variance_components(x)["oracle_share"], n_boot=300)
    assert lo < share < hi and hi - lo < 0.3
    assert (lo, hi) == bootstrap_interval(
        r, lambda x: variance_components(x)["oracle_share"], n_boot=300
    )
    rep = oracle_report(r, n_boot=200, ms=(1, 4, 16))
    assert set(rep["few_sample_baseline_ratio"]) == {"1", "4"}  # m = 16 > K − 1 is skipped
    assert rep["oracle_residual_ratio"] == pytest.approx(1 - rep["oracle_share"])


def test_bad_shapes_and_m_are_one_line_errors():
    with pytest.raises(ValueError, match="reward_PK"):
        variance_components([[1, 0, 1]])
    with pytest.raises(ValueError, match="m must be"):
        few_sample_baseline_ratio(R, 4)


# ------------------------------------------------ the bench script and its results
ROOT = Path(__file__).resolve().parents[2]
RESULT = ROOT / "bench" / "results" / "oracle_share.json"


def _bench_module():
    import importlib.util
    import sys

    sys.path.insert(0, str(ROOT / "bench"))  # the script imports `common` from there
    try:
        spec = importlib.util.spec_from_file_location(
            "oracle_share", ROOT / "bench/oracle_share.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


def test_bench_analysis_splits_mixes_by_level():
    bench = _bench_module()
    rewards = {"add0": [1, 1, 1, 0], "add2": [0, 0, 0, 1], "add3": [0, 0, 0, 0]}
    run = {
        "settings": {"task.name": "arithmetic"},
        "prompts": [{"level": lv, "rewards": r} for lv, r in rewards.items() for _ in range(3)],
    }
    out = bench.analyse(run, "add0,add2;add0,add2,add3;hard", n_boot=50)
    assert out["levels"]["add0"] == {"prompts": 3, "rate": 0.75}
    sub = out["mix=add0,add2"]  # 6 prompts of the two levels; the full set is "measured"
    expected = variance_components([rewards["add0"]] * 3 + [rewards["add2"]] * 3)
    assert sub["oracle_share"] == pytest.approx(expected["oracle_share"])
    assert "mix=add0,add2,add3" not in out and "mix=hard" not in out  # all / not measured
    assert out["measured"]["n_prompts"] == 9


@pytest.mark.skipif(not RESULT.is_file(), reason="no committed oracle_share result")
def test_committed_oracle_shares_recompute_from_their_rewards():
    for run in json.loads(RESULT.read_text())["runs"]:
        reward_PK = np.asarray([p["rewards"] for p in run["prompts"]])
        assert reward_PK.shape[1] == run["settings"]["samples_per_prompt"] >= 16
        c = variance_components(reward_PK)
        assert run["analysis"]["measured"]["oracle_share"] == pytest.approx(c["oracle_share"])
