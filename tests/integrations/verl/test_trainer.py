"""The `single_stream_spo` trainer mode's overrides, driven on CPU.

Real: verl's config (Hydra), its PPOTrainer.__init__, RLHFDataset + dataloader, collate,
TransferQueue on a local Ray, batch padding, compute_advantage, checkpoint folder logic.
Fakes (verl needs GPUs there): the actor worker group (`update_actor` returns the metrics
verl's actor reports; `save/load_checkpoint` record their calls) and the rollout (rows are
written into TransferQueue as verl's agent loop writes them).
"""

from __future__ import annotations

import ast
import copy
import inspect
import os
import textwrap

import numpy as np
import pytest
import torch

pytest.importorskip("verl", reason="needs pip install 'spo-rl[verl]' (make test-verl)")

from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.trainer.ppo.v1.replay_buffer import ReplayBufferAsync

from spo.algo import SPOState
from spo.integrations.verl import SPOTrainer
from spo.integrations.verl.keys import content_key
from spo.integrations.verl.trainer import STATE_FILE, SPOConfigError

from .conftest import verl_config, verl_rows, write_parquet

B = 4  # prompts per step


class FakeActorGroup:
    """verl's actor worker group where it needs GPUs: metrics out, checkpoint calls in."""

    def __init__(self, ppo_kl=(0.01, 0.03)):
        self.ppo_kl = list(ppo_kl)
        self.calls = []

    def update_actor(self, batch):
        self.calls.append(("update_actor", len(batch)))
        return {
            "metrics": {"actor/ppo_kl": self.ppo_kl, "actor/pg_loss": [0.5], "actor/mfu": [0.1]}
        }

    def save_checkpoint(self, local_path, remote_path, global_step, max_ckpt_to_keep=None):
        os.makedirs(local_path, exist_ok=True)
        self.calls.append(("save", local_path, global_step))

    def load_checkpoint(self, local_path, del_local_after_load=False):
        self.calls.append(("load", local_path))


def make_trainer(tmp_path, rows, *overrides, name="train.parquet"):
    data = write_parquet(tmp_path / name, rows)
    config = verl_config(
        "algorithm.adv_estimator=single_stream_spo",
        "trainer.v1.trainer_mode=single_stream_spo",
        f"data.train_files={data}",
        f"data.val_files={data}",
        f"data.train_batch_size={B}",
        "data.filter_overlong_prompts=False",
        "data.dataloader_num_workers=0",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        "trainer.n_gpus_per_node=1",
        *overrides,
    )
    trainer = SPOTrainer(config)
    trainer.tokenizer = trainer.processor = None  # prompts are not tokenised before rollout
    trainer._init_dataloader()
    trainer.global_steps = 1
    trainer.actor_rollout_wg = FakeActorGroup()
    return trainer


def key_of(row: dict):
    return row["extra_info"]["index"]


def fetched_keys(trainer, batch):
    return [trainer.spo_uid_keys[u] for u in batch["uid"]]


# ------------------------------------------------------------------------------ keys
def test_runs_as_verls_sync_trainer(tmp_path):
    trainer = make_trainer(tmp_path, verl_rows(8))
    assert trainer.trainer_mode == "sync" and trainer.parameter_sync_step == 1
    assert not isinstance(trainer.replay_buffer, ReplayBufferAsync)
    assert trainer.train_dataloader.batch_size == B  # not forced to 1 as async modes are


def test_keys_are_extra_info_index_and_survive_reordering(tmp_path):
    rows = verl_rows(8, index=lambda i: 100 + i)
    trainer = make_trainer(tmp_path, rows)
    assert trainer.spo_key_source == "index" and trainer.spo.keys == [100 + i for i in range(8)]
    shuffled = make_trainer(tmp_path, rows[::-1], name="reversed.parquet")
    for key in trainer.spo.keys:  # the same key names the same prompt after reordering
        a = trainer.train_dataset[trainer.spo_key_rows[key]]["raw_prompt"]
        b = shuffled.train_dataset[shuffled.spo_key_rows[key]]["raw_prompt"]
        assert a == b


