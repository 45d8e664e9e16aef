"""The trainer's data flow, pinned end to end by spies (issue 13).

`tests/algo` proves each formula; these tests prove the trainer feeds the formulas the
right inputs, in the right order. Every component the step calls is wrapped by a spy that
records what it received and returned — nothing here re-implements the trainer. The
expected values are computed from what the spies saw plus a snapshot of the tracker taken
before the step:

    ids_B      <- the prompts the engine was asked to complete (token lists -> prompt index)
    reward_B   <- what the reward pool returned, for exactly those texts and examples
    v_before   <- tracker values copied before train_step()
    adv_B      == ADVANTAGES[algo](reward_B, baseline_B=v_before[ids_B], group_id_B)
    tracker    <- update(ids_B, reward_B, rho returned by the active estimator), after the
                  policy update

The tracker starts from random values (not the flat prior), so a baseline read from the
wrong place, at the wrong time or for the wrong sample changes the advantage. For
`algo=critic` the baseline is the learned V instead: its head starts random too, and the
expected V of the drawn batch comes from the head's state and the policy's prompt features
as they were before the step.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_trainer
import torch

import spo.algo.state as state_module
import spo.policy.models
import spo.train.update as update_module
from spo.algo import ADVANTAGES
from spo.algo.algorithms import ALGORITHMS
from spo.algo.critic import ValueHead
from spo.algo.values import write_values
from spo.train.config import load_config
from spo.train.trainer import Trainer

task_files = test_trainer.task_files  # the fixture, shared
tiny_overrides = test_trainer.tiny_overrides


class StepSpy:
    """Wraps the engine, reward pool, sampler, updater, optimizer, loss and tracker of a
    Trainer; records inputs/outputs of one step and the order of the calls."""

    def __init__(self, trainer: Trainer, monkeypatch: pytest.MonkeyPatch):
        self.trainer = trainer
        self.events: list[str] = []
        self.generated: list[list[int]] = []
        self.rollouts = None
        self.reward_calls: list[tuple[list[str], list, np.ndarray]] = []
        self.draws: list[tuple[int, np.ndarray]] = []
        self.update_adv: list[torch.Tensor] = []
        self.loss_adv: list[torch.Tensor] = []
        self.optimizer_steps = 0
        self.tracker_updates: list[dict] = []
        self.rho_returned: list[np.ndarray] = []
        t = trainer

        gen = t.engine.generate

        def generate(prompt_tokens, **kw):
            out = gen(prompt_tokens, **kw)
            self.events.append("generate")
            self.generated += [list(p) for p in prompt_tokens]
            self.rollouts = out
            return out

        monkeypatch.setattr(t.engine, "generate", generate)

        spy = self

        class RewardSpy:
            def __init__(self, pool):
                self.pool = pool

            def __call__(self, texts, examples):
                scored = self.pool(texts, examples)
                spy.events.append("reward")
                spy.reward_calls.append(
                    (list(texts), list(examples), np.asarray(scored.reward_B, dtype=np.float64))
                )
                return scored

            def close(self):
                self.pool.close()

        t.rewards = RewardSpy(t.rewards)

        draw = t.sampler.draw

        def sampler_draw(values, k, **kw):
            ids = draw(values, k, **kw)
            self.events.append("draw")
            self.draws.append((k, np.asarray(ids).copy()))
            return ids

        monkeypatch.setattr(t.sampler, "draw", sampler_draw)

        update = t.updater.update

        def updater_update(batch, adv_B, *args, **kw):
            self.events.append("update")
            self.update_adv.append(adv_B.detach().clone())
            return update(batch, adv_B, *args, **kw)

        monkeypatch.setattr(t.updater, "update", updater_update)

        opt_step = t.optimizer.step

        def optimizer_step(*args, **kw):
            self.optimizer_steps += 1
            return opt_step(*args, **kw)

        monkeypatch.setattr(t.optimizer, "step", optimizer_step)

        loss = update_module.ppo_clip_loss

        def ppo_clip_loss(logp, old, adv, *args, **kw):
            self.loss_adv.append(adv.detach().clone())
            return loss(logp, old, adv, *args, **kw)

        monkeypatch.setattr(update_module, "ppo_clip_loss", ppo_clip_loss)

        # ρ(D) of the drift and replay estimators: the trainer hands D to SPOState.observe,
        # which maps it with rho_from_divergence (a constant ρ bypasses it).
        rho_fn = state_module.rho_from_divergence

        def rho_from_divergence(*args, **kw):
            rho = rho_fn(*args, **kw)
            self.rho_returned.append(np.array(rho, dtype=np.float64, copy=True))
            return rho

        monkeypatch.setattr(state_module, "rho_from_divergence", rho_from_divergence)

        tracker_update = t.tracker.update

        def tracker_update_spy(ids, rewards, rho, **kw):
            self.events.append("tracker.update")
            self.tracker_updates.append(
                {
                    "ids": np.asarray(ids).copy(),
                    "rewards": np.asarray(rewards, dtype=np.float64).copy(),
                    "rho": np.broadcast_to(np.asarray(rho, dtype=np.float64), np.shape(ids)).copy(),
                    **kw,
                }
            )
            return tracker_update(ids, rewards, rho, **kw)

        monkeypatch.setattr(t.tracker, "update", tracker_update_spy)

    # ------------------------------------------------------------- derived facts
    def prompt_index(self) -> np.ndarray:
        """The prompt index of every generated sample, from the token lists alone."""
        index_of = {tuple(p): i for i, p in enumerate(self.trainer.prompt_tokens)}
        assert len(index_of) == len(self.trainer.prompt_tokens), "fixture prompts must differ"
        return np.array([index_of[tuple(p)] for p in self.generated], dtype=np.int64)


def make_trainer(tiny_model_dir, task_files, run_dir, **extra) -> Trainer:
    return Trainer(load_config(None, tiny_overrides(tiny_model_dir, task_files, run_dir, **extra)))


def randomise_tracker(trainer: Trainer, seed: int = 1) -> np.ndarray:
    """Random per-prompt values (not the flat prior); returns a copy of v̂ for all prompts."""
    n = trainer.tracker.num_prompts
    rng = np.random.default_rng(seed)
    trainer.tracker.init_from_values(np.arange(n), rng.uniform(0.05, 0.95, n), 3.0)
    return trainer.tracker.values().astype(np.float64).copy()


def expected_groups(spy: StepSpy, trainer: Trainer) -> torch.Tensor:
    group = trainer.cfg.group_size if ALGORITHMS[trainer.cfg.algo].grouped else 1
    n_prompts = trainer.cfg.samples_per_step // group
    return torch.from_numpy(np.repeat(np.arange(n_prompts), group))


def run_steps(trainer: Trainer, monkeypatch, steps: int = 1) -> StepSpy:
    """`steps` training steps under a StepSpy; the trainer is closed afterwards."""
    spy = StepSpy(trainer, monkeypatch)
    try:
        for _ in range(steps):
            trainer.train_step()
    finally:
        trainer.close()
    return spy


def randomise_critic(trainer: Trainer, seed: int = 2):
    """A random value head (algo=critic, with running variance); returns ids_B -> the V a
    batch of these prompts gets from the head and the policy as they are now."""
    head = trainer.critic.head
    gen = torch.Generator().manual_seed(seed)
    ids = np.arange(len(trainer.train_examples))
    hidden_PD = trainer.critic.hidden(ids)
    head.fit(hidden_PD, torch.rand(len(ids), generator=gen))  # a non-trivial scale σ²
    with torch.no_grad():
        head.theta.copy_(0.5 + 0.3 * torch.randn(head.theta.shape, generator=gen))
    state = {k: np.array(v) for k, v in head.state_dict().items()}

    def value_of(ids_B) -> torch.Tensor:
        before = ValueHead(head.dim)
        before.load_state_dict(state)
        return before.value(hidden_PD[torch.from_numpy(np.asarray(ids_B))])

    return value_of


def run_one_step(trainer: Trainer, monkeypatch) -> tuple[StepSpy, np.ndarray]:
    """One spied step from a randomised tracker; returns the spy and v̂ before the step."""
    v_before = randomise_tracker(trainer)
    return run_steps(trainer, monkeypatch), v_before


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_advantage_is_the_registry_function_of_this_steps_rewards_and_pre_update_baseline(
    tiny_model_dir,
    task_files,
    tmp_path,
    monkeypatch,
    algo,
):
    trainer = make_trainer(tiny_model_dir, task_files, tmp_path / "run", algo=algo, steps=1)
    critic_value_of = randomise_critic(trainer) if trainer.critic is not None else None
    spy, v_before = run_one_step(trainer, monkeypatch)

    ids_B = spy.prompt_index()
    (texts, examples, reward_B) = spy.reward_calls[0]
    # Rewards were computed for exactly these samples, each against its own prompt's example.
    assert texts == list(spy.rollouts.texts)
    assert [ex.id for ex in examples] == [trainer.train_examples[i].id for i in ids_B]
    # The loss trains on the registry's advantage of (rewards, pre-update v̂ of each sample).
    reward = torch.from_numpy(reward_B.astype(np.float32))
    baseline = torch.from_numpy(v_before[ids_B].astype(np.float32))
    if critic_value_of is not None:  # algo=critic: V of this batch before the step
        baseline = critic_value_of(ids_B)
    want = ADVANTAGES[ALGORITHMS[algo].advantage](
        reward, baseline_B=baseline, group_id_B=expected_groups(spy, trainer)
    )
    (adv_B,) = spy.update_adv
    torch.testing.assert_close(adv_B, want, rtol=0, atol=1e-6)
    # ... and every row of it reaches the loss exactly once (micro-batches cover the batch).
    got = torch.sort(torch.cat(spy.loss_adv)).values
    torch.testing.assert_close(got, torch.sort(want).values, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rho", ["constant", "drift", "replay"])
def test_tracker_absorbs_this_steps_rewards_with_the_estimators_rho_after_the_update(
    tiny_model_dir,
    task_files,
    tmp_path,
    monkeypatch,
    rho,
):
    trainer = make_trainer(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        steps=1,
        **{"tracker.rho": rho, "tracker.rho_constant": 0.77, "tracker.d_half": 0.001},
    )
    alpha0 = trainer.tracker.alpha.copy()
    spy, v_before = run_one_step(trainer, monkeypatch)
    ids_B = spy.prompt_index()
    reward_B = spy.reward_calls[0][2]

    (call,) = spy.tracker_updates
    np.testing.assert_array_equal(call["ids"], ids_B)
    np.testing.assert_allclose(call["rewards"], reward_B, rtol=0, atol=1e-7)
    assert call["step"] == 1
    if rho == "constant":
        np.testing.assert_allclose(call["rho"], 0.77)
    else:
        (returned,) = spy.rho_returned
        np.testing.assert_array_equal(call["rho"], np.broadcast_to(returned, ids_B.shape))
        if rho == "replay":  # first visits: D = 0 -> rho_max
            np.testing.assert_allclose(call["rho"], trainer.cfg.tracker.rho_max, rtol=1e-6)
    # Order: sample, score, policy update, then the tracker (rho needs the new policy).
    order = [e for e in spy.events if e in ("generate", "reward", "update", "tracker.update")]
    assert order == ["generate", "reward", "update", "tracker.update"]
    # The tracker's state moved by exactly α ← ρα + r from the randomised start.
    n = trainer.tracker.num_prompts
    assert not np.array_equal(alpha0, trainer.tracker.alpha)
    count = 3.0
    a_before = (v_before * count)[ids_B]
    np.testing.assert_allclose(
        trainer.tracker.alpha[ids_B], call["rho"] * a_before + reward_B, rtol=1e-5, atol=1e-5
    )
    untouched = np.setdiff1d(np.arange(n), ids_B)
    np.testing.assert_allclose(
        trainer.tracker.alpha[untouched], (v_before * count)[untouched], rtol=1e-6
    )


def test_rho_really_comes_from_the_estimator(tiny_model_dir, task_files, tmp_path, monkeypatch):
    """With a tiny d_half the drift estimator returns rho_min for revisits: after two steps
    with overlapping prompts the tracker must have been fed values below rho_max."""
    trainer = make_trainer(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        steps=3,
        samples_per_step=16,
        **{"tracker.rho": "drift", "tracker.d_half": 1e-6},
    )
    spy = run_steps(trainer, monkeypatch, steps=3)
    rhos = np.concatenate([c["rho"] for c in spy.tracker_updates])
    returned = np.concatenate(
        [
            np.broadcast_to(r, c["ids"].shape)
            for r, c in zip(spy.rho_returned, spy.tracker_updates, strict=True)
        ]
    )
    np.testing.assert_array_equal(rhos, returned)
    assert rhos.min() < trainer.cfg.tracker.rho_max  # some revisit was discounted harder


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
@pytest.mark.parametrize("updates", [1, 2])
def test_step_shape_follows_the_table_and_config(
    tiny_model_dir,
    task_files,
    tmp_path,
    monkeypatch,
    algo,
    updates,
):
    trainer = make_trainer(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        algo=algo,
        steps=1,
        **{"optim.updates_per_step": updates},
    )
    spec = ALGORITHMS[algo]
    spy, _ = run_one_step(trainer, monkeypatch)
    G = trainer.cfg.group_size if spec.grouped else 1
    S = trainer.cfg.samples_per_step
    (k, drawn) = spy.draws[0]
    assert k == S // G  # prompts per step
    assert len(set(drawn.tolist())) == S // G  # distinct
    ids_B = spy.prompt_index()
    assert len(ids_B) == S  # samples per step
    np.testing.assert_array_equal(ids_B, np.repeat(drawn, G))  # responses per prompt
    assert spy.optimizer_steps == updates
    assert trainer.sampler.mode == spec.sampler  # sampler.mode=auto -> the table's mode
    assert trainer.samples_seen == S


@pytest.mark.parametrize("mode", ["priority", "uniform"])
def test_sampler_mode_override_reaches_the_sampler(tiny_model_dir, task_files, tmp_path, mode):
    trainer = make_trainer(
        tiny_model_dir, task_files, tmp_path / "run", algo="grpo", **{"sampler.mode": mode}
    )
    trainer.close()
    assert trainer.sampler.mode == mode


def test_uniform_sampler_draw_ignores_values_priority_does_not(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    """Behaviour, not an attribute: a grouped algorithm's draw does not depend on v̂."""
    draws = {}
    for algo in ("spo", "grpo"):
        trainer = make_trainer(tiny_model_dir, task_files, tmp_path / algo, algo=algo, steps=1)
        spy = StepSpy(trainer, monkeypatch)
        n = trainer.tracker.num_prompts
        values = np.full(n, 1e-6)
        values[:3] = 0.5  # priority mass concentrated on prompts 0..2 (eps keeps the rest > 0)
        trainer.tracker.init_from_values(np.arange(n), values, 1.0)
        trainer.sampler.eps = 0.0 if algo == "spo" else trainer.sampler.eps
        try:
            trainer.train_step()
        finally:
            trainer.close()
        draws[algo] = set(spy.draws[0][1].tolist())
    assert {0, 1, 2} <= draws["spo"]  # priority: the three informative prompts come first
    # uniform draws 2 of 24: hitting two of {0,1,2} by chance has probability 1/92
    assert len(draws["grpo"] & {0, 1, 2}) < 2


