"""spo.study.machinery against hand-computed cases (issue 19's study numbers)."""

from __future__ import annotations

import math

import pytest

from spo.study.machinery import (
    heldout_points,
    oracle_end,
    paired_machinery,
    paired_wallclock,
    pooled_ratio,
    revisit_rho,
    run_machinery,
    value_at,
)


def test_pooled_ratio_weights_steps_by_their_reward_variance():
    rows = [
        {"var/residual": 0.02, "var/reward": 0.04},  # step ratio 0.5
        {"var/residual": 0.30, "var/reward": 0.20},  # step ratio 1.5
        {"var/reward": 0.5},  # no residual logged: skipped
    ]
    # pooled (0.02 + 0.30) / (0.04 + 0.20) = 1.3333, not the mean of ratios (1.0)
    assert pooled_ratio(rows) == pytest.approx(0.32 / 0.24)
    assert pooled_ratio([{"var/residual": 0.0, "var/reward": 0.0}]) is None
    assert pooled_ratio([]) is None


def test_revisit_rho_is_weighted_by_each_steps_revisits():
    rows = [
        # 3/4 of the samples are revisits: ρ mean 0.9, 1/3 at min, none at max
        {
            "rho/first_visit_share": 0.25,
            "rho/revisit_mean": 0.9,
            "rho/revisit_at_min": 1 / 3,
            "rho/revisit_at_max": 0.0,
            "rho/revisit_divergence_median": 0.2,
        },
        # 1/4 revisits: mean 0.96, all at max
        {
            "rho/first_visit_share": 0.75,
            "rho/revisit_mean": 0.96,
            "rho/revisit_at_min": 0.0,
            "rho/revisit_at_max": 1.0,
            "rho/revisit_divergence_median": 0.4,
        },
        # no revisit: NaN stats, weight 0
        {"rho/first_visit_share": 1.0, "rho/revisit_mean": math.nan},
    ]
    out = revisit_rho(rows)
    assert out["rho_revisit_mean"] == pytest.approx((0.75 * 0.9 + 0.25 * 0.96) / 1.0)
    assert out["rho_at_min"] == pytest.approx(0.75 * (1 / 3))
    assert out["rho_at_max"] == pytest.approx(0.25)
    assert out["rho_inside"] == pytest.approx(1 - 0.25 - 0.25)
    assert out["rho_divergence_median"] == pytest.approx(0.3)
    assert revisit_rho([{"rho/first_visit_share": 1.0}]) == {}


def test_oracle_end_from_rates_and_samples_per_prompt():
    # K = 4; rates 0, 1, 0.5, 0.5 -> rows 0000, 1111, 1100, 1100
    # σ̂² = mean of ddof-1 row variances = (0 + 0 + 1/3 + 1/3)/4 = 1/6
    # Var(p̂) ddof 1 of (0, 1, .5, .5) = 1/6; τ̂² = 1/6 − (1/6)/4 = 1/8
    # share = (1/8) / (1/8 + 1/6) = 3/7
    out = oracle_end({"rate": [0.0, 1.0, 0.5, 0.5], "samples_per_prompt": 4})
    assert out["oracle_share_end"] == pytest.approx(3 / 7)
    assert out["oracle_ratio_end"] == pytest.approx(4 / 7)
    assert oracle_end(None) == {} and oracle_end({"rate": [0.5, 0.5]}) == {}


def test_run_machinery_quarters_clip_and_missing_keys():
    rows = [
        {
            "var/residual": 1.0,
            "var/reward": 1.0,
            "train/clip_fraction": 0.1,
            "train/ratio_max": 1.3,
        },
        {
            "var/residual": 1.0,
            "var/reward": 2.0,
            "train/clip_fraction": 0.0,
            "train/ratio_max": 1.1,
        },
        {
            "var/residual": 1.0,
            "var/reward": 2.0,
            "train/clip_fraction": 0.2,
            "train/ratio_max": 1.2,
        },
        {
            "var/residual": 3.0,
            "var/reward": 2.0,
            "train/clip_fraction": 0.1,
            "train/ratio_max": 1.0,
        },
    ]
    out = run_machinery(rows)
    assert out["var_ratio_pooled"] == pytest.approx(6 / 7)
    assert out["var_ratio_pooled_first_quarter"] == pytest.approx(1.0)  # step 1 only
    assert out["var_ratio_pooled_last_quarter"] == pytest.approx(1.5)  # step 4 only
    assert out["clip_fraction"] == pytest.approx(0.1)
    assert out["ratio_max"] == pytest.approx(1.3)
    assert "rho_revisit_mean" not in out and "oracle_share_end" not in out
    assert run_machinery([]) == {}


def _points(ts, vs):
    return {"wall_seconds": ts, "samples": [0.0] * len(ts), "avg@4": vs}


def test_value_at_interpolates_and_refuses_to_extrapolate():
    p = _points([0.0, 100.0, 200.0], [0.2, 0.6, 0.8])
    assert value_at(p, "avg@4", 50.0) == pytest.approx(0.4)
    assert value_at(p, "avg@4", 200.0) == pytest.approx(0.8)
    assert value_at(p, "avg@4", 250.0) is None
    assert value_at(p, "greedy", 50.0) is None


