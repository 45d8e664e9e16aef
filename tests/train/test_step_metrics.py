"""Issue 19 in the trainer: the per-step variance ratio, applied ρ and tracker metrics come
from what the step itself used (spied, as in test_wiring); mini-batches are a seeded
shuffle; offline-initialised prompts get the drift since initialisation at their first visit.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_trainer
import test_wiring
import torch

from spo.algo.values import write_values
from spo.policy.batch import PackedBatch

task_files = test_trainer.task_files  # the fixture, shared
make_trainer, run_one_step, run_steps = (
    test_wiring.make_trainer,
    test_wiring.run_one_step,
    test_wiring.run_steps,
)


def _group_baseline(reward_B: np.ndarray, G: int, leave_one_out: bool) -> np.ndarray:
    r = reward_B.reshape(-1, G)
    if leave_one_out:
        b = (r.sum(1, keepdims=True) - r) / (G - 1)
    else:
        b = np.broadcast_to(r.mean(1, keepdims=True), r.shape)
    flat = (r.max(1) == r.min(1))[:, None]  # equal rewards: advantage exactly 0, b = r
    return np.where(flat, r, b).reshape(-1)


@pytest.mark.parametrize(
    ("algo", "baseline"),
    [("spo", "tracker"), ("spo", "none"), ("grpo", "tracker"), ("rloo", "tracker")],
)
def test_variance_ratio_uses_the_steps_own_baseline(
    tiny_model_dir, task_files, tmp_path, monkeypatch, algo, baseline
):
    trainer = make_trainer(
        tiny_model_dir, task_files, tmp_path / "run", algo=algo, steps=1, baseline=baseline
    )
    spy = test_wiring.StepSpy(trainer, monkeypatch)
    v_before = test_wiring.randomise_tracker(trainer)  # count 3 for every prompt
    try:
        row = trainer.train_step()
    finally:
        trainer.close()
    ids_B = spy.prompt_index()
    reward_B = spy.reward_calls[0][2].astype(np.float32).astype(np.float64)
    G = trainer.cfg.group_size
    b_B = {
        ("spo", "tracker"): v_before[ids_B],
        ("spo", "none"): np.zeros_like(reward_B),
        ("grpo", "tracker"): _group_baseline(reward_B, G, leave_one_out=False),
        ("rloo", "tracker"): _group_baseline(reward_B, G, leave_one_out=True),
    }[algo, baseline]
    var_r, var_res = np.var(reward_B), np.var(reward_B - b_B)
    assert var_r > 0  # the fixture's fractional rewards vary
    assert row["var/reward"] == pytest.approx(var_r, rel=1e-6)
    assert row["var/residual"] == pytest.approx(var_res, rel=1e-5, abs=1e-9)
    assert row["var/ratio"] == pytest.approx(var_res / var_r, rel=1e-5, abs=1e-9)
    assert row["adv/variance"] == pytest.approx(var_res, rel=1e-5, abs=1e-9)
    # the tracker as the step used it: v̂₋₁ and N = 3 before the update (after: ρ·3 + 1)
    distinct = np.unique(ids_B)
    assert row["tracker/value_mean"] == pytest.approx(v_before[distinct].mean(), rel=1e-6)
    assert row["tracker/count_mean"] == pytest.approx(3.0, rel=1e-6)


def test_applied_rho_metrics_are_the_rho_fed_to_the_tracker(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    trainer = make_trainer(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        steps=2,
        samples_per_step=16,
        **{"tracker.rho": "drift", "tracker.d_half": 0.002},
    )
    spy = test_wiring.StepSpy(trainer, monkeypatch)
    try:
        rows = [trainer.train_step(), trainer.train_step()]
    finally:
        trainer.close()
    rho_min, rho_max = trainer.cfg.tracker.rho_min, trainer.cfg.tracker.rho_max
    first, second = spy.tracker_updates
    revisit = np.isin(second["ids"], first["ids"])
    assert 0 < revisit.sum() < len(revisit)  # 16 + 16 draws of 24 prompts
    for row, call, rev in [(rows[0], first, np.zeros(16, bool)), (rows[1], second, revisit)]:
        rho = call["rho"]
        assert row["rho/applied_mean"] == pytest.approx(rho.mean())
        assert row["rho/applied_min"] == pytest.approx(rho.min())
        assert row["rho/applied_max"] == pytest.approx(rho.max())
        assert row["rho/applied_at_min"] == pytest.approx(np.mean(np.isclose(rho, rho_min)))
        assert row["rho/applied_at_max"] == pytest.approx(np.mean(np.isclose(rho, rho_max)))
        assert row["rho/first_visit_share"] == pytest.approx(1 - rev.mean())
    assert np.isnan(rows[0]["rho/revisit_mean"])  # no revisit in the first step
    assert np.isnan(rows[0]["rho/revisit_divergence_median"])
    # revisits only: ρ of the revisited prompts, their D = the drift clock since the visit
    assert rows[1]["rho/revisit_mean"] == pytest.approx(second["rho"][revisit].mean())
    assert rows[1]["rho/revisit_divergence_median"] == pytest.approx(
        rows[1]["rho/step_drift"], rel=1e-5
    )  # every revisit was last seen in step 1: D = step 2's drift
    assert rows[1]["rho/applied_at_max"] == pytest.approx(1 - revisit.mean())  # fresh: ρ_max


def test_mini_batches_are_a_seeded_shuffle_not_priority_order(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    """With 2 updates per step each optimizer step trains on half the batch; the halves
    are a permutation drawn from (seed, step): not the draw order, new every step, and the
    same in a second run with the same seed (resume-exact)."""
    calls: list[torch.Tensor] = []
    of = PackedBatch.micro_batches_of

    def spy(self, rows, size):
        calls.append(torch.as_tensor(rows).clone())
        return of(self, rows, size)

    monkeypatch.setattr(PackedBatch, "micro_batches_of", spy)

    def minibatches(run: str, seed: int) -> list[list[list[int]]]:
        trainer = make_trainer(
            tiny_model_dir, task_files, tmp_path / run, seed=seed, **{"optim.updates_per_step": 2}
        )
        steps = []
        try:
            for _ in range(2):
                calls.clear()
                trainer.train_step()
                # the update's two training mini-batches (the no-grad old_logp pass uses
                # micro_batches(0, B), i.e. every row, first)
                steps.append([sorted(c.tolist()) for c in calls if len(c) == 4])
        finally:
            trainer.close()
        return steps

    a = minibatches("a", 0)
    for halves in a:
        assert len(halves) == 2 and sorted(halves[0] + halves[1]) == list(range(8))
    assert a[0][0] != [0, 1, 2, 3] or a[1][0] != [0, 1, 2, 3]  # not the draw order
    assert a[0] != a[1]  # a new shuffle every step
    assert minibatches("b", 0) == a  # reproducible from (seed, step)
    assert minibatches("c", 1) != a


def test_minibatch_rows_by_construction():
    from spo.train.update import minibatch_rows

    assert [r.tolist() for r in minibatch_rows(6, 2, None)] == [[0, 1, 2], [3, 4, 5]]
    assert [r.tolist() for r in minibatch_rows(6, 1, 123)] == [[0, 1, 2, 3, 4, 5]]
    rows = minibatch_rows(8, 4, 7)
    assert sorted(torch.cat(rows).tolist()) == list(range(8))
    assert [len(r) for r in rows] == [2, 2, 2, 2]
    assert [r.tolist() for r in minibatch_rows(8, 4, 7)] == [r.tolist() for r in rows]
    assert torch.cat(rows).tolist() != list(range(8))
    assert torch.cat(minibatch_rows(8, 4, 8)).tolist() != torch.cat(rows).tolist()


def _half_offline(trainer, tmp_path):
    """A values file for the first half of the training prompts (8 trials each)."""
    ids = [ex.id for ex in trainer.train_examples]
    half = len(ids) // 2
    return write_values(
        tmp_path / "values.parquet", ids[:half], np.full(half, 3.0), np.full(half, 8.0)
    )


@pytest.mark.parametrize("rho", ["drift", "replay"])
def test_offline_initialised_prompts_get_the_drift_since_initialisation(
    tiny_model_dir, task_files, tmp_path, monkeypatch, rho
):
    """Initialisation counts as a visit at step 0: the first step's ρ of an offline-
    initialised prompt reflects the policy's movement since (tiny d_half: ρ_min), while a
    prompt never estimated gets the fresh-prompt ρ_max."""
    probe = make_trainer(tiny_model_dir, task_files, tmp_path / "probe")
    path = _half_offline(probe, tmp_path)
    probe.close()
    trainer = make_trainer(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        steps=1,
        samples_per_step=16,
        **{
            "tracker.rho": rho,
            "tracker.d_half": 1e-6,
            "tracker.init": "offline",
            "tracker.offline_path": str(path),
        },
    )
    spy = run_steps(trainer, monkeypatch)
    (call,) = spy.tracker_updates
    initialised = call["ids"] < 12
    assert 0 < initialised.sum() < 16
    cfg = trainer.cfg.tracker
    np.testing.assert_allclose(call["rho"][initialised], cfg.rho_min)
    np.testing.assert_allclose(call["rho"][~initialised], cfg.rho_max, rtol=1e-6)


def test_offline_init_with_replay_resumes_exactly(tiny_model_dir, task_files, tmp_path):
    """The drift clock that serves offline-initialised prompts under rho=replay is part of
    the replay estimator's checkpoint: 2 steps + resume to 4 = 4 straight steps."""
    probe = make_trainer(tiny_model_dir, task_files, tmp_path / "probe")
    path = _half_offline(probe, tmp_path)
    probe.close()
    extra = {
        "tracker.rho": "replay",
        "tracker.d_half": 0.01,
        "tracker.init": "offline",
        "tracker.offline_path": str(path),
    }

    def run(name: str, steps: int, resume: bool = False):
        trainer = make_trainer(
            tiny_model_dir, task_files, tmp_path / name, steps=steps, resume=resume, **extra
        )
        try:
            trainer.run()
        finally:
            trainer.close()
        return trainer

    straight = run("a", 4)
    run("b", 2)
    resumed = run("b", 4, resume=True)
    assert straight.drift.total > 0
    for key, value in straight.tracker.state_dict().items():
        other = resumed.tracker.state_dict()[key]
        assert np.array_equal(np.asarray(value), np.asarray(other)), key
    assert resumed.drift.total == pytest.approx(straight.drift.total, rel=1e-6)


