"""`spo report` on synthetic run directories: every section renders, runs overlay, errors."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from spo.algo import ValueTracker
from spo.cli import main
from spo.study.plots import smooth
from spo.study.report import build_report
from spo.study.runs import load_run
from spo.train.checkpoint import write_state


def make_run(
    root: Path,
    name: str,
    *,
    algo: str = "spo",
    steps: int = 30,
    seed: int = 0,
    checkpoint: bool = True,
    extras: bool = True,
) -> Path:
    """metrics.jsonl + config.yaml + a checkpoint with tracker state (+ eval/demo files)."""
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"algo: {algo}\nsamples_per_step: 8\ngroup_size: 4\noptim:\n  lr: 2.0e-05\n"
        "tracker:\n  rho: drift\n  d_half: 0.06\n"
    )
    lines = []
    for step in range(1, steps + 1):
        r = {
            "step": step,
            "samples": 8 * step,
            "wall_seconds": 2.0 * step,
            "reward/mean": float(min(1, 0.3 + 0.01 * step + 0.05 * rng.standard_normal())),
            "adv/variance": 0.2 + 0.01 * rng.random(),
            "adv/abs_le_1e-4": 0.0,
            "adv/abs_le_0.02": 0.05,
            "tracker/value_mean": 0.4 + 0.005 * step,
            "tracker/count_mean": min(8.0, 1 + step / 3),
            "time/generate": 1.2,
            "time/score": 0.1,
            "time/train": 0.6,
            "time/tracker": 0.1,
            "time/step": 2.0,
            "throughput/samples_per_s": 4.0,
        }
        if algo == "grpo":
            r["adv/degenerate_fraction"] = 0.5
            r["adv/variance_nondegenerate"] = 0.25
        if step % 10 == 0:
            r.update({"eval/greedy": 0.3 + step / 100, "eval/avg@1": 0.2 + step / 100})
        lines.append(json.dumps(r))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if checkpoint:
        ckpt = run / "checkpoints" / f"step_{steps:06d}"
        ckpt.mkdir(parents=True)
        tracker = ValueTracker(40)
        for s in range(1, 6):
            ids = rng.choice(40, 8, replace=False)
            tracker.update(ids, rng.integers(0, 2, 8).astype(float), 0.9, step=s)
        seen = tracker.last_step() >= 0
        write_state(
            ckpt,
            {
                "step": steps,
                "samples_seen": 8 * steps,
                "train_seconds": 2.0 * steps,
                "prompt_ids": np.array([f"p{i}" for i in range(40)]),
                "tracker": tracker.state_dict(),
                "drift": {
                    "total": 0.2,
                    "visit_total": np.where(seen, 0.1, np.nan).astype(np.float32),
                },
                "sampler": {"eps": 0.05, "mode": "priority" if algo == "spo" else "uniform"},
            },
        )
        (ckpt / "COMPLETE").write_text(json.dumps({"step": steps}))
    if extras:
        (run / "demo_result.json").write_text(
            json.dumps(
                {
                    "before": {"greedy": 0.3, "avg@4": 0.1},
                    "after": {"greedy": 0.6, "avg@4": 0.5},
                    "samples": 8 * steps,
                    "steps": steps,
                }
            )
        )
        (run / "eval.json").write_text(
            json.dumps(
                {
                    "results": [
                        {
                            "label": "step_000015",
                            "step": 15,
                            "samples": 120,
                            "wall_seconds": 30.0,
                            "metrics": {"greedy": 0.45, "avg@8": 0.35},
                        }
                    ],
                    "calibration": {
                        "brier": 0.2,
                        "ece": 0.05,
                        "bins": [
                            {"count": 3, "value_mean": 0.25, "rate_mean": 0.3},
                            {"count": 0, "value_mean": None, "rate_mean": None},
                            {"count": 5, "value_mean": 0.7, "rate_mean": 0.6},
                        ],
                    },
                }
            )
        )
    return run


def images(text: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    ]


def test_report_two_runs_overlaid(tmp_path):
    a = make_run(tmp_path, "run-a", algo="spo")
    b = make_run(tmp_path, "run-b", algo="grpo", seed=1)
    text, runs = build_report([a, b])
    pngs = images(text)
    assert len(pngs) == 7 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    for label in ("spo · run-a", "grpo · run-b"):
        assert label in text
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"(src|href)\s*=\s*['\"](?!data:)", text)
    # settings table shows where the runs differ
    assert "<code>algo</code>" in text
    # the summary: final reward over the last 10% of steps, held-out first -> last point
    want = np.mean(
        [
            json.loads(line)["reward/mean"]
            for line in (a / "metrics.jsonl").read_text().splitlines()[-3:]
        ]
    )
    assert f"{want:.3f}" in text
    assert "30.0% / 10.0% → 60.0% / 50.0%" in text  # demo before -> after
    assert runs[1].tracker["sampler"]["mode"] == "uniform"


def test_heldout_points_merge_every_source(tmp_path):
    run = load_run(make_run(tmp_path, "r"))
    got = [(p["samples"], p["source"]) for p in run.heldout]
    # demo before (0), in-training eval (80, 160), spo eval (120); at 240 the demo's
    # k=4 after-eval wins over the in-training k=1 eval of the same step
    assert got == [
        (0, "demo"),
        (80, "in-training eval"),
        (120, "spo eval"),
        (160, "in-training eval"),
        (240, "demo"),
    ]
    assert run.heldout[2]["sampled"] == 0.35  # avg@8 from eval.json
    assert run.calibration["brier"] == 0.2
    # checkpoint diagnostics computed on the fly (the trainer wrote none)
    assert [r["step"] for r in run.diagnostics_log] == [30]
    assert 0 <= run.tracker["frontier_seen"] <= 1


def test_report_of_a_bare_run_still_renders(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "samples": 4, "reward/mean": 0.5}) + "\n"
    )
    text, runs = build_report([run])
    assert len(images(text)) == 7
    assert runs[0].label == "bare"
    assert runs[0].tracker is None and runs[0].heldout == []


def test_spo_report_cli(tmp_path, capsys):
    a = make_run(tmp_path, "a", steps=12, extras=False)
    assert main(["report", str(a)]) == 0
    assert (a / "report.html").is_file()
    assert "wrote" in capsys.readouterr().out
    out = tmp_path / "sub" / "cmp.html"
    b = make_run(tmp_path, "b", algo="grpo", steps=12, checkpoint=False)
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    assert len(images(out.read_text())) == 7


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_spo_report_user_errors(tmp_path, capsys, what):
    path = tmp_path / "x"
    if what == "empty":
        path.mkdir()
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spo: error:") and "\n" not in err


def test_smooth_keeps_constants_and_length():
    y = np.full(50, 0.7)
    np.testing.assert_allclose(smooth(y), y)
    assert smooth(np.arange(3.0)).tolist() == [0.0, 1.0, 2.0]


def test_tool_runs_get_a_tool_use_section(tmp_path):
    """Runs with multi-turn metrics get the "Tool use" section (one more plot); others not."""
    plain = make_run(tmp_path, "plain")
    tool = make_run(tmp_path, "tool")
    rows = [json.loads(x) for x in (tool / "metrics.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r.update(
            {
                "tools/episodes_with_calls": min(1.0, 0.5 + 0.02 * i),
                "tools/episodes_code_ok": min(1.0, 0.4 + 0.02 * i),
                "tools/turns_per_episode": 1.8,
                "rollout/engine_idle_fraction": 0.1,
            }
        )
    (tool / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text_plain, _ = build_report([plain])
    text_tool, _ = build_report([tool])
    assert "Tool use" not in text_plain and "Tool use" in text_tool
    assert len(images(text_tool)) == len(images(text_plain)) + 1
