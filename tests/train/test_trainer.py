"""End-to-end trainer tests on a tiny random Llama (seconds, not minutes).

The task is a small JSONL dataset with a user verifier that gives fractional rewards from
the completion text, so even a random model gets a non-degenerate learning signal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from spo.cli import main
from spo.train.config import load_config
from spo.train.trainer import Trainer

REWARD_SRC = '''
def reward(completion, answer):
    """Fraction of the first 8 characters that are ASCII letters: fractional, text-driven."""
    head = completion[:8]
    return sum(c.isascii() and c.isalpha() for c in head) / 8
'''


@pytest.fixture()
def task_files(tmp_path: Path) -> dict[str, str]:
    data = tmp_path / "data.jsonl"
    rows = [
        {"prompt": f"Say something about {i} and {i * 7 % 13}.", "answer": str(i)}
        for i in range(40)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = tmp_path / "reward.py"
    reward.write_text(REWARD_SRC)
    return {"data": str(data), "reward": f"{reward}:reward"}


def tiny_overrides(model_dir: Path, task_files: dict, run_dir: Path, **extra) -> list[str]:
    base = {
        "model.path": str(model_dir),
        "task.name": task_files["data"],
        "task.reward_fn": task_files["reward"],
        "task.train_size": 24,
        "task.test_size": 4,
        "steps": 3,
        "samples_per_step": 8,
        "group_size": 4,
        "rollout.max_new_tokens": 8,
        "rollout.batch_size": 8,
        "reward.workers": 0,
        "log.tensorboard": False,
        "log.progress": False,
        "checkpoint_every": 2,
        "optim.micro_batch_size": 4,
        "optim.lr": 1e-3,
        "eval_size": 4,
        "run_dir": str(run_dir),
    }
    base.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in base.items()]


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("algo", ["spo", "grpo", "rloo", "dr_grpo", "critic"])
def test_algorithms_train_a_few_steps(tiny_model_dir, task_files, tmp_path, algo):
    cfg = load_config(None, tiny_overrides(tiny_model_dir, task_files, tmp_path / "run", algo=algo))
    trainer = Trainer(cfg)
    before = params_of(trainer.model)
    try:
        last = trainer.run()
    finally:
        trainer.close()
    after = params_of(trainer.model)
    assert trainer.step == 3 and trainer.samples_seen == 24
    assert np.isfinite(last["train/loss"])
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in [
        "reward/mean",
        "adv/variance",
        "adv/abs_le_1e-4",
        "tracker/value_mean",
        "time/generate",
        "throughput/samples_per_s",
        "train/clip_fraction",
        "reward/timeouts",
        "reward/errors",
    ]:
        assert key in records[-1], key
    ckpts = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]
    assert (tmp_path / "run/config.yaml").is_file()


def test_grpo_uses_groups_and_spo_single_stream(tiny_model_dir, task_files, tmp_path):
    for algo, n_prompts in [("spo", 8), ("grpo", 2)]:
        cfg = load_config(
            None, tiny_overrides(tiny_model_dir, task_files, tmp_path / algo, algo=algo, steps=1)
        )
        trainer = Trainer(cfg)
        try:
            trainer.train_step()
        finally:
            trainer.close()
        assert len(trainer.last_prompt_idx) == n_prompts
        assert len(set(trainer.last_prompt_idx.tolist())) == n_prompts


def run_collecting_ids(cfg) -> tuple[Trainer, list[list[int]]]:
    trainer = Trainer(cfg)
    drawn = []
    try:
        while trainer.step < cfg.steps:
            trainer.train_step()
            drawn.append(trainer.last_prompt_idx.tolist())
            if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.steps:
                trainer.save_checkpoint()
    finally:
        trainer.close()
    return trainer, drawn


@pytest.mark.parametrize(
    ("algo", "rho"), [("spo", "drift"), ("spo", "replay"), ("critic", "drift")]
)
def test_resume_is_lossless(tiny_model_dir, task_files, tmp_path, algo, rho):
    def cfg(run, steps, resume=False):
        return load_config(
            None,
            tiny_overrides(
                tiny_model_dir,
                task_files,
                tmp_path / run,
                algo=algo,
                steps=steps,
                resume=resume,
                **{"tracker.rho": rho, "optim.updates_per_step": 2},
            ),
        )

    straight, ids_straight = run_collecting_ids(cfg("a", 5))
    _, ids_first = run_collecting_ids(cfg("b", 2))
    resumed, ids_rest = run_collecting_ids(cfg("b", 5, resume=True))
    assert ids_first + ids_rest == ids_straight
    # visits: samples drawn per prompt, checkpointed (one sample per drawn id here)
    drawn = np.bincount(np.concatenate(ids_straight), minlength=len(straight.train_examples))
    assert straight.visits.tolist() == drawn.tolist() == resumed.visits.tolist()
    assert straight.visits.sum() == straight.samples_seen
    diag = json.loads((tmp_path / "b/checkpoints/step_000005/diagnostics.json").read_text())
    assert diag["visits"]["max"] == drawn.max() and diag["visits"]["min"] == drawn.min()
    states = [(straight.tracker.state_dict(), resumed.tracker.state_dict())]
    if algo == "critic":  # the value head: θ, Adam moments, running feature statistics
        states.append((straight.critic.state_dict(), resumed.critic.state_dict()))
    for state, other in states:
        for key, value in state.items():
            assert np.array_equal(np.asarray(value), np.asarray(other[key])), key
    a, b = params_of(straight.model), params_of(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_offline_init_values_roundtrip(tiny_model_dir, task_files, tmp_path):
    values = tmp_path / "values.parquet"
    args = tiny_overrides(tiny_model_dir, task_files, tmp_path / "run")
    assert main(["init-values", *args, "--samples", "2", "--out", str(values)]) == 0
    cfg = load_config(None, [*args, "tracker.init=offline", f"tracker.offline_path={values}"])
    trainer = Trainer(cfg)
    try:
        counts = trainer.tracker.count(np.arange(len(trainer.train_examples)))
        np.testing.assert_allclose(counts, 1 / (1 - cfg.tracker.rho_min), rtol=1e-5)
    finally:
        trainer.close()


def test_constant_rho_and_no_baseline_run(tiny_model_dir, task_files, tmp_path):
    cfg = load_config(
        None,
        tiny_overrides(
            tiny_model_dir,
            task_files,
            tmp_path / "run",
            steps=2,
            baseline="none",
            **{"tracker.rho": "constant"},
        ),
    )
    trainer = Trainer(cfg)
    try:
        last = trainer.run()
    finally:
        trainer.close()
    assert np.isfinite(last["train/loss"])
    # Constant ρ = 0.9 from the prior N = 1: a prompt seen v times has N_v = 0.9·N_{v-1} + 1,
    # so N ∈ {1, 1.9, 2.71}; summed visits are exactly the samples trained on (2 × 8).
    counts = trainer.tracker.count(np.arange(trainer.tracker.num_prompts))
    n_by_visits = {0: 1.0, 1: 1.9, 2: 2.71}
    visits = [min(n_by_visits, key=lambda v: abs(n_by_visits[v] - c)) for c in counts]
    np.testing.assert_allclose(counts, [n_by_visits[v] for v in visits], rtol=1e-5)
    assert sum(visits) == trainer.samples_seen == 16


# ------------------------------------------------------------------------ bad input
def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"model.path": "/no/such/model"}, "does not exist"),
        ({"algo": "ppo"}, "algo='ppo' is not valid"),
        ({"algo": "grpo", "samples_per_step": 6}, "not divisible by group_size"),
        ({"nonsense_key": 1}, "nonsense_key"),
        ({"optim.lr": "fast"}, "optim.lr"),
        ({"task.name": "no_such_task"}, "no_such_task"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_model_dir, task_files, tmp_path, capsys, extra, needle):
    code, err = run_cli(
        ["train", *tiny_overrides(tiny_model_dir, task_files, tmp_path / "run", **extra)], capsys
    )
    assert code == 2
    assert err.startswith("spo: error:") and needle in err and "\n" not in err, err


def test_missing_column_and_empty_dataset(tiny_model_dir, task_files, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x", "answer": "1"}) + "\n")
    code, err = run_cli(
        [
            "train",
            *tiny_overrides(tiny_model_dir, task_files, tmp_path / "r1", **{"task.name": str(bad)}),
        ],
        capsys,
    )
    assert code == 2 and "prompt" in err and "\n" not in err, err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run_cli(
        [
            "train",
            *tiny_overrides(
                tiny_model_dir, task_files, tmp_path / "r2", **{"task.name": str(empty)}
            ),
        ],
        capsys,
    )
    assert code == 2 and "empty" in err.lower() and "\n" not in err, err


def test_reward_outside_unit_interval(tiny_model_dir, task_files, tmp_path, capsys):
    bad = tmp_path / "bad_reward.py"
    bad.write_text("def reward(completion, answer):\n    return 3.5\n")
    code, err = run_cli(
        [
            "train",
            *tiny_overrides(
                tiny_model_dir, task_files, tmp_path / "run", **{"task.reward_fn": f"{bad}:reward"}
            ),
        ],
        capsys,
    )
    assert code == 2 and "3.5" in err and "\n" not in err, err


def test_unwritable_run_dir(tiny_model_dir, task_files, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, err = run_cli(
        ["train", *tiny_overrides(tiny_model_dir, task_files, blocker / "run")], capsys
    )
    assert code == 2 and "run_dir" in err, err


def test_existing_run_is_never_overwritten(tiny_model_dir, task_files, tmp_path, capsys):
    args = ["train", *tiny_overrides(tiny_model_dir, task_files, tmp_path / "run", steps=2)]
    assert main(args) == 0
    before = (tmp_path / "run/metrics.jsonl").read_text()
    code, err = run_cli(args, capsys)
    assert code == 2 and "resume=true" in err
    assert (tmp_path / "run/metrics.jsonl").read_text() == before


def test_corrupt_checkpoint_falls_back_or_fails_clearly(
    tiny_model_dir, task_files, tmp_path, capsys
):
    run = tmp_path / "run"
    args = tiny_overrides(
        tiny_model_dir, task_files, run, steps=2, checkpoint_every=1, keep_checkpoints=5
    )
    assert main(["train", *args]) == 0
    (run / "checkpoints/step_000002/state.npz").write_bytes(b"garbage")
    # newest is corrupt -> resume continues from step 1 and reaches step 3
    assert main(["train", *args, "resume=true", "steps=3"]) == 0
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    for ckpt in (run / "checkpoints").glob("step_*"):
        (ckpt / "state.npz").write_bytes(b"garbage")
    code, err = run_cli(["train", *args, "resume=true", "steps=4"], capsys)
    assert code == 2 and "no readable checkpoint" in err


def test_mismatched_checkpoint(tiny_model_dir, task_files, tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny_overrides(tiny_model_dir, task_files, run, steps=1)
    assert main(["train", *args]) == 0
    code, err = run_cli(["train", *args, "resume=true", "steps=2", "task.train_size=20"], capsys)
    assert code == 2 and "different prompts" in err, err


@pytest.mark.slow
def test_sigterm_finishes_step_checkpoints_and_exits_zero(tiny_model_dir, task_files, tmp_path):
    run = tmp_path / "run"
    args = tiny_overrides(
        tiny_model_dir,
        task_files,
        run,
        steps=10_000,
        checkpoint_every=10_000,
        **{"rollout.max_new_tokens": 32},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "spo.cli", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    last_step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert (run / "checkpoints" / f"step_{last_step:06d}" / "COMPLETE").is_file(), out
    assert os.path.isfile(run / "config.yaml")
