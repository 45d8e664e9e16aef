"""The study can be rebuilt from what a repository commits: no checkpoints, no values files
(issue 19). Every committed `spo compare` study under docs/results is copied, tracked files
only, into a temp dir and summarised again there; the tables must come out the same."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from spo.cli import main
from spo.study.runs import COMMITTED, flatten

ROOT = Path(__file__).resolve().parents[2]
STUDIES = sorted(
    p.parent
    for p in (ROOT / "docs" / "results").glob("*/summary.json")
    if json.loads(p.read_text()).get("command", "").startswith("spo compare ")
)


def _tracked(folder: Path) -> list[str] | None:
    """Paths under `folder` that git tracks (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", str(folder.relative_to(ROOT))],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in out.decode().split("\0") if p]


def test_gitignore_keeps_what_a_study_needs_and_drops_checkpoints():
    run = "docs/results/any_study/runs/spo/seed0"
    paths = [f"{run}/{name}" for name in COMMITTED]
    heavy = [
        f"{run}/checkpoints/step_000020/model.safetensors",
        f"{run}/tb/events.out",
        f"{run}/samples.jsonl",
        "docs/results/any_study/values/seed0.parquet",
        "runs/demo/metrics.jsonl",
    ]
    try:
        res = subprocess.run(
            ["git", "check-ignore", "--no-index", *paths, *heavy],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        pytest.skip("git is not available")
    if res.returncode > 1:
        pytest.skip(f"not a git checkout: {res.stderr.strip()}")
    assert sorted(res.stdout.split()) == sorted(heavy)


def _flat(arm: dict, key: str) -> dict:
    """arm[key] as one flat dict of numbers (None kept): pytest.approx takes no nesting."""
    value = arm[key]
    return flatten(value) if isinstance(value, dict) else {key: value}


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_committed_study_rebuilds_from_tracked_files(study: Path, tmp_path, monkeypatch):
    files = _tracked(study)
    if not files:
        pytest.skip("not a git checkout, or the study is not committed")
    old = json.loads((study / "summary.json").read_text())
    argv = shlex.split(old["command"])[2:]
    copy = tmp_path / "clone"
    for rel in files:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    assert not list(copy.rglob("checkpoints")) and not list(copy.rglob("*.parquet"))
    out = copy / old["out"]
    (out / "summary.json").unlink()
    for name in ("--markdown", "--out"):  # write into the copy, nowhere else
        if name in argv:
            i = argv.index(name)
            del argv[i : i + 2]
    md = tmp_path / "page.md"
    monkeypatch.chdir(ROOT)  # the config path of the command is relative to the repository
    rc = main(["compare", *argv, "--out", str(out), "--summarize-only", "--markdown", str(md)])
    assert rc == 0
    new = json.loads((out / "summary.json").read_text())
    assert new["failed"] == old["failed"]
    for arm, a in old["arms"].items():
        b = new["arms"][arm]
        for key in ("n_finished", "init_samples", "final", "base", "run_mean", "tracker"):
            assert _flat(b, key) == pytest.approx(_flat(a, key)), (arm, key)
        calib = _flat(b, "calibration")  # rescored records keep every old score
        for key, value in _flat(a, "calibration").items():
            if key in calib:
                assert calib[key] == pytest.approx(value), (arm, key)
        if a["calibration"]:
            assert b["calibration"]["brier_skill"]["n"] == a["calibration"]["brier"]["n"]
    page = md.read_text()
    assert "Paired differences" in page and "| arm | seeds |" in page
    for name in new["plots"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def _old_run(tmp_path: Path) -> Path:
    """A run dir as a study committed it before run.json: no checkpoints; calibration in
    the old format (no rewards, `brier_constant`), diagnostics in calibration_eval.json."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "samples": 8 * s, "reward/mean": 0.5} for s in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "diagnostics.jsonl").write_text(json.dumps({"step": 2, "frontier_seen": 0.5}) + "\n")
    diag = {"step": 2, "value_mean_seen": 0.4, "frontier_seen": 0.5, "num_prompts": 3}
    old_cal = {
        "step": 2,
        "n_prompts": 3,
        "samples_per_prompt": 4,
        "brier": 0.21,
        "brier_constant": 0.2430556,
        "value": [0.2, 0.8, 0.5],
        "rate": [0.25, 0.75, 0.25],
    }
    (run / "calibration_eval.json").write_text(
        json.dumps({"results": [{"step": 2, "diagnostics": diag}], "calibration": old_cal})
    )
    return run


def test_old_committed_run_is_read_and_rescored_without_checkpoints(tmp_path):
    from spo.study.runs import final_calibration, final_diagnostics, load_run, study_state

    run = _old_run(tmp_path)
    assert study_state(run, 2) == "finished"
    assert study_state(run, 4) == "new"  # no checkpoint and never reached step 4
    assert final_diagnostics(run, 2)["value_mean_seen"] == 0.4
    cal = final_calibration(run, 2)
    # rebuilt binary outcomes 1/4, 3/4, 1/4 per prompt: the hand case of test_diagnostics
    assert cal["brier"] == pytest.approx(0.21)
    assert cal["reference"] == 0.4  # the tracker's mean v̂ over seen prompts at that step
    assert cal["brier_reference"] == pytest.approx((0.4 - 5 / 12) ** 2 + 35 / 144)
    assert cal["auc"] == pytest.approx(25.5 / 35)
    assert "rescored" in cal and final_calibration(run, 3) is None  # another step's record
    loaded = load_run(run)
    assert loaded.tracker["value_mean_seen"] == 0.4
    assert loaded.calibration["brier_skill"] == pytest.approx(cal["brier_skill"])


def test_run_json_wins_and_non_binary_rates_are_left_alone(tmp_path):
    from spo.study.runs import final_calibration, study_state
    from spo.train.diagnostics import rescore_calibration

    run = _old_run(tmp_path)
    record = {"status": "finished", "steps": 5, "calibration": {"brier": 0.1, "brier_skill": 0.3}}
    (run / "run.json").write_text(json.dumps(record))
    assert study_state(run, 5) == "finished"
    assert final_calibration(run, 5)["brier_skill"] == 0.3
    odd = {"value": [0.5], "rate": [0.3], "samples_per_prompt": 4}  # 1.2 successes of 4
    assert rescore_calibration(odd, 0.5) is odd
