"""The `spo` command as a user meets it: help texts, the simulate command, bad arguments."""

from __future__ import annotations

import dataclasses

import pytest

from spo.cli import main
from spo.train.config import TrainConfig


def _keys(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_train_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for key in _keys(TrainConfig()):
        assert f"  {key}=" in out, key


@pytest.mark.parametrize("command", ["demo", "init-values", "eval", "report", "simulate"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: spo" in capsys.readouterr().out


def test_simulate_paper_through_the_cli(capsys):
    assert main(["simulate", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "486 s" in out and "112 s" in out and "4.35x" in out


def test_unknown_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2


def test_missing_config_file_is_one_line(capsys, tmp_path):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spo: error:") and "nope.yaml" in err and "\n" not in err


def test_resume_of_a_non_run_dir_is_one_line(capsys, tmp_path):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.yaml" in err and "\n" not in err
