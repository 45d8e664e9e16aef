"""RUN/samples.jsonl: what the model wrote, per step and per in-training eval; the warning
after steps of constant reward; TensorBoard text; lossless resume of the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_trainer
from test_trainer import tiny_overrides

from spo.cli import main
from spo.train.logging import ConstantRewardWatch, sample_positions

task_files = test_trainer.task_files  # the fixture, shared


def read_rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "samples.jsonl").read_text("utf-8").splitlines()]


def test_rows_per_step_and_per_eval(tiny_model_dir, task_files, tmp_path):
    run = tmp_path / "run"
    args = tiny_overrides(
        tiny_model_dir, task_files, run, steps=3, eval_every=2, **{"log.samples_per_step": 3}
    )
    assert main(["train", *args]) == 0
    rows = read_rows(run)
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in train] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [r["step"] for r in evals] == [2, 2, 2, 3, 3, 3]
    keys = {"step", "split", "prompt_id", "prompt", "completion", "reward", "advantage", "value"}
    assert all(set(r) == keys for r in rows)
    assert all(r["value"] == pytest.approx(0.5) for r in train[:3])  # the prior, pre-update
    assert all(r["advantage"] is None and r["value"] is None for r in evals)
    assert all(0 <= r["reward"] <= 1 and isinstance(r["completion"], str) for r in rows)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] <= metrics[-1]["step"] for r in rows)


def test_resume_cuts_samples_back_and_replays_them_identically(
    tiny_model_dir, task_files, tmp_path
):
    def args(run, steps, **extra):
        return tiny_overrides(
            tiny_model_dir, task_files, tmp_path / run, steps=steps, eval_every=2, **extra
        )

    assert main(["train", *args("straight", 4)]) == 0
    assert main(["train", *args("resumed", 2)]) == 0
    with open(tmp_path / "resumed/samples.jsonl", "a", encoding="utf-8") as f:  # a crash at 3
        f.write(json.dumps({"step": 3, "split": "train", "prompt": "lost"}) + "\n" + '{"ste')
    assert main(["train", *args("resumed", 4, resume="true")]) == 0
    straight, resumed = read_rows(tmp_path / "straight"), read_rows(tmp_path / "resumed")
    assert resumed == straight and len(straight) == 4 * 4 + 2 * 4


def test_constant_reward_warning_once(tiny_model_dir, task_files, tmp_path, capsys):
    zero = tmp_path / "zero.py"
    zero.write_text("def reward(completion, answer):\n    return 0.0\n")
    run = tmp_path / "run"
    args = tiny_overrides(
        tiny_model_dir,
        task_files,
        run,
        steps=4,
        **{"task.reward_fn": f"{zero}:reward", "log.constant_reward_warning": 2},
    )
    capsys.readouterr()
    assert main(["train", *args]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: every reward")]
    assert len(warnings) == 1, err
    assert "was 0 for 2 steps" in warnings[0] and "too hard" in warnings[0]
    assert "answer format" in warnings[0] and str(run / "samples.jsonl") in warnings[0]


def test_constant_reward_watch():
    watch = ConstantRewardWatch(3, Path("RUN/samples.jsonl"))
    assert [watch.update(x) for x in (1.0, 1.0, 0.5, 1.0, 1.0)] == [None] * 5
    message = watch.update(1.0)
    assert message is not None and "every reward was 1 for 3 steps" in message
    assert "too easy" in message
    assert watch.update(1.0) is None  # once
    assert ConstantRewardWatch(0, Path("x")).update(0.0) is None  # 0 = off


@pytest.mark.parametrize(
    ("batch", "n", "expected"), [(8, 4, [0, 2, 5, 7]), (3, 5, [0, 1, 2]), (8, 1, [0]), (8, 0, [])]
)
def test_sample_positions(batch, n, expected):
    assert sample_positions(batch, n) == expected


def test_tensorboard_gets_a_text_summary(tiny_model_dir, task_files, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = tiny_overrides(tiny_model_dir, task_files, run, steps=1, **{"log.tensorboard": True})
    assert main(["train", *args]) == 0
    acc = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    assert any(t.startswith("samples/train") for t in tags), tags
    text = acc.Tensors(next(t for t in tags if t.startswith("samples/train")))[0]
    assert b"| prompt | completion | reward" in text.tensor_proto.string_val[0]
