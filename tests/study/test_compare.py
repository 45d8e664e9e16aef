"""`spo compare`: aggregation against hand-computed values, bad input, and the whole
machinery end to end on the tiny random model (real `spo train` subprocesses)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spo.cli import main
from spo.study.runs import COMMITTED, flatten
from spo.study.summary import aggregate, align_curves


# ----------------------------------------------------------------------- aggregation
def test_aggregate_hand_computed():
    a = aggregate([0.2, 0.4, 0.9])
    assert a["n"] == 3
    assert a["mean"] == pytest.approx(0.5)
    # sample std: sqrt(((-.3)^2 + (-.1)^2 + .4^2) / 2) = sqrt(0.13)
    assert a["std"] == pytest.approx(math.sqrt(0.13))
    assert (a["min"], a["max"]) == (0.2, 0.9)
    one = aggregate([0.7, None, float("nan")])
    assert one == {"mean": 0.7, "std": None, "min": 0.7, "max": 0.7, "n": 1}
    assert aggregate([])["mean"] is None


def test_align_curves_uses_common_steps_and_mean_wall():
    seed0 = [
        {"step": 0, "samples": 0, "wall_seconds": 0.0, "acc": 0.1},
        {"step": 2, "samples": 16, "wall_seconds": 10.0, "acc": 0.3},
        {"step": 4, "samples": 32, "wall_seconds": 20.0, "acc": 0.5},
    ]
    seed1 = [
        {"step": 0, "samples": 0, "wall_seconds": 0.0, "acc": 0.3},
        {"step": 2, "samples": 16, "wall_seconds": 14.0, "acc": 0.1},
        {"step": 3, "samples": 24, "wall_seconds": 17.0, "acc": 0.9},  # only this seed
        {"step": 4, "samples": 32, "wall_seconds": 30.0, "acc": 0.7},
    ]
    c = align_curves([seed0, seed1], ["acc", "missing"], x_offset=100)["acc"]
    assert c["step"] == [0, 2, 4]
    assert c["samples"] == [100, 116, 132]
    assert c["wall_seconds"] == [0.0, 12.0, 25.0]
    assert c["mean"] == pytest.approx([0.2, 0.2, 0.6])
    assert c["min"] == pytest.approx([0.1, 0.1, 0.5])
    assert c["max"] == pytest.approx([0.3, 0.3, 0.7])
    assert c["std"] == pytest.approx([math.sqrt(0.02)] * 3)
    assert "missing" not in align_curves([seed0, seed1], ["missing"])


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--algos", "spo,ppo"], "unknown algo 'ppo'"),
        (["--ablations", "no_critic"], "unknown ablation 'no_critic'"),
        (["--seeds", "0"], "--seeds and --ablation-seeds must be >= 1"),
        (["--ablations", "no_offline_init"], "is the SPO arm itself"),
        (["--reading", "README.md"], "--reading needs --markdown FILE.md"),
        (["--algo-seeds", "grpo:2"], "--algo-seeds 'grpo:2': write ALGO=N with N >= 1"),
        (["--algo-seeds", "grpo=0"], "--algo-seeds 'grpo=0': write ALGO=N with N >= 1"),
        (["--algo-seeds", "rloo=2"], "'rloo' is not in --algos (spo,grpo)"),
        (["--reading", "nope.md", "--markdown", "x.md"], "cannot read --reading nope.md"),
    ],
)
def test_bad_input_is_one_line(argv, needle, capsys):
    assert main(["compare", "configs/demo.yaml", *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_missing_config_and_reserved_override(capsys):
    assert main(["compare", "nope.yaml"]) == 2
    assert "config file 'nope.yaml' not found" in capsys.readouterr().err
    assert main(["compare", "configs/demo.yaml", "algo=grpo", "--dry-run"]) == 2
    assert "use --algos" in capsys.readouterr().err


# ----------------------------------------------------------------------- end to end
# A JSONL task whose reward (share of letters in the first 8 characters) is fractional
# and text-driven, so the random model gets non-trivial accuracies and advantages (on the
# built-in arithmetic task it scores 0 everywhere and every number would be 0).
REWARD_SRC = """
def reward(completion, answer):
    head = completion[:8]
    return sum(c.isascii() and c.isalpha() for c in head) / 8
