"""Evaluation: metrics against brute force, end to end on the tiny model, `spo eval` CLI."""

from __future__ import annotations

import itertools
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from spo.algo import ValueTracker
from spo.cli import main
from spo.eval import (
    budgets,
    evaluate_examples,
    evaluate_with_samples,
    generate_samples,
    summarize,
)
from spo.tasks import load_task
from spo.tasks.rewards import RewardPool
from spo.train.checkpoint import write_state
from spo.train.config import load_config, to_yaml

# A text-driven, binary reward: a random model gets a mix of right and wrong samples.
REWARD_SRC = '''
def reward(completion, answer):
    """Right when the reply has an even number of characters."""
    return len(completion) % 2 == 0
'''


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model gains nothing from threads; on a loaded 2-core box (pytest -n 2)
    two intra-op threads per process made each generate call ~50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ brute force
def brute_pass_at(correct_k: np.ndarray, j: int) -> float:
    """Mean over all j-subsets of the k samples of 'at least one is correct'."""
    subsets = list(itertools.combinations(range(len(correct_k)), j))
    return float(np.mean([correct_k[list(s)].any() for s in subsets]))


def brute_maj(answers: list, correct_k: np.ndarray) -> float:
    """Correctness of the most common non-None answer (ties: the earliest to appear)."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == top)
    return float(correct_k[answers.index(winner)])


def brute_metrics(reward_EK, answers_EK, greedy_E) -> dict[str, float]:
    correct = np.asarray(reward_EK) >= 0.5
    k = correct.shape[1]
    out = {
        "greedy": float(np.mean(np.asarray(greedy_E) >= 0.5)),
        f"avg@{k}": float(correct.mean()),
        f"maj@{k}": float(
            np.mean([brute_maj(list(a), c) for a, c in zip(answers_EK, correct, strict=True)])
        ),
        "extract_fail": float(np.mean([a is None for row in answers_EK for a in row])),
    }
    for j in budgets(k):
        out[f"pass@{j}"] = float(np.mean([brute_pass_at(c, j) for c in correct]))
    return out


def test_budgets_are_powers_of_two_and_k():
    assert budgets(1) == [1]
    assert budgets(8) == [1, 2, 4, 8]
    assert budgets(6) == [1, 2, 4, 6]


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_summarize_matches_brute_force(k):
    rng = np.random.default_rng(k)
    E = 12
    # answers decide correctness (as with a real verifier): "7" is right, others wrong
    answers = rng.choice(
        np.array(["7", "8", "9", None], dtype=object), size=(E, k), p=[0.4, 0.25, 0.2, 0.15]
    )
    reward = (answers == "7").astype(float)
    greedy = rng.integers(0, 2, size=E).astype(float)
    got = summarize(reward, answers, greedy)
    want = brute_metrics(reward, answers, greedy)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["n_prompts"] == E


def test_summarize_per_difficulty_is_summarize_of_each_level():
    rng = np.random.default_rng(0)
    answers = rng.choice(np.array(["1", "2", None], dtype=object), size=(9, 4))
    reward = (answers == "1").astype(float)
    greedy = rng.integers(0, 2, size=9).astype(float)
    levels = [3, 1, 1, 2, 3, 1, None, 2, 10]
    got = summarize(reward, answers, greedy, levels)
    for level in (1, 2, 3, 10):
        rows = [i for i, d in enumerate(levels) if d == level]
        sub = summarize(reward[rows], answers[rows], greedy[rows])
        for key, value in sub.items():
            assert got[f"{key}/difficulty={level}"] == pytest.approx(value)
    assert not any("difficulty=None" in key for key in got)
    # numeric levels in numeric order (10 after 3)
    order = [key.split("=")[1] for key in got if key.startswith("greedy/")]
    assert order == ["1", "2", "3", "10"]


def test_summarize_greedy_only_and_fractional_rewards():
    got = summarize(greedy_reward_E=[1.0, 0.0, 0.6])
    assert got == {"n_prompts": 3.0, "greedy": pytest.approx(2 / 3)}
    got = summarize([[0.2, 0.7], [0.5, 0.4]], [["a", "b"], ["c", "c"]])
    assert got["avg@2"] == pytest.approx(0.5)  # correct = reward >= 0.5
    assert got["reward_mean"] == pytest.approx(0.45)


# ------------------------------------------------------------- tiny model, end to end
@pytest.fixture()
def task_files(tmp_path: Path) -> dict[str, str]:
    data = tmp_path / "data.jsonl"
    rows = [
        {"prompt": f"What is {i} plus {i % 5}?", "answer": str(i + i % 5), "difficulty": 1 + i % 3}
        for i in range(30)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = tmp_path / "reward.py"
    reward.write_text(REWARD_SRC)
    return {"data": str(data), "reward": f"{reward}:reward"}


def overrides(task_files: dict) -> list[str]:
    return [
        f"task.name={task_files['data']}",
        f"task.reward_fn={task_files['reward']}",
        "task.train_size=20",
        "task.test_size=6",
        "rollout.max_new_tokens=6",
        "rollout.batch_size=32",
        "reward.workers=0",
        "eval_size=6",
    ]


def test_evaluate_examples_matches_brute_force_on_its_samples(tiny_model_dir, task_files):
    from spo.policy.models import load_policy
    from spo.tasks.verifiers import load_user_function

    cfg = load_config(None, overrides(task_files))
    task = load_task(name=cfg.task.name, train_size=20, test_size=6, reward_fn=cfg.task.reward_fn)
    model, tok = load_policy(str(tiny_model_dir))
    kw = {"k": 4, "max_new_tokens": 6, "temperature": 1.0, "seed": 3}
    with RewardPool(task.verifier, workers=0) as pool:
        samples = generate_samples(model, tok, task, task.test, reward_pool=pool, **kw)
        metrics = evaluate_examples(model, tok, task, task.test, reward_pool=pool, **kw)
    # recompute everything from the texts, with the user's function called directly
    fn = load_user_function(task_files["reward"])
    reward = [
        [float(fn(t, ex.answer)) for t in row]
        for row, ex in zip(samples.texts_EK, task.test, strict=True)
    ]
    answers = [[task.extract_answer(t) for t in row] for row in samples.texts_EK]
    greedy = [
        float(fn(t, ex.answer)) for t, ex in zip(samples.greedy_texts_E, task.test, strict=True)
    ]
    want = brute_metrics(reward, answers, greedy)
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value), key
    assert 0 < metrics["avg@4"] < 1  # the reward really varies on this model
    per_level = [key for key in metrics if key.startswith("n_prompts/difficulty=")]
    assert per_level and sum(metrics[key] for key in per_level) == len(task.test)
    # the greedy response does not depend on the seed
    again = evaluate_examples(
        model, tok, task, task.test, reward_pool=None, **{**kw, "seed": 4, "k": 0}
    )
    assert again["greedy"] == metrics["greedy"]


def test_spo_eval_model_dir(tiny_model_dir, task_files, tmp_path, capsys):
    out = tmp_path / "out.json"
    rc = main(["eval", str(tiny_model_dir), *overrides(task_files), "--k", "4", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pass@4" in printed and "by difficulty" in printed
    result = json.loads(out.read_text())
    assert result["kind"] == "model" and result["k"] == 4 and result["n_prompts"] == 6
    metrics = result["results"][0]["metrics"]
    assert {"greedy", "avg@4", "pass@1", "pass@2", "pass@4", "maj@4", "extract_fail"} <= set(
        metrics
    )
    assert metrics["pass@1"] == pytest.approx(metrics["avg@4"])  # unbiased pass@1 = avg@k


def test_spo_eval_of_a_tool_task_plays_episodes_and_writes_its_result(tiny_model_dir, tmp_path):
    """With rollout.max_turns > 1, `spo eval` samples whole episodes with the sandboxed tool
    (tools/* metrics) and still writes a plain JSON result."""
    from spo.tools.sandbox import available_isolation

    if all(reason is not None for reason in available_isolation().values()):
        pytest.skip(f"no isolated sandbox level works here: {available_isolation()}")
    out = tmp_path / "out.json"
    args = ["task.name=arithmetic_tool", "rollout.max_turns=2", "rollout.max_new_tokens=6"]
    rc = main(["eval", str(tiny_model_dir), *args, "eval_size=2", "--k", "2", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["max_turns"] == 2
    metrics = result["results"][0]["metrics"]
    assert metrics["tools/turns_per_episode"] >= 1.0 and "avg@2" in metrics


def make_run(tmp_path: Path, model_dir: Path, task_files: dict) -> Path:
    """A run dir with one checkpoint: the tiny model + a tracker state over the task."""
    run = tmp_path / "run"
    cfg = load_config(
        None,
        [
            *overrides(task_files),
            f"model.path={model_dir}",
            f"run_dir={run}",
            "model.dtype=float32",
        ],
    )
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "samples": 16}) + "\n")
    ckpt = run / "checkpoints" / "step_000002"
    shutil.copytree(model_dir, ckpt)
    task = load_task(name=cfg.task.name, train_size=20, test_size=6, reward_fn=cfg.task.reward_fn)
    tracker = ValueTracker(len(task.train))
    tracker.update(np.arange(10), np.tile([1.0, 0.0], 5), 0.9, step=2)
    write_state(
        ckpt,
        {
            "step": 2,
            "samples_seen": 16,
            "train_seconds": 3.0,
            "prompt_ids": np.array([ex.id for ex in task.train]),
            "tracker": tracker.state_dict(),
            "sampler": {"eps": 0.05, "mode": "priority"},
        },
    )
    (ckpt / "config.yaml").write_text(to_yaml(cfg))
    (ckpt / "COMPLETE").write_text(json.dumps({"step": 2}))
    return run


def test_spo_eval_run_dir_with_calibration(tiny_model_dir, task_files, tmp_path, capsys):
    run = make_run(tmp_path, tiny_model_dir, task_files)
    rc = main(["eval", str(run), "--k", "2", "--calibration", "3", "--calibration-prompts", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "calibration at step 2" in printed
    result = json.loads((run / "eval.json").read_text())
    assert [r["label"] for r in result["results"]] == ["initial", "step_000002"]
    assert [r["samples"] for r in result["results"]] == [0, 16]
    assert result["results"][1]["wall_seconds"] == 3.0
    assert result["results"][1]["diagnostics"]["frontier"] == pytest.approx(1.0)
    cal = result["calibration"]
    assert cal["n_prompts"] == 4 and cal["samples_per_prompt"] == 3
    assert len(cal["prompt_ids"]) == 4
    # the reference is the tracker's mean v̂ over its 10 seen prompts (5 at (0.45 + 1)/1.9,
    # 5 at 0.45/1.9), known before sampling, not a mean of the scored rewards
    assert cal["reference"] == pytest.approx(0.5)
    assert "brier_constant" not in cal and "Brier" in printed and "AUC" in printed
    from spo.train.diagnostics import calibration

    again = calibration(cal["value"], cal["reward"], reference=cal["reference"])
    assert again["brier_skill"] == pytest.approx(cal["brier_skill"], nan_ok=True)
    assert np.mean(cal["reward"], axis=1) == pytest.approx(cal["rate"])
    ckpt = run / "checkpoints" / "step_000002"
    for name in ("calibration.json", "diagnostics.json", "tracker.parquet"):
        assert (ckpt / name).is_file(), name
    # one checkpoint, with a task override, JSON elsewhere
    out = tmp_path / "one.json"
    assert (
        main(["eval", str(ckpt), "eval_size=3", "--k", "1", "--no-greedy", "--out", str(out)]) == 0
    )
    one = json.loads(out.read_text())
    assert one["kind"] == "checkpoint" and one["n_prompts"] == 3
    assert "greedy" not in one["results"][0]["metrics"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["does/not/exist"], "does not exist"),
        (["{tmp}"], "neither a model directory"),
        (["{model}", "--calibration", "4"], "needs a run or checkpoint"),
        (["{model}", "nonsense"], "not key=value"),
        (["{model}", "task.nam=x"], "task.nam"),
        (["{model}", "--k", "0", "--no-greedy"], "nothing to evaluate"),
    ],
)
def test_spo_eval_user_errors_are_one_line(tiny_model_dir, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, model=tiny_model_dir) for a in args]
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spo: error:") and message in err and "\n" not in err


def test_spo_eval_run_without_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("algo: spo\n")
    (run / "metrics.jsonl").write_text("")
    assert main(["eval", str(run)]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def _train_records(tiny_model_dir, task_files, run: Path, *extra: str) -> list[dict]:
    from spo.train.trainer import Trainer

    cfg = load_config(
        None,
        [
            *overrides(task_files),
            f"model.path={tiny_model_dir}",
            f"run_dir={run}",
            "samples_per_step=4",
            "log.tensorboard=false",
            "log.progress=false",
            "optim.micro_batch_size=4",
            *extra,
        ],
    )
    trainer = Trainer(cfg)
    try:
        trainer.run()
    finally:
        trainer.close()
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_in_training_eval_is_logged(tiny_model_dir, task_files, tmp_path):
    """The trainer calls evaluate_examples every eval_every steps; metrics land in the log."""
    records = _train_records(
        tiny_model_dir, task_files, tmp_path / "run", "steps=2", "eval_every=2"
    )
    assert "eval/greedy" not in records[0]
    assert {"eval/greedy", "eval/avg@1", "eval/pass@1", "eval/maj@1"} <= set(records[1])


def test_in_training_eval_k_start_and_last_step(tiny_model_dir, task_files, tmp_path):
    """eval_k samples per prompt; eval_start logs the initial policy as step 0; the last
    step is evaluated even when eval_every does not divide steps."""
    records = _train_records(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        "steps=3",
        "eval_every=2",
        "eval_k=3",
        "eval_start=true",
    )
    evaluated = [r["step"] for r in records if "eval/greedy" in r]
    assert evaluated == [0, 2, 3]
    assert records[0]["samples"] == 0 and records[0]["wall_seconds"] == 0.0
    assert {"eval/avg@3", "eval/pass@2", "eval/pass@3", "eval/maj@3"} <= set(records[-1])


def test_print_table_names_levels(capsys):
    from spo.commands.eval import print_table

    metrics = summarize([[1.0, 0.0], [0.0, 0.0]], [["3", "4"], [None, "5"]], [1.0, 0.0], [1, 2])
    print_table([{"label": "model", "metrics": metrics}], 2, {"1": "add0", "2": "mul1"})
    out = capsys.readouterr().out
    assert "1 add0" in out and "2 mul1" in out and "no-answer" in out
    assert "frontier" not in out  # no checkpoint diagnostics for a bare model


# ------------------------------------------------------- through the configured engine
class Recording:
    """An engine wrapper that records each call's SamplingSettings."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompt_tokens, *, seed, sampling=None):
        self.calls.append((len(prompt_tokens), seed, sampling))
        return self.engine.generate(prompt_tokens, seed=seed, sampling=sampling)

    def sync_weights(self, policy):
        self.engine.sync_weights(policy)


def _same_samples(a, b) -> None:
    assert a[0] == b[0]  # every metric, exactly
    assert a[1].texts_EK == b[1].texts_EK and a[1].greedy_texts_E == b[1].greedy_texts_E


def test_eval_through_an_engine_equals_eval_of_the_model(tiny_model_dir, task_files):
    """A bare model is sampled by an HFEngine of `batch_size` rows: passing that engine (or
    one shard of it) gives the same samples. More shards cut the prompts with a seed per
    shard (as Ray actors do): the greedy responses do not change, the samples are those
    of each shard's own call."""
    from spo.policy.models import encode_prompts, load_policy
    from spo.rollout import SamplingSettings
    from spo.rollout.hf import HFEngine
    from spo.rollout.shard import ShardedEngine, shard_bounds, shard_seed

    cfg = load_config(None, overrides(task_files))
    task = load_task(name=cfg.task.name, train_size=20, test_size=6, reward_fn=cfg.task.reward_fn)
    model, tok = load_policy(str(tiny_model_dir))
    kw = {"k": 3, "max_new_tokens": 6, "temperature": 0.8, "top_p": 0.95, "seed": 7}
    with RewardPool(task.verifier, workers=0) as pool:
        want = evaluate_with_samples(
            model, tok, task, task.test, reward_pool=pool, batch_size=4, **kw
        )
        # the engine's own settings are not the evaluation's: the call's settings win
        engine = Recording(HFEngine(model, tok, max_new_tokens=20, temperature=1.5, batch_size=4))
        _same_samples(
            evaluate_with_samples(engine, tok, task, task.test, reward_pool=pool, **kw), want
        )
        assert [c[2] for c in engine.calls] == [
            SamplingSettings(0.8, 0.95, 6, n=3),
            SamplingSettings(0.0, 1.0, 6),
        ]
        one = ShardedEngine(engine.engine, 1)
        _same_samples(
            evaluate_with_samples(one, tok, task, task.test, reward_pool=pool, **kw), want
        )
        three = evaluate_with_samples(
            ShardedEngine(engine.engine, 3), tok, task, task.test, reward_pool=pool, **kw
        )
    assert three[1].greedy_texts_E == want[1].greedy_texts_E
    assert three[0]["greedy"] == want[0]["greedy"]
    sampled = SamplingSettings(0.8, 0.95, 6, n=3)
    ids = encode_prompts(tok, [ex.prompt for ex in task.test])
    per_shard = [
        t
        for k, (lo, hi) in enumerate(shard_bounds(len(ids), 3))
        for t in engine.engine.generate(ids[lo:hi], seed=shard_seed(7, k), sampling=sampled).texts
    ]
    assert [t for row in three[1].texts_EK for t in row] == per_shard


def test_in_training_eval_samples_through_the_trainer_engine(tiny_model_dir, task_files, tmp_path):
    from spo.rollout import SamplingSettings
    from spo.train.trainer import Trainer

    cfg = load_config(
        None,
        [
            *overrides(task_files),
            f"model.path={tiny_model_dir}",
            f"run_dir={tmp_path / 'run'}",
            "rollout.temperature=0.9",
            "rollout.top_p=0.8",
            "log.tensorboard=false",
            "log.progress=false",
        ],
    )
    trainer = Trainer(cfg)
    try:
        trainer.engine = Recording(trainer.engine)
        metrics = trainer.evaluate(k=2)
    finally:
        trainer.close()
    assert [c[2] for c in trainer.engine.calls] == [
        SamplingSettings(0.9, 0.8, 6, n=2),
        SamplingSettings(0.0, 1.0, 6),
    ]
    assert {"greedy", "avg@2"} <= set(metrics)


def test_spo_eval_samples_through_the_configured_engine(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    """`spo eval` with cluster.rollout_workers=2 samples through the ShardedEngine the
    trainer would use (the same shards as Ray actors), and reports what it produces."""
    import spo.rollout.factory as factory
    from spo.policy.models import load_policy
    from spo.rollout.hf import HFEngine
    from spo.rollout.shard import ShardedEngine

    built = []

    def spy(*args, **kwargs):
        built.append(factory_make(*args, **kwargs))
        return built[-1]

    factory_make = factory.make_engine
    monkeypatch.setattr(factory, "make_engine", spy)
    out = tmp_path / "out.json"
    args = [*overrides(task_files), "cluster.rollout_workers=2", "seed=5"]
    assert main(["eval", str(tiny_model_dir), *args, "--k", "2", "--out", str(out)]) == 0
    assert len(built) == 1 and isinstance(built[0], ShardedEngine) and built[0].shards == 2
    got = json.loads(out.read_text())["results"][0]["metrics"]
    cfg = load_config(None, args)
    task = load_task(name=cfg.task.name, train_size=20, test_size=6, reward_fn=cfg.task.reward_fn)
    model, tok = load_policy(str(tiny_model_dir))
    engine = ShardedEngine(HFEngine(model, tok, max_new_tokens=6, batch_size=32), 2)
    want = evaluate_examples(
        engine, tok, task, task.test, k=2, max_new_tokens=6, seed=5, system_prompt=None
    )
    assert got == want


def test_spo_eval_loads_each_model_into_an_engine_with_its_own_copy(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    """vLLM and Ray engines hold their own copy of the policy: `spo eval` builds one such
    engine for the whole run (from model.path) and loads each model's weights into it
    before sampling, so a run's checkpoints are evaluated on the engine the run used.
    Stand-in: an HFEngine over its own copy, under cluster.mode=ray; the numbers must be
    those of sampling each loaded model directly."""
    import torch

    import spo.rollout.factory as factory
    from spo.policy.models import load_policy
    from spo.rollout.hf import HFEngine

    run = make_run(tmp_path, tiny_model_dir, task_files)
    ckpt = run / "checkpoints" / "step_000002"
    trained, _ = load_policy(str(tiny_model_dir), dtype="float32")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the checkpoint's weights differ from the base model's
        for p in trained.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    trained.save_pretrained(ckpt)
    args = ["--k", "2", "--calibration", "2", "--calibration-prompts", "3"]
    assert main(["eval", str(run), *args]) == 0
    want = json.loads((run / "eval.json").read_text())

    built = []

    def own_copy(cfg, model, tokenizer, *, model_path, lora_dir=None):
        copy, tok = load_policy(model_path, dtype=cfg.model.dtype)
        r = cfg.rollout
        built.append((model_path, cfg.cluster.mode, copy))
        return HFEngine(copy, tok, max_new_tokens=r.max_new_tokens, batch_size=r.batch_size)

    monkeypatch.setattr(factory, "make_engine", own_copy)
    assert main(["eval", str(run), "cluster.mode=ray", *args]) == 0
    got = json.loads((run / "eval.json").read_text())
    assert [b[:2] for b in built] == [(str(tiny_model_dir), "ray")]  # once, from the base
    assert [r["metrics"] for r in got["results"]] == [r["metrics"] for r in want["results"]]
    assert got["calibration"]["rate"] == want["calibration"]["rate"]
    # the engine's copy ends holding the checkpoint's weights, not the base model's
    last, _ = load_policy(str(ckpt), dtype="float32")
    base, _ = load_policy(str(tiny_model_dir), dtype="float32")
    copy = built[0][2].state_dict()
    for key, value in last.state_dict().items():
        assert torch.equal(copy[key], value), key
    assert any(not torch.equal(copy[k], v) for k, v in base.state_dict().items())
