"""verl v1 trainer mode `single_stream_spo`: the sync trainer with SPO's tracker and sampler.

One step (spo-spec.md §2, §4, §5) on top of verl's `PPOTrainerSync`:

    keys    = spo.select(train_batch_size)            _fetch_one_gen_batch: prompts by priority
    uid     -> key                                    remembered per submitted prompt
    ... verl: rollout, reward, old log-probs ...
    reward_baselines = v̂₋₁(key(uid))                 _compute_advantage, then verl's own
    adv     = single_stream_spo estimator              compute_advantage -> estimator.py
    ... verl: actor update (reports actor/ppo_kl) ...
    spo.observe(keys, r, ρ)                            _update_actor, before any checkpoint
    spo_state.pt beside verl's files                   _save_checkpoint / _load_checkpoint

Keys are stable prompt ids (keys.py), never verl's per-submission uid or a row position.
ρ: a constant (`rho`), else the cumulative-drift estimator of spec §2 fed with a divergence
verl already reports once per update (`divergence_metric`, default the actor's approx-KL
`actor/ppo_kl`): D(x) = Σ max(metric, 0) over the steps since x's last visit. That metric
is measured before each mini-batch's gradient step, so it under-reads the step's drift
(0 with a single mini-batch): set `d_half` from its logged distribution, or use `rho`.

Settings live in `trainer.v1.single_stream_spo` (verl reads per-mode blocks there); every
field of `SPOSettings` below, all optional. verl's dataloader, and its `data.pt`, are
unused for training prompts: the sampler draws them.

`_compute_advantage` is verl 0.9.1's method with one added step (fill `reward_baselines`
and remember each row's reward); tests/integrations/verl pins the copied source.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from collections import deque

import numpy as np
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.protocol import DataProto
from verl.trainer.ppo.ray_trainer import apply_kl_penalty
from verl.trainer.ppo.rollout_corr_helper import compute_rollout_correction_and_add_to_batch
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer
from verl.trainer.ppo.v1 import trainer_base as verl_base
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
from verl.utils import tensordict_utils as tu
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path
from verl.utils.dataset.rl_dataset import collate_fn
from verl.workers.utils.padding import response_to_nested

from spo.algo.state import SPOState
from spo.integrations.verl.estimator import ESTIMATOR_NAME
from spo.integrations.verl.keys import prompt_keys
from spo.integrations.verl.version import require_supported_verl

logger = logging.getLogger(__name__)

TRAINER_MODE = ESTIMATOR_NAME
STATE_FILE = "spo_state.pt"
METRIC_PREFIX = "spo/"


class SPOConfigError(ValueError):
    """A verl config the trainer mode cannot run with (one line for people)."""


@dataclasses.dataclass(frozen=True)
class SPOSettings:
    """`trainer.v1.single_stream_spo`: tracker, sampler and ρ settings (spec defaults)."""

    rho_min: float = 0.875
    rho_max: float = 0.96
    d_half: float = 0.06
    rho: float | None = None  # constant ρ; None = ρ(D) from divergence_metric
    divergence_metric: str = "actor/ppo_kl"
    eps: float = 0.05
    sampler: str = "priority"  # or "uniform" (the no-priority ablation)
    seed: int = 0
    prior_value: float = 0.5
    prior_count: float = 1.0
    reward_range: tuple[float, float] = (0.0, 1.0)
    init_values: str | None = None  # `spo init-values` parquet, rows matched by str(key)

    def state_kwargs(self) -> dict:
        """The fields SPOState takes (same names); the rest steer the trainer."""
        kwargs = dataclasses.asdict(self)
        for name in ("rho", "divergence_metric", "init_values"):
            kwargs.pop(name)
        return kwargs

    @classmethod
    def from_verl(cls, config) -> SPOSettings:
        block = config.trainer.v1.get(TRAINER_MODE, None)
        raw = {} if block is None else OmegaConf.to_container(block, resolve=True)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise SPOConfigError(
                f"trainer.v1.{TRAINER_MODE} has unknown keys {unknown}; valid: {', '.join(names)}"
            )
        if "reward_range" in raw:
            raw["reward_range"] = tuple(raw["reward_range"])
        return cls(**raw)


@register_trainer(TRAINER_MODE)
class SPOTrainer(PPOTrainerSync):
    """verl's sync trainer drawing prompts with SPOState and baselining with its tracker."""

    # verl branches on `trainer_mode == "sync"` (replay buffer, dataloader chunking,
    # checkpointing TransferQueue): this mode is the sync trainer under another registry
    # name, so it reads as "sync" whatever verl assigns (its config block is read by name).
    @property
    def trainer_mode(self) -> str:
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, _registry_name: str) -> None:
        pass

    def __init__(self, config):
        require_supported_verl()
        self.spo_settings = SPOSettings.from_verl(config)
        check_verl_config(config)
        super().__init__(config)
        self.spo: SPOState | None = None  # built with the dataset in _init_dataloader
        self.spo_key_source = ""
        self.spo_key_rows: dict = {}  # key -> dataset row sent to rollout
        self.spo_uid_keys: dict[str, object] = {}  # in-flight uid -> key
        self._drawn: deque = deque()  # keys drawn for this step, not yet fetched
        self._drawn_step: int | None = None
        self._pending: tuple[list, torch.Tensor] | None = None  # (keys, rewards) to observe

    # ------------------------------------------------------------- prompts
    def _init_dataloader(self):
        super()._init_dataloader()
        s = self.spo_settings
        keys, self.spo_key_source = prompt_keys(
            self.train_dataset, self.config.data.get("prompt_key", "prompt")
        )
        self.spo_key_rows = {}
        for row, key in enumerate(keys):
            self.spo_key_rows.setdefault(key, row)
        self.spo = SPOState(list(self.spo_key_rows), **s.state_kwargs())
        if len(self.spo) < self.config.data.train_batch_size:
            raise SPOConfigError(
                f"data.train_batch_size={self.config.data.train_batch_size} prompts per step but "
                f"the training data has only {len(self.spo)} distinct prompts; lower it"
            )
        if s.init_values:
            n = self.spo.load_values(s.init_values)
            logger.warning(
                "spo: offline values for %d of %d prompts from %s", n, len(self.spo), s.init_values
            )

    def _fetch_one_gen_batch(self) -> TensorDict:
        """gen_batch_size prompts of this step's priority draw, with fresh uids -> keys."""
        n = self.config.data.get("gen_batch_size", None) or self.config.data.train_batch_size
        if self._drawn_step != self.global_steps:  # a new step: draw with the current v̂
            self._drawn.clear()
            self._drawn_step = self.global_steps
        while len(self._drawn) < n:  # one draw per step unless verl asks for refills
            self._drawn.extend(
                self.spo.select(min(len(self.spo), max(n, self.config.data.train_batch_size)))
            )
        keys = [self._drawn.popleft() for _ in range(n)]
        batch_dict = collate_fn([self.train_dataset[self.spo_key_rows[k]] for k in keys])
        uids = [str(uuid.uuid4()) for _ in keys]
        batch_dict["uid"] = np.array(uids, dtype=object)
        self.spo_uid_keys.update(zip(uids, keys, strict=True))
        return tu.get_tensordict(batch_dict)

    def _baselines(self, data: DataProto) -> torch.Tensor:
        """reward_baselines (B,) in reward units; remember (keys, rewards) of the real rows."""
        uids = data.non_tensor_batch["uid"]
        has_tokens_B = data.batch["response_mask"].bool().any(dim=-1).tolist()
        real = [u in self.spo_uid_keys for u in uids]
        for uid, is_real, tokens in zip(uids, real, has_tokens_B, strict=True):
            if not is_real and tokens:
                raise RuntimeError(
                    f"spo: rollout row with uid {uid!r} was not drawn by this trainer"
                )
        keys = [self.spo_uid_keys[u] for u, is_real in zip(uids, real, strict=True) if is_real]
        real_B = torch.tensor(real, dtype=torch.bool)
        reward_B = data.batch["token_level_scores"].sum(dim=-1)[real_B].detach().float().cpu()
        self.spo.unit_rewards(reward_B)  # outside reward_range: one clear error, before training
        lo, hi = self.spo.reward_range
        baseline_B = torch.zeros(len(uids), dtype=torch.float32)
        if keys:
            baseline_B[real_B] = lo + (hi - lo) * torch.from_numpy(self.spo.baseline(keys))
        self._pending = (keys, reward_B)
        for uid in {u for u, is_real in zip(uids, real, strict=True) if is_real}:
            self.spo_uid_keys.pop(uid, None)  # n > 1 rows share a uid
        return baseline_B

    # ------------------------------------------------------------ advantage
    def _compute_advantage(self, batch, metrics: dict):
        """verl 0.9.1's PPOTrainer._compute_advantage plus `reward_baselines` (marked SPO)."""
        tq = verl_base.tq
        fields = [
            "uid",
            "response_mask",
            "rm_scores",
            "rollout_log_probs",
            "old_log_probs",
            "ref_log_prob",
            "values",
        ]
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=fields
        )

        response_mask = data["response_mask"]
        data = DataProto(batch=data.to_padded_tensor())
        data.batch["token_level_scores"] = data.batch["rm_scores"]
        data.non_tensor_batch["uid"] = np.array(data.batch.pop("uid").tolist(), dtype=object)

        # 1. apply kl penalty to rewards
        if self.config.algorithm.use_kl_in_reward:
            data, kl_metrics = apply_kl_penalty(
                data, kl_ctrl=self.kl_ctrl_in_reward, kl_penalty=self.config.algorithm.kl_penalty
            )
            metrics.update(kl_metrics)
        else:
            data.batch["token_level_rewards"] = data.batch["token_level_scores"]

        # 2. rollout correction (decoupled mode only), as in verl
        rollout_corr_config = self.config.algorithm.get("rollout_correction", None)
        bypass_recomputing_logprobs = rollout_corr_config and rollout_corr_config.get(
            "bypass_mode", False
        )
        rollout_correction = (
            rollout_corr_config is not None
            and "rollout_log_probs" in data.batch
            and not bypass_recomputing_logprobs
        )
        if rollout_correction:
            data, is_metrics = compute_rollout_correction_and_add_to_batch(
                data, rollout_corr_config
            )
            metrics.update(is_metrics)

        # SPO: the tracker's v̂₋₁ per row, read before this step's rewards are observed
        data.batch["reward_baselines"] = self._baselines(data)

        # 3. compute advantages
        data = compute_advantage_for_multi_trajectories(
            data,
            batch_keys=batch.keys,
            adv_estimator=self.config.algorithm.adv_estimator,
            gamma=self.config.algorithm.gamma,
            lam=self.config.algorithm.lam,
            num_repeat=self.config.actor_rollout_ref.rollout.n,
            norm_adv_by_std_in_grpo=self.config.algorithm.get("norm_adv_by_std_in_grpo", True),
            config=self.config.algorithm,
        )

        # 4. write nested advantages and returns back to TransferQueue
        fields = ["advantages", "returns"]
        if self.config.algorithm.use_kl_in_reward:
            fields.append("token_level_rewards")
        if rollout_correction:
            fields.append("response_mask")
            if "rollout_is_weights" in data.batch:
                fields.append("rollout_is_weights")

        output = {}
        for field in fields:
            output[field] = response_to_nested(data.batch[field], response_mask)
        output = TensorDict(output, batch_size=len(batch))

        batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)

        return batch

    # --------------------------------------------------------- tracker update
    def _update_actor(self, batch, metrics: dict):
        """verl's actor update, then the tracker absorbs this batch (ρ needs the new policy)."""
        batch = super()._update_actor(batch, metrics)
        self._observe(metrics)
        return batch

    def _observe(self, metrics: dict) -> None:
        if self._pending is None:
            return
        keys, reward_B = self._pending
        self._pending = None
        s = self.spo_settings
        if s.rho is not None:
            self.spo.observe(keys, reward_B, step=self.global_steps, rho=s.rho)
        else:
            drift = metrics.get(s.divergence_metric)
            if drift is None:
                raise SPOConfigError(
                    f"verl reported no {s.divergence_metric!r} after the actor update; set "
                    f"trainer.v1.{TRAINER_MODE}.divergence_metric to one it reports "
                    f"(found: {', '.join(sorted(k for k in metrics if k.startswith('actor/')))}) "
                    f"or a constant trainer.v1.{TRAINER_MODE}.rho"
                )
            self.spo.advance(max(float(drift), 0.0))
            self.spo.observe(keys, reward_B, step=self.global_steps)
        metrics.update({METRIC_PREFIX + k: v for k, v in self.spo.metrics().items()})

    # ------------------------------------------------------------ checkpoints
    def _save_checkpoint(self):
        """The tracker first, then verl's files and its latest-step marker (resume is lossless)."""
        folder = os.path.join(
            self.config.trainer.default_local_dir, f"global_step_{self.global_steps}"
        )
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, STATE_FILE)
        torch.save({"spo": self.spo.state_dict(), "global_step": self.global_steps}, path + ".tmp")
        os.replace(path + ".tmp", path)
        super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps == 0:
            return
        folder = self._resume_folder()
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"spo: checkpoint {folder} has no {STATE_FILE} (not written by "
                f"trainer_mode={TRAINER_MODE}); resume it with the mode that wrote it, or start "
                "fresh with trainer.resume_mode=disable"
            )
        saved = torch.load(path, weights_only=False)  # our own file, as verl's data.pt
        self.spo.load_state_dict(saved["spo"])
        logger.warning("spo: tracker restored from %s (%d prompts)", path, len(self.spo))

    def _resume_folder(self) -> str:
        """The global_step_N folder verl's _load_checkpoint resumed from (same rules)."""
        t = self.config.trainer
        if t.resume_mode == "resume_path":
            folder = t.resume_from_path
        else:
            folder = find_latest_ckpt_path(os.path.abspath(t.default_local_dir))
        return os.path.abspath(folder)


def check_verl_config(config) -> None:
    algo = config.algorithm
    if algo.adv_estimator != ESTIMATOR_NAME:
        raise SPOConfigError(
            f"trainer.v1.trainer_mode={TRAINER_MODE} needs "
            f"algorithm.adv_estimator={ESTIMATOR_NAME}; got {algo.adv_estimator!r}"
        )
    if algo.get("use_kl_in_reward", False):
        raise SPOConfigError(
            f"trainer.v1.trainer_mode={TRAINER_MODE} tracks the verifier's success rate: set "
            "algorithm.use_kl_in_reward=false (actor_rollout_ref.actor.use_kl_loss for a KL term)"
        )