def test_baseline_none_trains_on_a_zero_baseline(tiny_model_dir, task_files, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_model_dir, task_files, tmp_path / "run", steps=1, baseline="none")
    spy, v_before = run_one_step(trainer, monkeypatch)
    reward = torch.from_numpy(spy.reward_calls[0][2].astype(np.float32))
    want = ADVANTAGES["spo"](reward, baseline_B=torch.zeros_like(reward))
    (adv_B,) = spy.update_adv
    torch.testing.assert_close(adv_B, want, rtol=0, atol=1e-6)
    with_baseline = ADVANTAGES["spo"](
        reward, baseline_B=torch.from_numpy(v_before[spy.prompt_index()].astype(np.float32))
    )
    assert not torch.allclose(adv_B, with_baseline)  # the check above can tell them apart


def test_offline_values_are_what_the_first_step_reads(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    probe = make_trainer(tiny_model_dir, task_files, tmp_path / "probe")
    ids = [ex.id for ex in probe.train_examples]
    probe.close()
    rng = np.random.default_rng(3)
    trials = np.full(len(ids), 8.0)
    successes = rng.integers(0, 9, len(ids)).astype(np.float64)
    # the file lists the prompts in reverse order: matched by id, never by position
    path = write_values(tmp_path / "values.parquet", ids[::-1], successes[::-1], trials[::-1])
    trainer = make_trainer(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        steps=1,
        **{"tracker.init": "offline", "tracker.offline_path": str(path)},
    )
    spy = run_steps(trainer, monkeypatch)
    v0 = (successes + 0.5) / (trials + 1.0)  # spec §3, smoothed
    ids_B = spy.prompt_index()
    reward = torch.from_numpy(spy.reward_calls[0][2].astype(np.float32))
    want = ADVANTAGES["spo"](reward, baseline_B=torch.from_numpy(v0[ids_B].astype(np.float32)))
    torch.testing.assert_close(spy.update_adv[0], want, rtol=0, atol=1e-6)


def test_train_eval_and_init_values_render_the_same_chat_prompt(
    tiny_model_dir, tmp_path, monkeypatch
):
    """One chat-prompt rule: the config's system prompt and few-shot prefix, else the
    task's own (arithmetic_tool has both)."""
    from spo.cli import main

    calls: list[tuple[str, list[str], list[list[int]]]] = []
    phase = {"name": "train"}
    encode = spo.policy.models.encode_prompts

    def encode_spy(tokenizer, prompts, **kw):
        out = encode(tokenizer, prompts, **kw)
        calls.append((phase["name"], list(prompts), out))
        return out

    monkeypatch.setattr(spo.policy.models, "encode_prompts", encode_spy)
    overrides = [
        f"model.path={tiny_model_dir}",
        "task.name=arithmetic_tool",
        "task.train_size=6",
        "task.test_size=6",
        "eval_size=6",
        "samples_per_step=2",
        "rollout.max_new_tokens=4",
        "reward.workers=0",
        "log.tensorboard=false",
        "log.progress=false",
    ]
    trainer = Trainer(load_config(None, [*overrides, f"run_dir={tmp_path / 'run'}"]))
    try:
        phase["name"] = "eval"
        trainer.evaluate(k=1)
    finally:
        trainer.close()
    phase["name"] = "init-values"
    assert (
        main(["init-values", "--samples", "1", "--out", str(tmp_path / "v.parquet"), *overrides])
        == 0
    )

    rendered: dict[str, dict[str, list[int]]] = {}
    for name, prompts, tokens in calls:
        rendered.setdefault(name, {}).update(zip(prompts, map(tuple, tokens), strict=True))
    assert set(rendered) == {"train", "eval", "init-values"}
    task = trainer.task
    assert task.system_prompt and task.fewshot  # the task brings its own of both
    # Same prompt text -> same tokens in all three phases, system prompt and few-shot in.
    for ex in task.train[:3]:
        assert rendered["train"][ex.prompt] == rendered["init-values"][ex.prompt]
    own = {"system_prompt": task.system_prompt, "fewshot": task.fewshot}
    for ex in task.test[:3]:
        want = tuple(encode(trainer.tokenizer, [ex.prompt], **own)[0])
        assert rendered["eval"][ex.prompt] == want
    some = trainer.train_examples[0].prompt
    assert rendered["train"][some] == tuple(encode(trainer.tokenizer, [some], **own)[0])
    text = trainer.tokenizer.decode(rendered["train"][some])
    assert text.index(task.system_prompt) < text.index("print(3841 * 527 + 2096)")
    assert text.index("<|im_start|>tool\n2026303<|im_end|>") < text.index(some)


@pytest.mark.parametrize("updates", [1, 2])
def test_every_loss_row_gets_its_own_advantage(
    tiny_model_dir, task_files, tmp_path, monkeypatch, updates
):
    """Row alignment inside the update: the micro-batch a loss call sees is `batch.select(idx)`
    and its advantages must be `adv_B[idx]`, not a permutation of them."""
    from spo.policy.batch import PackedBatch

    selected: list[torch.Tensor] = []
    select = PackedBatch.select

    def select_spy(self, idx):
        selected.append(torch.as_tensor(idx).clone())
        return select(self, idx)

    monkeypatch.setattr(PackedBatch, "select", select_spy)
    trainer = make_trainer(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        steps=1,
        **{"optim.updates_per_step": updates, "optim.micro_batch_size": 2},
    )
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss = update_module.ppo_clip_loss

    def loss_spy(logp, old, adv, *args, **kw):
        pairs.append((selected[-1], adv.detach().clone()))  # the micro-batch just selected
        return loss(logp, old, adv, *args, **kw)

    spy = StepSpy(trainer, monkeypatch)
    monkeypatch.setattr(update_module, "ppo_clip_loss", loss_spy)
    randomise_tracker(trainer)
    try:
        trainer.train_step()
    finally:
        trainer.close()
    (adv_B,) = spy.update_adv
    assert len(pairs) == trainer.cfg.samples_per_step // 2  # 8 rows in micro-batches of 2
    assert len({float(a) for a in adv_B}) > 1  # distinct values: a permutation would show
    for idx, adv in pairs:
        torch.testing.assert_close(adv, adv_B[idx], rtol=0, atol=0)


def test_each_step_samples_with_its_own_reproducible_seed(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    def seeds_of(run: str, seed: int) -> list[int]:
        trainer = make_trainer(tiny_model_dir, task_files, tmp_path / run, seed=seed)
        seen: list[int] = []
        generate = trainer.engine.generate

        def generate_spy(prompts, **kw):
            seen.append(kw["seed"])
            return generate(prompts, **kw)

        monkeypatch.setattr(trainer.engine, "generate", generate_spy)
        try:
            for _ in range(3):
                trainer.train_step()
        finally:
            trainer.close()
        return seen

    first = seeds_of("a", 0)
    assert len(set(first)) == 3  # a new sampling seed every step
    assert seeds_of("b", 0) == first  # ... reproducible from (seed, step)
    assert not set(seeds_of("c", 1)) & set(first)  # ... and specific to the run's seed


def test_replay_estimator_stores_each_response_and_discounts_revisits(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    """rho=replay (the reference estimator): after a step every drawn prompt holds the
    response it just got; a revisit re-scores it and, with a tiny d_half, gets ρ < ρ_max."""
    trainer = make_trainer(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        samples_per_step=16,
        **{"tracker.rho": "replay", "tracker.d_half": 1e-6},
    )
    spy = StepSpy(trainer, monkeypatch)
    try:
        trainer.train_step()
        ids_B = spy.prompt_index()
        for row, pid in enumerate(ids_B):
            tokens, _ = trainer.rho.store.get(int(pid))
            assert tokens.tolist() == list(spy.rollouts.completion_ids[row])
        trainer.train_step()  # 16 + 16 draws of 24 prompts: at least 8 revisits
    finally:
        trainer.close()
    first, second = spy.tracker_updates
    rho_max = trainer.cfg.tracker.rho_max
    np.testing.assert_allclose(first["rho"], rho_max, rtol=1e-6)  # no stored response yet
    revisit = np.isin(second["ids"], first["ids"])
    assert revisit.sum() >= 8
    assert (second["rho"][revisit] < rho_max).all()
    np.testing.assert_allclose(second["rho"][~revisit], rho_max, rtol=1e-6)
