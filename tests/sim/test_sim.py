"""spo.sim: the paper's worked example, hand-computed cases, properties, CIs, the CLI."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spo import sim
from spo.commands import simulate as simulate_command


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="spo simulate")
    simulate_command.add_arguments(parser)
    return parser.parse_args(argv)


# ------------------------------------------------------------------ the paper's example


def test_paper_example_reproduces_stated_numbers():
    ex = sim.paper_example()
    assert ex["group_based_time"] == 486.0  # computed: 3rd-fastest of the stated groups
    assert ex["group_free_time"] == 112.0  # stated
    assert ex["speedup_stated"] == 4.35
    assert round(ex["speedup_from_rounded_times"], 2) == 4.34  # 486 / 112
    lo, hi = ex["speedup_rounding_range"]
    assert lo < 4.35 < hi
    assert (ex["groups"], ex["group_size"], ex["groups_kept"], ex["launched"]) == (6, 8, 3, 48)
    assert ex["assumed_sample_times_check"] == {"group-based": 486.0, "group-free": 112.0}


def test_paper_assumed_sample_times_match_everything_stated():
    time_N = sim.paper_sample_times_N()
    assert time_N.shape == (48,)
    assert time_N.reshape(6, 8).max(axis=1).tolist() == list(sim.PAPER_GROUP_TIMES)
    assert np.sort(time_N)[23] == 112.0
    assert np.sum(time_N <= 112.0) == 24


def test_paper_cli_prints_both_times_and_speedup(capsys):
    assert simulate_command.run(parse(["--paper"])) == 0
    out = capsys.readouterr().out
    assert "130, 133, 486, 495, 519, 553 s" in out
    assert "batch ready at 486 s" in out
    assert "batch ready at 112 s" in out
    assert "speed-up: 4.35x (stated)" in out
    assert "stated" in out and "assumed" in out


def test_paper_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "paper.json", tmp_path / "paper.png"
    assert (
        simulate_command.run(parse(["--paper", "--json", str(out_json), "--plot", str(out_png)]))
        == 0
    )
    paper = json.loads(out_json.read_text())["paper"]
    assert (paper["group_based_time"], paper["group_free_time"]) == (486.0, 112.0)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------- hand-computed cases


def test_two_groups_of_two_by_hand():
    time_TN = np.array([[1.0, 5.0, 2.0, 3.0]])  # group 0 = {1, 5}, group 1 = {2, 3}
    ready_T, kept_TN = sim.group_based_T(time_TN, group_size=2, batch=2)
    assert ready_T.tolist() == [3.0]  # group 1 is done at 3 s, group 0 only at 5 s
    assert kept_TN.tolist() == [[False, False, True, True]]
    frac = sim.slot_fractions_T(time_TN, kept_TN, ready_T)
    # budget 4 slots x 3 s = 12: useful 2+3, idle (3-1)+(3-2), discarded 1+min(5,3)
    assert {k: v.item() for k, v in frac.items()} == pytest.approx(
        {"useful": 5 / 12, "idle": 3 / 12, "discarded": 4 / 12}
    )

    ready_T, kept_TN = sim.group_free_T(time_TN, group_size=2, batch=2)
    assert ready_T.tolist() == [2.0]  # the 2 fastest samples are 1 s and 2 s
    assert kept_TN.tolist() == [[True, False, True, False]]
    frac = sim.slot_fractions_T(time_TN, kept_TN, ready_T)
    # budget 4 x 2 = 8: useful 1+2, idle (2-1), discarded min(5,2)+min(3,2)
    assert {k: v.item() for k, v in frac.items()} == pytest.approx(
        {"useful": 3 / 8, "idle": 1 / 8, "discarded": 4 / 8}
    )


def test_no_oversampling_waits_for_everything_in_both_policies():
    time_TN = np.array([[4.0, 1.0, 9.0, 2.0, 3.0, 7.0]])
    for policy in sim.POLICIES.values():
        ready_T, kept_TN = policy(time_TN, 3, 6)
        assert ready_T.tolist() == [9.0] and kept_TN.all()


def test_group_free_discards_exactly_the_oversampled_share():
    # Every sample not kept is still running at `ready`, so it used exactly `ready` each.
    result = sim.simulate(sim.SimConfig(oversample=3.0, trials=500))
    assert result.policies["group-free"].discarded == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- properties


def reference_policies(time_N: np.ndarray, group_size: int, batch: int) -> tuple[float, float]:
    """Plain-Python event loop: admit samples in finishing order until the batch is full."""
    order = sorted(range(len(time_N)), key=lambda i: time_N[i])
    done_in_group: dict[int, int] = {}
    groups_done, group_ready, free_ready = 0, None, None
    for rank, i in enumerate(order, start=1):
        if rank == batch and free_ready is None:
            free_ready = time_N[i]
        g = i // group_size
        done_in_group[g] = done_in_group.get(g, 0) + 1
        if done_in_group[g] == group_size:
            groups_done += 1
            if groups_done == batch // group_size and group_ready is None:
                group_ready = time_N[i]
    return group_ready, free_ready


@st.composite
def settings_and_times(draw):
    group_size = draw(st.integers(1, 6))
    keep = draw(st.integers(1, 4))
    groups = keep + draw(st.integers(0, 4))
    times = st.floats(0.01, 1e4, allow_nan=False, allow_infinity=False)
    time_TN = np.array(
        draw(
            st.lists(
                st.lists(times, min_size=groups * group_size, max_size=groups * group_size),
                min_size=1,
                max_size=4,
            )
        )
    )
    return group_size, keep * group_size, time_TN


@settings(max_examples=200, deadline=None)
@given(settings_and_times())
def test_group_free_never_slower_and_matches_event_loop(case):
    group_size, batch, time_TN = case
    group_T, group_kept_TN = sim.group_based_T(time_TN, group_size, batch)
    free_T, free_kept_TN = sim.group_free_T(time_TN, group_size, batch)
    assert np.all(free_T <= group_T)
    assert np.all(group_kept_TN.sum(axis=1) == batch)
    assert np.all(free_kept_TN.sum(axis=1) == batch)
    for t in range(len(time_TN)):
        assert (group_T[t], free_T[t]) == reference_policies(time_TN[t], group_size, batch)
    for ready_T, kept_TN in ((group_T, group_kept_TN), (free_T, free_kept_TN)):
        assert np.all(time_TN[kept_TN] <= np.repeat(ready_T, batch))
        frac = sim.slot_fractions_T(time_TN, kept_TN, ready_T)
        total_T = frac["useful"] + frac["idle"] + frac["discarded"]
        np.testing.assert_allclose(total_T, 1.0, rtol=1e-9)
        assert all(np.all((v >= -1e-12) & (v <= 1 + 1e-12)) for v in frac.values())


@pytest.mark.parametrize("dist", list(sim.LATENCIES))
def test_each_distribution_has_the_stated_median(dist):
    lat = sim.Latency(dist=dist, median=50.0, tool_calls=0.0)
    time_TN = sim.sample_times_TN(lat, 200, 500, np.random.default_rng(0))
    assert time_TN.shape == (200, 500) and np.all(time_TN > 0)
    assert np.median(time_TN) == pytest.approx(50.0, rel=0.03)


def test_tool_mixture_mean_and_stragglers():
    lat = sim.Latency(
        dist="tool", median=20.0, sigma=0.5, tool_calls=3.0, tool_median=4.0, alpha=4.0
    )
    time_TN = sim.sample_times_TN(lat, 400, 500, np.random.default_rng(1))
    x_m = 4.0 / 2 ** (1 / 4.0)
    expected = 20.0 * np.exp(0.5**2 / 2) + 3.0 * 4.0 * x_m / 3.0  # E[lognormal] + E[k] E[call]
    assert time_TN.mean() == pytest.approx(expected, rel=0.02)

    slow = sim.Latency(median=10.0, sigma=0.1, straggler_frac=0.2, straggler_mult=10.0)
    time_TN = sim.sample_times_TN(slow, 100, 1000, np.random.default_rng(2))
    assert np.mean(time_TN > 50.0) == pytest.approx(0.2, abs=0.01)


def test_seeded_and_common_random_numbers_across_straggler_fractions():
    config = sim.SimConfig(trials=300, seed=7)
    a, b = sim.simulate(config), sim.simulate(config)
    np.testing.assert_array_equal(a.ready_PT["group-based"], b.ready_PT["group-based"])
    sweep = sim.sweep_straggler_frac(config, [0.0, 0.3])
    np.testing.assert_array_equal(sweep[0].ready_PT["group-free"], a.ready_PT["group-free"])
    # stragglers only ever slow samples down, on the same base draws
    assert np.all(sweep[1].ready_PT["group-free"] >= sweep[0].ready_PT["group-free"])


# ------------------------------------------------------------------ confidence intervals


@pytest.mark.parametrize("ci", ["normal", "bootstrap"])
def test_ci_shrinks_with_more_trials_and_covers_the_mean(ci):
    def widths(trials):
        r = sim.simulate(sim.SimConfig(trials=trials, ci=ci))
        g = r.policies["group-based"]
        assert g.time_ci[0] < g.time_mean < g.time_ci[1]
        assert r.speedup_ci[0] < r.speedup < r.speedup_ci[1]
        return g.time_ci[1] - g.time_ci[0], r.speedup_ci[1] - r.speedup_ci[0]

    few, many = widths(100), widths(10_000)
    assert many[0] < few[0] / 5 and many[1] < few[1] / 5  # ~ 1/sqrt(100) = 1/10


def test_normal_and_bootstrap_cis_agree_on_large_samples():
    x_T = np.random.default_rng(0).lognormal(0, 1, 20_000)
    y_T = x_T * 0.5 + np.random.default_rng(1).lognormal(0, 1, 20_000)
    for f in (sim.mean_ci, lambda a, **k: sim.ratio_ci(a, y_T, **k)):
        normal = np.array(f(x_T, method="normal"))
        boot = np.array(f(x_T, method="bootstrap", rng=np.random.default_rng(2)))
        np.testing.assert_allclose(normal, boot, rtol=0.01)


def test_ten_thousand_trials_well_under_a_second():
    sim.simulate(sim.SimConfig(trials=100))  # warm-up
    start = time.perf_counter()
    sim.simulate(sim.SimConfig(trials=10_000))
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch": 0}, "batch must be a positive integer"),
        ({"group_size": -8}, "group_size must be a positive integer"),
        ({"trials": 0}, "trials must be a positive integer"),
        ({"batch": 20}, "must be a multiple of group_size"),
        ({"oversample": 0.5}, "oversample must be >= 1"),
        ({"oversample": 1.2}, r"try --oversample 1 \(3 groups\) or 4/3 \(4 groups\)"),
        ({"ci": "jackknife"}, "valid: normal, bootstrap"),
        ({"ci_level": 1.0}, "ci_level must be in"),
        ({"trials": 10_000_000}, "use fewer trials"),
    ],
)
def test_bad_config_raises_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        sim.SimConfig(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dist": "weibull"}, "valid: lognormal, exponential, pareto, tool"),
        ({"median": -1.0}, "median must be a positive number"),
        ({"sigma": 0.0}, "sigma must be a positive number"),
        ({"alpha": float("nan")}, "alpha must be a positive number"),
        ({"tool_calls": -1.0}, "tool_calls must be >= 0"),
        ({"straggler_frac": 1.5}, r"straggler_frac must be in \[0, 1\]"),
    ],
)
def test_bad_latency_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sim.Latency(**kwargs)


def test_run_prints_one_error_line_and_returns_2(capsys):
    assert simulate_command.run(parse(["--batch", "20"])) == 2
    err = capsys.readouterr().err
    assert err.startswith("spo: error: batch (20) must be a multiple of group_size (8)")
    assert err.count("\n") == 1


def test_bad_sweep_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        parse(["--sweep", "0:0.5:-1"])
    assert info.value.code == 2
    assert "START:STOP:STEP" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- CLI


def test_run_prints_both_times_and_the_speedup(capsys):
    assert simulate_command.run(parse(["--trials", "2000", "--seed", "3"])) == 0
    out = capsys.readouterr().out
    result = sim.simulate(sim.SimConfig(trials=2000, seed=3))
    for s in result.policies.values():
        assert f"{s.time_mean:.1f} [" in out
    assert f"{result.speedup:.2f}x" in out
    assert result.speedup > 1


def test_run_writes_json_and_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "r.json", tmp_path / "img" / "sim.png"
    argv = [
        "--dist",
        "tool",
        "--trials",
        "300",
        "--sweep",
        "0,0.1,0.2",
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
    ]
    assert simulate_command.run(parse(argv)) == 0
    payload = json.loads(out_json.read_text())
    assert payload["config"]["launched"] == 48
    assert set(payload["policies"]) == {"group-based", "group-free"}
    assert [r["config"]["latency"]["straggler_frac"] for r in payload["sweep"]] == [0, 0.1, 0.2]
    g = payload["policies"]["group-based"]
    assert g["useful"] + g["idle"] + g["discarded"] == pytest.approx(1.0)
    assert out_png.stat().st_size > 10_000
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stragglers" in capsys.readouterr().out  # the sweep table


def test_unwritable_output_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    argv = ["--trials", "10", "--json", str(blocker / "r.json")]
    assert simulate_command.run(parse(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("spo: error: cannot write") and err.count("\n") == 1


def test_oversample_accepts_a_fraction():
    args = parse(["--oversample", "4/3"])
    assert simulate_command.config_from_args(args).launched == 32