@pytest.mark.parametrize(
    "index",
    [lambda i: None, lambda i: 0, lambda i: i % 3],
    ids=["missing", "verl_default_0", "repeated"],
)
def test_keys_fall_back_to_content_hash(tmp_path, index):
    rows = verl_rows(6, index=index)
    trainer = make_trainer(tmp_path, rows)
    assert trainer.spo_key_source == "content"
    assert trainer.spo.keys == [content_key(r) for r in rows]
    assert len(set(trainer.spo.keys)) == 6


def test_identical_prompts_share_one_key(tmp_path):
    rows = verl_rows(5, index=lambda i: None)
    trainer = make_trainer(tmp_path, [*rows, copy.deepcopy(rows[2])])
    assert len(trainer.spo) == 5 and trainer.spo_key_rows[content_key(rows[2])] == 2


# ------------------------------------------------------------------------- sampling
def test_prompts_are_drawn_by_priority_and_uids_map_to_keys(tmp_path):
    rows = verl_rows(8)
    trainer = make_trainer(tmp_path, rows)
    # v̂ near 0 or 1 for keys 0-3 (weight ≈ 0.1), 1/2 for 4-7 (weight 0.55)
    trainer.spo.observe([0, 1, 2, 3] * 200, [0.0, 1.0, 0.0, 1.0] * 200, step=0, rho=1.0)
    reference = SPOState()
    reference.load_state_dict(trainer.spo.state_dict())
    counts = np.zeros(8)
    for step in range(1, 41):
        trainer.global_steps = step
        batch = trainer._fetch_one_gen_batch()
        keys = fetched_keys(trainer, batch)
        assert keys == reference.select(B)  # exactly SPOState's draw, distinct keys
        for k, raw in zip(keys, batch["raw_prompt"], strict=True):  # the key's own row
            assert list(raw) == rows[k]["prompt"]
        assert all(u not in keys and len(u) == 36 for u in batch["uid"])  # fresh uuids, not keys
        counts[keys] += 1
    assert counts[4:].min() > 2 * counts[:4].max()


def test_several_fetches_per_step_share_one_draw(tmp_path):
    trainer = make_trainer(tmp_path, verl_rows(8), "+data.gen_batch_size=2")
    first, second = trainer._fetch_one_gen_batch(), trainer._fetch_one_gen_batch()
    keys = fetched_keys(trainer, first) + fetched_keys(trainer, second)
    assert len(set(keys)) == B


def test_more_prompts_per_step_than_data_is_one_clear_error(tmp_path):
    with pytest.raises(SPOConfigError, match="only 3 distinct prompts"):
        make_trainer(tmp_path, verl_rows(3))