def test_heldout_points_reads_eval_rows_only():
    rows = [
        {"step": 0, "samples": 0, "wall_seconds": 0.0, "eval/avg@4": 0.2},
        {"step": 1, "samples": 8, "wall_seconds": 5.0, "reward/mean": 0.3},
        {"step": 2, "samples": 16, "wall_seconds": 9.0, "eval/avg@4": 0.5},
    ]
    assert heldout_points(rows, ["avg@4"]) == {
        "wall_seconds": [0.0, 9.0],
        "samples": [0.0, 16.0],
        "avg@4": [0.2, 0.5],
    }


def test_paired_wallclock_reads_both_runs_at_the_faster_runs_end():
    def arm(runs):
        return {"runs": [{"seed": s, "heldout_points": p} for s, p in runs.items()]}

    arms = {
        # SPO takes 100 s (seed 0) and 200 s (seed 1)
        "spo": arm({0: _points([0, 100], [0.2, 0.6]), 1: _points([0, 200], [0.2, 0.8])}),
        # GRPO takes 200 s and 100 s
        "grpo": arm({0: _points([0, 200], [0.2, 1.0]), 1: _points([0, 100], [0.2, 0.4])}),
    }
    out = paired_wallclock(arms, ["avg@4"])["grpo"]
    # seed 0 at 100 s: SPO 0.6, GRPO 0.6 -> 0; seed 1 at 100 s: SPO 0.5, GRPO 0.4 -> 0.1
    assert out["avg@4"]["diffs"] == pytest.approx([0.0, 0.1])
    assert out["avg@4"]["mean"] == pytest.approx(0.05)
    assert out["time_ratio"]["values"] == pytest.approx([2.0, 0.5])
    assert out["seconds"] == [100, 100]
    assert paired_wallclock({"grpo": arms["grpo"]}, ["avg@4"]) == {}


def test_paired_machinery_is_arm_minus_spo_over_common_seeds():
    from spo.study.page import paired_machinery_table

    def arm(runs):
        return {"runs": [{"seed": s, "machinery": m} for s, m in runs.items()]}

    arms = {
        "spo": arm(
            {
                0: {"var_ratio_pooled": 0.4, "clip_fraction": 0.010, "rho_inside": 0.5},
                1: {"var_ratio_pooled": 0.5, "clip_fraction": 0.020, "rho_inside": 0.4},
                2: {"var_ratio_pooled": 0.3, "clip_fraction": 0.015},
            }
        ),
        # no_clip ran seeds 0 and 1 only; seed 1 logged no ρ
        "no_clip": arm(
            {
                0: {"var_ratio_pooled": 0.5, "clip_fraction": 0.0, "rho_inside": 0.6},
                1: {"var_ratio_pooled": 0.8, "clip_fraction": 0.0},
            }
        ),
        "grpo": {"runs": [{"seed": 0, "machinery": {}}]},  # nothing to compare: left out
    }
    out = paired_machinery(arms)
    assert set(out) == {"no_clip"}
    var = out["no_clip"]["var_ratio_pooled"]
    # diffs 0.1 and 0.3: mean 0.2, sd 0.1414, t(0.975, 1) = 12.706 -> ± 12.706 * 0.1
    assert var["seeds"] == [0, 1] and var["diffs"] == pytest.approx([0.1, 0.3])
    assert var["mean"] == pytest.approx(0.2)
    assert (var["lo"], var["hi"]) == pytest.approx((0.2 - 1.27062, 0.2 + 1.27062), abs=1e-4)
    assert out["no_clip"]["clip_fraction"]["diffs"] == pytest.approx([-0.01, -0.02])
    rho = out["no_clip"]["rho_inside"]  # only seed 0 has it on both sides: n = 1
    assert rho["seeds"] == [0] and rho["mean"] == pytest.approx(0.1) and rho["lo"] is None
    assert paired_machinery({"no_clip": arms["no_clip"]}) == {}

    table = "\n".join(paired_machinery_table({"paired_machinery": out}))
    row = next(line for line in table.splitlines() if line.startswith("| no_clip − spo"))
    assert row.startswith("| no_clip − spo | 2 | +0.200 [-1.071, +1.471] |")
    assert "-1.50 [" in row  # clipped share, pp: mean of -1 and -2
    assert "+10.0 (n = 1)" in row  # ρ inside, pp, one seed
    assert paired_machinery_table({"paired_machinery": {}}) == []
    # a group arm also runs a tracker (for sampling diagnostics); its ρ is not shown
    grpo = {"rho_inside": {"mean": 0.1, "lo": None, "n": 1, "seeds": [0]}}
    table = paired_machinery_table(
        {"paired_machinery": {"grpo": grpo}, "arms": {"grpo": {"algo": "grpo"}}}
    )
    rows = "\n".join(table).splitlines()
    assert [x for x in rows if x.startswith("| grpo")] == ["| grpo − spo | 1 | — |"]
