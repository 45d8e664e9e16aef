"""A full disk or an I/O error while checkpointing: the partial temp dir is removed, every
older checkpoint stays intact and loadable, and the run ends with one clear line (exit 2).

Two ways in: errors injected at the write layer (torch.save raising ENOSPC / EIO, as a
real full disk makes it do), and, where this process may mount one, a real small tmpfs
that fills up while the second checkpoint is written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import test_trainer
import torch
from test_trainer import tiny_overrides

from spo.cli import main
from spo.policy.models import load_policy
from spo.train import checkpoint as ckpt

task_files = test_trainer.task_files  # the fixture, shared


def assert_intact_and_loadable(run: Path, names: list[str]) -> None:
    root = run / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == names
    assert not list(root.glob(".tmp-*")), list(root.iterdir())
    for name in names:
        assert ckpt.verify_checkpoint(root / name)
        assert ckpt.read_state(root / name)["step"] == int(name.split("_")[1])
        load_policy(str(root / name), dtype="bfloat16", device="cpu")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_write_error_keeps_older_checkpoints_and_ends_with_one_line(
    tiny_model_dir, task_files, tmp_path, capsys, monkeypatch, code
):
    run = tmp_path / "run"
    args = tiny_overrides(tiny_model_dir, task_files, run, steps=4, checkpoint_every=2)
    real_save, calls = torch.save, []

    def failing_save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:  # the second checkpoint (step 4): half a file, then the error
            Path(f).write_bytes(b"\0" * 1000)
            raise OSError(code, os.strerror(code))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    capsys.readouterr()
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spo: error: cannot write checkpoint step_000004") and "\n" not in err
    assert os.strerror(code) in err and "step_000002" in err, err
    assert_intact_and_loadable(run, ["step_000002"])
    monkeypatch.setattr(torch, "save", real_save)  # the disk is fixed: resume continues
    assert main(["train", *args, "resume=true"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_full_metrics_file_is_one_line(tiny_model_dir, task_files, tmp_path, capsys, monkeypatch):
    from spo.train import logging as run_logging

    def full(*_a, **_kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_logging.os, "fsync", full)
    code = main(["train", *tiny_overrides(tiny_model_dir, task_files, tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("spo: error: cannot write") and "metrics.jsonl" in err


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="spo-tmpfs-probe-"))  # one per xdist worker
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)]).returncode
    if ok == 0:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and permission to mount a tmpfs")
def test_real_full_tmpfs(tiny_model_dir, task_files, tmp_path, capsys):
    # Size the filesystem from a real run: room for one checkpoint and the logs, not two.
    sizing = tmp_path / "sizing"
    args = tiny_overrides(tiny_model_dir, task_files, sizing, steps=2, checkpoint_every=2)
    assert main(["train", *args]) == 0
    one = sum(f.stat().st_size for f in (sizing / "checkpoints").rglob("*") if f.is_file())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    size_kb = (one * 3 // 2) // 1024 + 64
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)], check=True
    )
    try:
        run = mnt / "run"
        args = tiny_overrides(tiny_model_dir, task_files, run, steps=4, checkpoint_every=2)
        capsys.readouterr()
        assert main(["train", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("spo: error: cannot write checkpoint step_000004"), err
        assert "no space left on device" in err.lower(), err
        assert_intact_and_loadable(run, ["step_000002"])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