@pytest.mark.parametrize("rho", ["drift", "replay"])
def test_rho_adapts_with_a_d_half_measured_from_the_run(tiny_model_dir, task_files, tmp_path, rho):
    """Issue 19, deliverable 3 in small: measure the revisits' D in a short run, set d_half
    by the median rule, rerun: the applied ρ of revisits varies between the bounds instead
    of sitting at one. Step 2 is the same in both runs (step 1's ρ is ρ_max for every first
    visit whatever d_half is), so its revisits have the same D."""
    from spo.algo import d_half_for_median

    def rows(name: str, d_half: float) -> list[dict]:
        trainer = make_trainer(
            tiny_model_dir,
            task_files,
            tmp_path / name,
            steps=3,
            samples_per_step=16,
            **{"tracker.rho": rho, "tracker.d_half": d_half},
        )
        try:
            return [trainer.train_step() for _ in range(3)]
        finally:
            trainer.close()

    tiny = rows("tiny", 1e-6)  # a d_half far below the drift: every revisit at ρ_min
    assert tiny[1]["rho/revisit_at_min"] == tiny[2]["rho/revisit_at_min"] == 1.0
    d_half = d_half_for_median([tiny[1]["rho/revisit_divergence_median"]])
    tuned = rows("tuned", d_half)
    assert tuned[1]["rho/revisit_divergence_median"] == tiny[1]["rho/revisit_divergence_median"]
    rho_min, rho_max = 0.875, 0.96
    for row in tuned[1:]:
        assert row["rho/revisit_at_min"] + row["rho/revisit_at_max"] < 0.5
        assert rho_min < row["rho/revisit_mean"] < rho_max
    if rho == "drift":  # one D for all step-2 revisits: exactly the mid-range ρ
        assert tuned[1]["rho/revisit_min"] == pytest.approx((rho_min + rho_max) / 2, abs=1e-6)
    else:  # replay: a D per prompt, so ρ varies within the step
        assert tuned[1]["rho/revisit_min"] < tuned[1]["rho/revisit_max"]
    # step 3 mixes prompts last seen at step 1 and at step 2: different D, different ρ
    assert tuned[2]["rho/revisit_min"] < tuned[2]["rho/revisit_max"]
