"""examples/verl: the configs compose under verl's Hydra and pass verl's own config checks
with the paper's settings; the data script keys prompts as `spo init-values` does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="needs pip install 'spo-rl[verl]' (make test-verl)")

from hydra import compose, initialize_config_dir
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

from spo.integrations.verl import ESTIMATOR_NAME, TRAINER_MODE, SPOSettings
from spo.integrations.verl.trainer import check_verl_config

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "verl"
PATHS = ["actor_rollout_ref.model.path=/m", "data.train_files=t", "data.val_files=v"]


def _example(name: str):
    with initialize_config_dir(config_dir=str(EXAMPLES), version_base=None):
        cfg = compose(name, overrides=PATHS)
    validate_config(
        config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg)
    )
    check_verl_config(cfg)
    return cfg, SPOSettings.from_verl(cfg)


@pytest.mark.parametrize("name", ["spo_smollm2", "spo_qwen3_8b"])
def test_example_configs_are_valid_verl_configs(name):
    cfg, settings = _example(name)
    assert cfg.algorithm.adv_estimator == ESTIMATOR_NAME
    assert cfg.trainer.use_v1 and cfg.trainer.v1.trainer_mode == TRAINER_MODE
    actor = cfg.actor_rollout_ref.actor
    assert (
        cfg.actor_rollout_ref.rollout.n == 1 and not actor.use_kl_loss and actor.entropy_coeff == 0
    )
    assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.28, 10.0)
    assert (settings.rho_min, settings.rho_max, settings.d_half, settings.eps) == (
        0.875,
        0.96,
        0.06,
        0.05,
    )


def test_paper_settings():
    cfg, settings = _example("spo_qwen3_8b")
    actor = cfg.actor_rollout_ref.actor
    assert cfg.data.train_batch_size == 256 and actor.optim.lr == 1e-6
    assert cfg.data.train_batch_size // actor.ppo_mini_batch_size == 8  # updates per step
    assert actor.loss_agg_mode == "token-mean" and settings.init_values == "values.parquet"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"verl_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_script_keys_rows_by_the_task_ids():
    from spo.tasks import load_task

    task = load_task("arithmetic", train_size=6, test_size=2, seed=0)
    rows = _load("make_data").verl_rows(task.train, "spo:arithmetic", "Be brief.")
    assert [r["extra_info"]["index"] for r in rows] == [
        ex.id for ex in task.train
    ]  # init-values ids
    assert rows[0]["prompt"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": task.train[0].prompt},
    ]
    assert rows[0]["reward_model"]["ground_truth"] == task.train[0].answer


def test_reward_function_scores_like_spo():
    score = _load("reward").compute_score
    assert score("spo:arithmetic", "The sum is 1,234.", "1234") == 1.0
    assert score("spo:arithmetic", "It is 12, not 13", "12") == 0.0
    assert score("spo:arithmetic", "no number", "3") == 0.0