@pytest.mark.parametrize(
    "override, match",
    [
        ("algorithm.adv_estimator=grpo", "needs algorithm.adv_estimator=single_stream_spo"),
        ("algorithm.use_kl_in_reward=true", "use_kl_in_reward=false"),
        ("+trainer.v1.single_stream_spo.rho_mn=0.9", "unknown keys"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, override, match):
    with pytest.raises(SPOConfigError, match=match):
        make_trainer(tmp_path, verl_rows(8), override)


# ------------------------------------------------------------------ advantage, update
def _rollout(tq, trainer, batch, reward_B, length_B) -> KVBatchMeta:
    """Write one response per prompt into TransferQueue as verl's agent loop does."""
    uids = list(batch["uid"])
    keys = [f"{u}_0_0" for u in uids]
    mask = [torch.ones(n, dtype=torch.int64) for n in length_B]
    scores = [torch.zeros(n) for n in length_B]
    for s, r in zip(scores, reward_B, strict=True):
        s[-1] = r
    fields = TensorDict(
        {
            "uid": uids,
            "response_mask": torch.nested.as_nested_tensor(mask, layout=torch.jagged),
            "rm_scores": torch.nested.as_nested_tensor(scores, layout=torch.jagged),
            "prompts": torch.nested.as_nested_tensor(
                [torch.ones(3, dtype=torch.int64)] * len(uids), layout=torch.jagged
            ),
            "responses": torch.nested.as_nested_tensor(
                [torch.ones(n, dtype=torch.int64) for n in length_B], layout=torch.jagged
            ),
        },
        batch_size=len(uids),
    )
    tags = [{"seq_len": 3 + n, "is_prompt": False} for n in length_B]
    tq.kv_batch_put(keys=keys, partition_id="train", fields=fields, tags=tags)
    return KVBatchMeta(keys=keys, tags=tags, partition_id="train")


def _step(tq, trainer, reward_B, length_B, pad_to=None):
    batch = trainer._fetch_one_gen_batch()
    keys = fetched_keys(trainer, batch)
    meta = _rollout(tq, trainer, batch, reward_B, length_B)
    if pad_to:  # verl pads to a multiple of the data-parallel / mini-batch size
        meta = upsample_batch_to_divisible_size(meta, pad_to, eos_token_id=2)
    metrics: dict = {}
    meta = trainer._compute_advantage(meta, metrics)
    adv = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["advantages"])
    adv_BT = adv["advantages"].to_padded_tensor(padding=0.0)
    trainer._update_actor(meta, metrics)
    tq.kv_clear(keys=meta.keys, partition_id="train")
    return keys, adv_BT, metrics


def test_advantage_and_tracker_update_through_transfer_queue(tmp_path, transfer_queue):
    trainer = make_trainer(tmp_path, verl_rows(8))
    reference = SPOState()
    reference.load_state_dict(trainer.spo.state_dict())
    history = [([1.0, 0.0, 1.0, 1.0], [3, 2, 4, 1]), ([0.0, 0.0, 1.0, 0.0], [2, 2, 2, 5])]
    for step, (reward_B, length_B) in enumerate(history, start=1):
        trainer.global_steps = step
        keys, adv_BT, metrics = _step(transfer_queue, trainer, reward_B, length_B, pad_to=3)
        assert keys == reference.select(B)
        want_B = reference.advantages(reward_B, keys).float()  # v̂ before this step's rewards
        for i, n in enumerate(length_B):
            assert torch.allclose(adv_BT[i, :n], want_B[i].expand(n), atol=1e-6)
        assert torch.all(adv_BT[B:] == 0)  # verl's padding rows
        reference.advance(0.02)  # mean of the actor's reported approx-KL
        reference.observe(keys, reward_B, step=step)
        got, want = trainer.spo.state_dict(), reference.state_dict()
        assert np.array_equal(got["tracker"]["alpha"], want["tracker"]["alpha"])
        assert np.array_equal(got["tracker"]["beta"], want["tracker"]["beta"])
        assert metrics["spo/tracker/rho_mean"] == pytest.approx(
            reference.metrics()["tracker/rho_mean"]
        )
        assert {"spo/adv/variance_ratio", "spo/tracker/seen_fraction", "actor/ppo_kl"} <= set(
            metrics
        )
    assert trainer.spo_uid_keys == {}  # nothing in flight is left behind


def test_constant_rho(tmp_path, transfer_queue):
    trainer = make_trainer(tmp_path, verl_rows(8), "+trainer.v1.single_stream_spo.rho=0.5")
    keys, _, metrics = _step(transfer_queue, trainer, [1.0, 1.0, 1.0, 1.0], [2, 2, 2, 2])
    assert metrics["spo/tracker/rho_mean"] == 0.5
    assert np.allclose(trainer.spo.baseline(keys), (0.5 * 0.5 + 1) / (0.5 * 1 + 1))


def test_missing_divergence_metric_is_one_clear_error(tmp_path, transfer_queue):
    trainer = make_trainer(
        tmp_path,
        verl_rows(8),
        "+trainer.v1.single_stream_spo.divergence_metric=actor/kl_since_visit",
    )
    with pytest.raises(SPOConfigError, match=r"reported no 'actor/kl_since_visit'.*actor/ppo_kl"):
        _step(transfer_queue, trainer, [1.0, 0.0, 1.0, 0.0], [2, 2, 2, 2])


def test_reward_outside_range_stops_before_the_update(tmp_path, transfer_queue):
    trainer = make_trainer(tmp_path, verl_rows(8))  # reward_range [0, 1]
    with pytest.raises(ValueError, match="rewards"):
        _step(transfer_queue, trainer, [1.0, 2.0, 0.0, 0.0], [2, 2, 2, 2])
    assert trainer.actor_rollout_wg.calls == []


# ---------------------------------------------------------------------- checkpoints
def test_tracker_round_trips_through_verls_checkpoint_dir(tmp_path, transfer_queue):
    trainer = make_trainer(tmp_path, verl_rows(8, index=lambda i: f"id-{i}"))
    for step in (1, 2):
        trainer.global_steps = step
        _step(transfer_queue, trainer, [1.0, 0.0, 0.0, 1.0], [2, 3, 2, 3])
    trainer._save_checkpoint()
    folder = tmp_path / "ckpt" / "global_step_2"
    assert (folder / STATE_FILE).is_file() and (folder / "data.pt").is_file()
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert not (folder / "transfer_queue").exists()  # sync: no in-flight prompts to save

    resume_modes = [
        ["trainer.resume_mode=auto"],
        ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={folder}"],
    ]
    for overrides in resume_modes:
        resumed = make_trainer(tmp_path, verl_rows(8, index=lambda i: f"id-{i}"), *overrides)
        resumed._load_checkpoint()
        assert resumed.global_steps == 2
        assert resumed.actor_rollout_wg.calls == [("load", str(folder / "actor"))]
        np.testing.assert_equal(resumed.spo.state_dict(), trainer.spo.state_dict())  # all of it
        assert resumed.spo.select(B) == copy.deepcopy(trainer.spo).select(B)  # same next draw


def test_checkpoint_without_tracker_is_one_clear_error(tmp_path):
    folder = tmp_path / "ckpt" / "global_step_5"
    folder.mkdir(parents=True)
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("5")
    trainer = make_trainer(tmp_path, verl_rows(8))
    with pytest.raises(FileNotFoundError, match=f"has no {STATE_FILE}.*resume_mode=disable"):
        trainer._load_checkpoint()


def test_fresh_start_keeps_offline_values(tmp_path):
    values = SPOState([0, 1, 2, 3, 4, 5, 6, 7])
    values.observe([3] * 8, [1.0] * 8, step=0, rho=1.0)
    path = values.save_values(tmp_path / "values.parquet")
    trainer = make_trainer(
        tmp_path, verl_rows(8), f"+trainer.v1.single_stream_spo.init_values={path}"
    )
    trainer._load_checkpoint()  # no checkpoint yet: the offline values stay
    assert trainer.global_steps == 0
    assert trainer.spo.baseline([3])[0] == pytest.approx(values.baseline([3])[0], abs=0.06)
    assert trainer.spo.baseline([0])[0] == pytest.approx(0.5)


def test_copied_compute_advantage_is_verls_plus_the_baselines():
    """trainer.py copies verl's PPOTrainer._compute_advantage and adds two statements; a
    verl that changes the method fails here (re-copy it and extend SUPPORTED_VERL)."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    def body(fn, added=()):
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
        stmts = tree.body[1:]  # without the docstring
        return [ast.dump(s) for s in stmts if not any(a in ast.unparse(s) for a in added)]

    ours = body(SPOTrainer._compute_advantage, added=("tq = verl_base.tq", "'reward_baselines'"))
    assert ours == body(PPOTrainer._compute_advantage)
    assert len(body(SPOTrainer._compute_advantage)) == len(ours) + 2