"""

TINY = """\
steps: 2
samples_per_step: 8
group_size: 4
checkpoint_every: 2
eval_size: 4
threads: 1
task: {{name: {data}, reward_fn: '{reward}', train_size: 16, test_size: 4}}
model: {{path: {model}}}
rollout: {{max_new_tokens: 8, batch_size: 8}}
reward: {{workers: 0}}
tracker: {{drift_sample: 4}}
optim: {{micro_batch_size: 8}}
log: {{tensorboard: false}}
"""


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_compare_end_to_end(tiny_model_dir, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Say {i}.", "answer": str(i)}) + "\n" for i in range(24))
    )
    (tmp_path / "reward.py").write_text(REWARD_SRC)
    config.write_text(
        TINY.format(model=tiny_model_dir, data=data, reward=f"{tmp_path / 'reward.py'}:reward")
    )
    out = tmp_path / "study"
    md = tmp_path / "docs" / "study.md"
    argv = [
        "compare",
        str(config),
        "--seeds",
        "2",
        "--ablations",
        "offline_init",
        "--init-samples",
        "2",
        "--eval-k",
        "2",
        "--calibration",
        "2",
        "--calibration-prompts",
        "4",
        "--out",
        str(out),
        "--markdown",
        str(md),
    ]
    assert main(argv) == 0, capsys.readouterr()
    s = json.loads((out / "summary.json").read_text())
    assert list(s["arms"]) == ["spo", "grpo", "offline_init"] and not s["failed"]

    for arm, n in (("spo", 2), ("grpo", 2), ("offline_init", 1)):
        a = s["arms"][arm]
        assert a["n_finished"] == n
        runs = [_metrics(out / "runs" / arm / f"seed{seed}") for seed in range(n)]
        # step 0 (initial policy) and the last step carry eval with k=2 samples + greedy
        finals = [r[-1] for r in runs]
        assert all(r[0]["step"] == 0 and "eval/avg@2" in r[0] for r in runs)
        assert [f["step"] for f in finals] == [2] * n
        for key in ("greedy", "avg@2", "pass@2", "maj@2"):
            vals = [f[f"eval/{key}"] for f in finals]
            assert a["final"][key]["mean"] == pytest.approx(sum(vals) / n)
            assert a["final"][key]["min"] == pytest.approx(min(vals))
        walls = [f["wall_seconds"] for f in finals]
        assert a["train_seconds"]["max"] == pytest.approx(max(walls))
        curve = a["heldout_curves"]["avg@2"]
        assert curve["step"] == [0, 1, 2]  # eval_every defaults to steps/4 -> 1
        assert curve["samples"] == [a["init_samples"] + 8 * i for i in range(3)]
        if arm == "grpo":  # steps weighted by their non-degenerate share
            w = [[1 - r["adv/degenerate_fraction"] for r in m[1:]] for m in runs]
            v = [[r["adv/variance_nondegenerate"] for r in m[1:]] for m in runs]
            per_run = [
                sum(a * b for a, b in zip(x, y, strict=True)) / sum(x)
                for x, y in zip(w, v, strict=True)
            ]
            var_key = "adv/variance_nondegenerate"
        else:
            per_run = [sum(r["adv/variance"] for r in m[1:]) / 2 for m in runs]
            var_key = "adv/variance"
        assert a["run_mean"][var_key]["mean"] == pytest.approx(sum(per_run) / n)
        assert a["run_mean"][var_key]["mean"] > 0
    assert s["arms"]["offline_init"]["init_samples"] == 16 * 2  # train prompts x n0
    assert "adv/degenerate_fraction" in s["arms"]["grpo"]["train_curves"]
    assert "adv/degenerate_fraction" not in s["arms"]["spo"]["train_curves"]
    assert s["arms"]["spo"]["calibration"]["brier"]["n"] == 2
    assert s["arms"]["grpo"]["calibration"] == {}
    assert s["arms"]["spo"]["tracker"]["frontier_seen"]["n"] == 2

    for name in s["plots"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.html").read_text()
    assert "spo · seed1" in report and "offline_init · seed0" in report
    page = md.read_text()
    assert "| **spo** | 2 |" in page and "../study/accuracy_vs_samples.png" in page
    assert "search budget is zero" in page

    # a fresh clone has only the committed files of each run (no checkpoints, no values):
    # the summary comes out the same from them
    clone = tmp_path / "clone"
    for run_dir in out.glob("runs/*/seed*"):
        record = json.loads((run_dir / "run.json").read_text())
        assert record["status"] == "finished" and record["steps"] == 2
        assert (record["calibration"] is None) == (run_dir.parent.name == "grpo")
        for name in COMMITTED:
            if (run_dir / name).is_file():
                dest = clone / run_dir.relative_to(out) / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes((run_dir / name).read_bytes())
    i = argv.index("--out")
    again = [*argv[:i], "--out", str(clone), "--summarize-only"]  # --out, --markdown last
    assert main(again) == 0
    s2 = json.loads((clone / "summary.json").read_text())
    assert s2["failed"] == [] and s2["paired"]["grpo"]["greedy"]["n"] == 2
    for arm, a in s["arms"].items():
        b = s2["arms"][arm]
        assert b["init_samples"] == a["init_samples"] and b["n_finished"] == a["n_finished"]
        for key in ("final", "run_mean", "tracker", "calibration"):
            assert flatten(b[key]) == pytest.approx(flatten(a[key])), (arm, key)
    assert s2["paired"] == s["paired"]

    # rerun: nothing is trained again, the summary is rewritten
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/metrics.jsonl")}
    capsys.readouterr()
    assert main(argv) == 0
    assert "5 finished, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_run_plan_isolates_failures_resumes_partial_runs(tmp_path, monkeypatch):
    """No real training: `_call` is faked. A failing run does not stop the others (jobs=2),
    a run with an earlier checkpoint is resumed, a finished one is not touched."""
    import argparse

    import spo.commands.compare as compare_command
    import spo.study.compare as compare
    import spo.study.runs as runs
    from spo.train.checkpoint import MARKER

    def fake_checkpoint(run_dir: Path, step: int) -> None:
        path = run_dir / "checkpoints" / f"step_{step:06d}"
        path.mkdir(parents=True)
        (path / MARKER).write_text(json.dumps({"step": step}))

    calls = []

    def fake_call(cmd, log):
        calls.append(cmd)
        if cmd[3] == "train":
            run_dir = Path(cmd[5] if cmd[4] == "--resume" else cmd[-1].split("=", 1)[1])
            if "grpo" in str(run_dir):
                return 1, "Traceback ... boom"
            fake_checkpoint(run_dir, 2)
        return 0, ""

    monkeypatch.setattr(compare, "_call", fake_call)
    parser = argparse.ArgumentParser()
    compare_command.add_arguments(parser)
    argv = ["configs/demo.yaml", "steps=2", "--seeds", "2", "--jobs", "2", "--calibration", "0"]
    args = parser.parse_args([*argv, "--out", str(tmp_path / "study")])
    plan = compare.make_plan(args)
    assert any(o.startswith("threads=") for o in plan.overrides)  # jobs > 1 splits the cores
    spo0, spo1 = (s for s in plan.runs if s.arm == "spo")
    fake_checkpoint(spo0.run_dir, 2)  # finished
    fake_checkpoint(spo1.run_dir, 1)  # interrupted after step 1
    # a run dir needs the config it was made with (checked before anything runs)
    from omegaconf import OmegaConf

    for spec in (spo0, spo1):
        cfg = runs.resolved_config(plan.config, plan.train_args(spec))
        OmegaConf.save(
            OmegaConf.from_dotlist([f"{k}={v}" for k, v in cfg.items() if v is not None]),
            spec.run_dir / "config.yaml",
        )
    # grpo seed 1 finished elsewhere: a fresh clone of a committed study (run.json, no
    # checkpoints) is summarised, never trained over
    grpo1 = next(s for s in plan.runs if s.arm == "grpo" and s.seed == 1)
    grpo1.run_dir.mkdir(parents=True)
    (grpo1.run_dir / "run.json").write_text(json.dumps({"status": "finished", "steps": 2}))
    specs = compare.run_plan(plan, jobs=2, log=lambda *_: None)
    status = {(s.arm, s.seed): s.status for s in specs}
    assert status == {
        ("spo", 0): "finished",
        ("spo", 1): "finished",
        ("grpo", 0): "failed",
        ("grpo", 1): "finished",
    }
    assert "boom" in next(s.message for s in specs if s.arm == "grpo")
    trains = [c for c in calls if c[3] == "train"]
    assert len(trains) == 2  # spo seed0 and grpo seed1 were skipped
    assert not (grpo1.run_dir / "checkpoints").exists()
    assert json.loads((spo0.run_dir / "run.json").read_text())["status"] == "finished"
    assert [c[4:] for c in trains if c[4] == "--resume"] == [
        ["--resume", str(spo1.run_dir), "steps=2"]
    ]

    # a run dir made with other settings is refused, not mixed in
    saved = spo0.run_dir / "config.yaml"
    saved.write_text(saved.read_text().replace("lr: 2.0e-05", "lr: 0.001"))
    from spo.train.config import ConfigError

    with pytest.raises(ConfigError, match=r"optim\.lr=0\.001"):
        compare.run_plan(plan, jobs=1, log=lambda *_: None)


def test_run_order_puts_algorithms_first_and_is_seed_major(tmp_path):
    """An interrupted study keeps the most complete pairs: every algorithm's seed 0, then
    seed 1, ..., and only then the ablations (seed-major too); no run is lost or doubled."""
    import argparse

    import spo.commands.compare as compare_command
    import spo.study.compare as compare

    parser = argparse.ArgumentParser()
    compare_command.add_arguments(parser)
    args = parser.parse_args(
        [
            *("configs/demo.yaml", "--algos", "spo,grpo,critic", "--seeds", "3"),
            *("--ablations", "no_baseline,constant_rho", "--ablation-seeds", "2"),
            *("--out", str(tmp_path / "study")),
        ]
    )
    plan = compare.make_plan(args)
    order = [(s.arm, s.seed) for s in compare.run_order(plan)]
    assert order == [
        ("spo", 0), ("grpo", 0), ("critic", 0),
        ("spo", 1), ("grpo", 1), ("critic", 1),
        ("spo", 2), ("grpo", 2), ("critic", 2),
        ("no_baseline", 0), ("constant_rho", 0),
        ("no_baseline", 1), ("constant_rho", 1),
    ]  # fmt: skip
    assert [(s.arm, s.seed) for s in plan.runs][:3] == [("spo", 0), ("spo", 1), ("spo", 2)]
    # --algo-seeds: fewer seeds for one algorithm; the order stays seed-major
    args.algo_seeds, args.ablations = "critic=1", ""
    order = [(s.arm, s.seed) for s in compare.run_order(compare.make_plan(args))]
    assert order == [
        ("spo", 0), ("grpo", 0), ("critic", 0), ("spo", 1), ("grpo", 1), ("spo", 2), ("grpo", 2)
    ]  # fmt: skip


# ------------------------------------------------------------ intervals and pairs
def test_t_quantile_matches_scipy():
    from scipy.stats import t

    from spo.study.stats import t_quantile

    for df in (1, 2, 3, 4, 5, 7, 10, 29, 100):
        for q in (0.95, 0.975, 0.995, 0.025):
            assert t_quantile(q, df) == pytest.approx(t.ppf(q, df), rel=1e-6, abs=1e-9)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError, match="df > 0"):
        t_quantile(0.975, 0)


def test_t_interval_hand_computed():
    from spo.study.stats import t_interval

    # mean 0.04, sd 0.03, n 3: half-width t(0.975, 2) · 0.03/√3 = 4.302653 · 0.0173205
    iv = t_interval([0.01, 0.04, 0.07])
    assert (iv["n"], iv["mean"], iv["std"]) == (3, pytest.approx(0.04), pytest.approx(0.03))
    assert iv["lo"] == pytest.approx(0.04 - 0.0745242, abs=1e-6)
    assert iv["hi"] == pytest.approx(0.04 + 0.0745242, abs=1e-6)
    one = t_interval([0.5, None])
    assert one["mean"] == 0.5 and one["lo"] is None and one["n"] == 1


def test_paired_differences_use_common_seeds_only():
    from spo.study.summary import paired_differences

    def arm(finals: dict[int, dict]) -> dict:
        return {"runs": [{"seed": s, "final": f} for s, f in finals.items()]}

    arms = {
        "spo": arm(
            {0: {"greedy": 0.8, "avg@4/difficulty=1": 0.1}, 1: {"greedy": 0.7}, 2: {"greedy": 0.9}}
        ),
        "grpo": arm({0: {"greedy": 0.6}, 2: {"greedy": 0.8}}),  # seed 1 failed: no final
        "no_baseline": {"runs": [{"seed": 0, "status": "failed"}]},
    }
    p = paired_differences(arms)
    assert set(p) == {"grpo"}  # nothing in common with no_baseline, spo is the reference
    g = p["grpo"]["greedy"]
    assert g["seeds"] == [0, 2] and g["diffs"] == pytest.approx([0.2, 0.1]) and g["n"] == 2
    # mean 0.15, sd 0.0707107, t(0.975, 1) = 12.7062: half-width 12.7062 · 0.05
    assert g["hi"] - g["mean"] == pytest.approx(12.7062047 * 0.05, rel=1e-6)
    assert "avg@4/difficulty=1" not in p["grpo"]
    assert paired_differences({"grpo": arms["grpo"]}) == {}


def test_page_title_status_and_reading():
    from spo.study.page import reading_section, status_line, title

    arm = {"algo": "spo", "runs": [{"seed": 0}, {"seed": 1}]}
    summary = {
        "settings": {"task.name": "arithmetic", "model.path": "m"},
        "arms": {
            "spo": arm,
            "grpo": {**arm, "algo": "grpo"},
            "critic": {**arm, "algo": "critic"},
            "no_baseline": {**arm, "algo": "spo"},  # an ablation: not in the title
        },
        "failed": ["grpo/seed1", "critic/seed0", "critic/seed1"],
    }
    assert title(summary) == "SPO vs GRPO vs CRITIC: arithmetic with m"
    status = status_line(summary)[0]
    assert status.startswith("**Status: partial.** 5 of 8 runs finished; the 3 others")
    assert status_line({**summary, "failed": []}) == []
    assert reading_section("  \n") == [] and reading_section(None) == []
    assert reading_section("SPO wins.\n") == ["## Reading\n\nSPO wins.", ""]
    assert reading_section("## My reading\nx") == ["## My reading\nx", ""]
