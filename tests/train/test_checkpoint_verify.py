"""Verified checkpoints: the COMPLETE marker's manifest catches files damaged after the
checkpoint was written; resume falls back to the newest intact checkpoint, `spo eval` and
`spo report` skip or refuse damaged ones, each with one line; nothing is deleted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import test_trainer
from test_trainer import tiny_overrides

from spo.cli import main
from spo.train import checkpoint as ckpt

KINDS = {  # each kind of file a checkpoint holds
    "model": "model.safetensors",
    "optimizer": "optimizer.pt",
    "state": "state.npz",
    "tracker export": "tracker.parquet",
}


def damage(file: Path, how: str) -> None:
    data = bytearray(file.read_bytes())
    if how == "truncate":  # half of it gone, as after an interrupted copy
        file.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "zero-fill":  # same size, the tail zeroed (a lost write on a full disk)
        half = len(data) // 2
        file.write_bytes(bytes(data[:half]) + bytes(len(data) - half))
    elif how == "flip":  # one bit of one byte in the middle
        data[len(data) // 2] ^= 0x01
        file.write_bytes(bytes(data))
    else:
        raise AssertionError(how)


# ------------------------------------------------------------------ checkpoint module alone
def write_files(tmp: Path) -> None:
    (tmp / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "x.json").write_text("{}")


def test_manifest_lists_every_file_with_size_and_checksum(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 3, write_files, keep=2)
    marker = json.loads((path / ckpt.MARKER).read_text())
    assert marker["step"] == 3 and set(marker["files"]) == {"model.safetensors", "sub/x.json"}
    assert marker["files"]["model.safetensors"]["size"] == 256 * 64
    assert ckpt.verify_checkpoint(path) is True
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("how", ["truncate", "zero-fill", "flip"])
def test_verify_names_the_damaged_file(tmp_path, how):
    path = ckpt.save_checkpoint(tmp_path, 1, write_files, keep=2)
    damage(path / "model.safetensors", how)
    with pytest.raises(ckpt.CheckpointError, match=r"step_000001 is damaged: model\.safetensors"):
        ckpt.verify_checkpoint(path)
    # a file the caller does not read is not checked
    assert ckpt.verify_checkpoint(path, only=["sub/x.json"]) is True


def test_missing_file_and_old_marker(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, write_files, keep=2)
    (path / "sub" / "x.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"sub/x\.json is missing"):
        ckpt.verify_checkpoint(path)
    (path / ckpt.MARKER).write_text(json.dumps({"step": 1}))  # written before manifests
    assert ckpt.verify_checkpoint(path) is False


def test_stale_temp_dirs_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".tmp-step_000007").mkdir(parents=True)
    (tmp_path / ".tmp-step_000007" / "model.safetensors").write_bytes(b"half")
    ckpt.save_checkpoint(tmp_path, 8, write_files, keep=2)
    assert [p.name for p in tmp_path.iterdir()] == ["step_000008"]


# ----------------------------------------------------------------------- through the CLI
@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    """A 2-step run with checkpoints at steps 1 and 2 (copied per test, never modified)."""
    base = tmp_path_factory.mktemp("verify")
    data = base / "data.jsonl"  # the same files as test_trainer's task_files fixture
    rows = [
        {"prompt": f"Say something about {i} and {i * 7 % 13}.", "answer": str(i)}
        for i in range(40)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = base / "reward.py"
    reward.write_text(test_trainer.REWARD_SRC)
    files = {"data": str(data), "reward": f"{reward}:reward"}
    run = base / "run"
    args = tiny_overrides(
        tiny_model_dir, files, run, steps=2, checkpoint_every=1, keep_checkpoints=5
    )
    assert main(["train", *args]) == 0
    return run, files


def copy_run(trained_run, tmp_path, tiny_model_dir) -> tuple[Path, list[str]]:
    src, files = trained_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    args = tiny_overrides(
        tiny_model_dir, files, run, steps=2, checkpoint_every=1, keep_checkpoints=5
    )
    return run, args


def metric_steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("how", ["truncate", "zero-fill", "flip"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_resume_falls_back_from_a_damaged_newest_checkpoint(
    trained_run, tmp_path, tiny_model_dir, capsys, kind, how
):
    run, args = copy_run(trained_run, tmp_path, tiny_model_dir)
    damaged = run / "checkpoints/step_000002" / KINDS[kind]
    damage(damaged, how)
    before = damaged.read_bytes()
    capsys.readouterr()
    assert main(["train", *args, "resume=true", "steps=3"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert KINDS[kind] in warnings[0] and "step_000001" in warnings[0], warnings[0]
    assert metric_steps(run) == [1, 2, 3]  # step 2 replayed from step 1, logged once
    # nothing deleted: the new step 2 replaced the damaged one, which is kept aside
    kept = run / "checkpoints/damaged-step_000002" / KINDS[kind]
    assert kept.read_bytes() == before
    assert ckpt.verify_checkpoint(run / "checkpoints/step_000002")


@pytest.mark.parametrize("kind", list(KINDS))
def test_eval_refuses_a_damaged_checkpoint_and_skips_it_in_a_run(
    trained_run, tmp_path, tiny_model_dir, capsys, kind
):
    run, _ = copy_run(trained_run, tmp_path, tiny_model_dir)
    damage(run / "checkpoints/step_000002" / KINDS[kind], "flip")
    capsys.readouterr()
    code = main(["eval", str(run / "checkpoints/step_000002"), "--k", "1", "--no-greedy"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("spo: error:") and "\n" not in err, err
    assert KINDS[kind] in err
    if kind != "model":
        return  # the run-level path is the same for every kind; once is enough
    out_json = tmp_path / "eval.json"
    code = main(["eval", str(run), "--k", "1", "--no-greedy", "--out", str(out_json)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sum(line.startswith("warning:") for line in captured.err.splitlines()) == 1
    labels = [r["label"] for r in json.loads(out_json.read_text())["results"]]
    assert labels == ["initial", "step_000001"]


def test_no_intact_checkpoint_is_one_error_line(trained_run, tmp_path, tiny_model_dir, capsys):
    run, args = copy_run(trained_run, tmp_path, tiny_model_dir)
    for step in (1, 2):
        damage(run / f"checkpoints/step_{step:06d}/optimizer.pt", "flip")
    capsys.readouterr()
    code = main(["train", *args, "resume=true", "steps=3"])
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err_lines[-1].startswith("spo: error: no readable checkpoint"), err_lines
    assert "optimizer.pt" in err_lines[-1]
    assert len(list((run / "checkpoints").glob("step_*"))) == 2  # nothing deleted
    code = main(["eval", str(run), "--k", "1", "--no-greedy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("spo: error:") and "no intact checkpoint" in err[-1]


def test_report_skips_a_damaged_checkpoint(trained_run, tmp_path, tiny_model_dir, capsys):
    from spo.study.runs import load_run

    run, _ = copy_run(trained_run, tmp_path, tiny_model_dir)
    damage(run / "checkpoints/step_000002/state.npz", "truncate")
    capsys.readouterr()
    data = load_run(run)
    err = capsys.readouterr().err
    assert "state.npz" in err and err.count("warning:") == 1
    assert data.tracker is not None and data.tracker["step"] == 1


def test_checkpoint_without_manifest_still_resumes(trained_run, tmp_path, tiny_model_dir, capsys):
    run, args = copy_run(trained_run, tmp_path, tiny_model_dir)
    for step in (1, 2):
        marker = run / f"checkpoints/step_{step:06d}" / ckpt.MARKER
        marker.write_text(json.dumps({"step": step}))  # the format before manifests
    capsys.readouterr()
    assert main(["train", *args, "resume=true", "steps=3"]) == 0
    err = capsys.readouterr().err
    assert "note: checkpoint step_000002 predates checkpoint manifests" in err
    assert metric_steps(run) == [1, 2, 3]
