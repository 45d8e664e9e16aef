"""SPO inside TRL: `SPOConfig` / `SPOTrainer`, drop-ins for `GRPOConfig` / `GRPOTrainer`.

A GRPO script becomes an SPO script by changing the import and the config:

    from spo.integrations.trl import SPOConfig, SPOTrainer
    args = SPOConfig(output_dir="out", per_device_train_batch_size=8)   # no num_generations
    SPOTrainer(model, reward_funcs=[f, g], args=args, train_dataset=ds).train()

What differs from GRPOTrainer (spo-spec.md §2–§5), everything else is TRL's own (reward
functions and weights, PEFT, loss types, clipping, vLLM modes, gradient accumulation,
logging backends):

- One completion per prompt (`num_generations=1`; any other value is an error).
- Advantage Ã = (r − v̂₋₁(x)) normalised over the GLOBAL generation batch (TRL gathers the
  rewards of all processes first; the same gathered tensor is used here), r = Σᵢ wᵢ·rᵢ
  (TRL's weighted sum). v̂₋₁ is the tracker value before this batch's rewards. Completions
  every reward function scored None get Ã = 0 and do not update the tracker.
- Prompts are drawn by the tracker priority w ∝ sqrt(v̂(1−v̂)) + ε, without replacement,
  AT GENERATION TIME, not by the dataloader: TRL's train sampler is replaced by a plain
  index clock that only paces the loop (its rows are ignored), so dataloader prefetching
  (accelerate's one-batch look-ahead, worker prefetch) cannot make a draw stale; each
  draw sees the tracker after every earlier batch's update. All processes hold identical
  SPOState copies and draw the same global batch; process p takes slice p, as TRL slices.
- The tracker absorbs a generation batch after the optimizer step that finishes its last
  micro-batch (a `TrainerCallback.on_step_end`, before TRL logs and saves). ρ: "drift"
  (default; the policy's mean |Δ log p| on `spo_drift_sample` sequences per process between
  generation and that update, accumulated per prompt, spec §2) or "constant".
- SPOState (tracker, sampler RNG, drift clock) is saved in `checkpoint-N/spo/` (npz+json,
  no pickle) and restored by `trainer.train(resume_from_checkpoint=...)`: a resumed run
  draws the same prompts with the same tracker as an uninterrupted one.
- Tracker metrics go to TRL's logs under `spo/...` (so trackio/wandb/tensorboard show them);
  TRL's `frac_reward_zero_std` (always 1 for groups of one) is not logged.

Private TRL / transformers methods this module relies on (checked against trl 1.16; an
other TRL version fails at import with one line):
- overrides `GRPOTrainer._get_train_sampler` (index clock), `_generate_and_score_completions`
  (draw inputs, then super(), then replace "advantages"), `_calculate_rewards` (super(),
  keeps the gathered rewards), `_save_checkpoint` / `_load_optimizer_and_scheduler` (super(),
  then the SPO state; TRL stores its own entropy-controller state the same way);
- calls `GRPOTrainer._get_per_token_logps_and_entropies` (ρ=drift),
  `Trainer._remove_unused_columns` (rows as the dataloader would give them);
- reads `GRPOTrainer._step`, `reward_weights`, `_metrics`, `_logs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spo.algo import SPOState, policy_drift

TRL_MIN, TRL_MAX = "1.16", "1.17"  # keep in step with pyproject's `trl` extra


def _import_trl():
    try:
        import trl
    except ImportError:
        raise ImportError(
            "spo.integrations.trl needs TRL; install it with: pip install 'spo-rl[trl]'"
        ) from None
    from packaging.version import Version

    if not Version(TRL_MIN) <= Version(trl.__version__) < Version(TRL_MAX):
        raise ImportError(
            f"spo.integrations.trl supports trl>={TRL_MIN},<{TRL_MAX} (it overrides private "
            f"GRPOTrainer methods that change between minor versions); found trl "
            f"{trl.__version__}: pip install 'spo-rl[trl]'"
        )
    return trl


_import_trl()

from datasets import Dataset  # noqa: E402  (after the version check: one clear line first)
from torch.utils.data import Sampler  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

_GRPO_MIN_GENERATIONS = "GRPO requires at least 2 generations"  # GRPOConfig's message
RHO_MODES = ("drift", "constant")


@dataclass
class SPOConfig(GRPOConfig):
    """`GRPOConfig` with one completion per prompt and SPO's tracker / sampler / ρ settings."""

    num_generations: int | None = field(
        default=1,
        metadata={
            "help": "completions per prompt: SPO samples exactly one (its baseline is a tracker)"
        },
    )
    spo_rho: str = field(
        default="drift",
        metadata={"help": "forgetting factor: drift (adaptive, spec §2) | constant"},
    )
    spo_rho_constant: float = field(default=0.9, metadata={"help": "rho when spo_rho=constant"})
    spo_rho_min: float = field(
        default=0.875, metadata={"help": "lower clip of rho; offline count N0 = 1/(1 - rho_min)"}
    )
    spo_rho_max: float = field(
        default=0.96, metadata={"help": "upper clip of rho (first visits use it)"}
    )
    spo_d_half: float = field(
        default=0.06, metadata={"help": "drift at which rho halves: rho = 2^(-D/d_half)"}
    )
    spo_drift_sample: int = field(
        default=16, metadata={"help": "sequences per process re-scored to measure drift"}
    )
    spo_prior_value: float = field(default=0.5, metadata={"help": "v-hat of prompts never seen"})
    spo_prior_count: float = field(default=1.0, metadata={"help": "effective count of that prior"})
    spo_sampler: str = field(
        default="priority", metadata={"help": "prompt sampling: priority (spec §5) | uniform"}
    )
    spo_eps: float = field(
        default=0.05, metadata={"help": "priority floor: w = sqrt(v(1-v)) + eps"}
    )
    spo_normalize: str = field(
        default="batch", metadata={"help": "advantage normalisation: batch | none"}
    )
    spo_reward_range: list[float] | None = field(
        default=None,
        metadata={
            "help": "[lo, hi] of the weighted reward sum, mapped onto [0, 1]; default "
            "[sum of negative weights, sum of positive weights] (reward functions in [0, 1])"
        },
    )
    spo_key_column: str | None = field(
        default=None,
        metadata={"help": "dataset column with a stable prompt id (default: the row index)"},
    )
    spo_init_values: str | None = field(
        default=None,
        metadata={
            "help": "parquet written by `spo init-values` (rows matched to keys by str(key))"
        },
    )

    def __post_init__(self):
        if self.num_generations != 1:
            raise ValueError(
                f"SPOConfig samples one completion per prompt; got num_generations="
                f"{self.num_generations}: drop it (SPO's baseline is a per-prompt tracker, "
                "not a group; use GRPOConfig for groups)"
            )
        for name, value, valid in (
            ("spo_rho", self.spo_rho, RHO_MODES),
            ("spo_sampler", self.spo_sampler, ("priority", "uniform")),
            ("spo_normalize", self.spo_normalize, ("batch", "none")),
            (
                "multi_objective_aggregation",
                self.multi_objective_aggregation,
                ("sum_then_normalize",),
            ),
        ):
            if value not in valid:
                raise ValueError(
                    f"SPOConfig {name} must be one of {', '.join(valid)}; got {value!r}"
                )
        if self.spo_drift_sample < 1:
            raise ValueError(
                f"SPOConfig spo_drift_sample must be >= 1; got {self.spo_drift_sample}"
            )
        if not 0 < self.spo_rho_constant <= 1:
            raise ValueError(
                f"SPOConfig spo_rho_constant must be in (0, 1]; got {self.spo_rho_constant}"
            )
        self.make_spo_state(
            0
        )  # the tracker / sampler settings, checked by spo.algo (one line each)
        try:
            super().__post_init__()
        except ValueError as e:  # GRPOConfig refuses num_generations < 2: the point of SPO
            if not str(e).startswith(_GRPO_MIN_GENERATIONS):
                raise
            # GRPOConfig.__post_init__ (trl 1.16) ends after that check with vLLM importance
            # sampling checks; the one that changes a value is this deprecation alias.
            if self.vllm_importance_sampling_cap is not None:
                self.vllm_importance_sampling_clip_max = self.vllm_importance_sampling_cap

    def make_spo_state(self, keys, reward_range=(0.0, 1.0)) -> SPOState:
        """The SPOState these settings describe, over `keys` (a count or a list)."""
        try:
            return SPOState(
                keys,
                rho_min=self.spo_rho_min,
                rho_max=self.spo_rho_max,
                d_half=self.spo_d_half,
                prior_value=self.spo_prior_value,
                prior_count=self.spo_prior_count,
                eps=self.spo_eps,
                seed=self.seed,
                sampler=self.spo_sampler,
                reward_range=tuple(self.spo_reward_range or reward_range),
            )
        except ValueError as e:
            raise ValueError(f"SPOConfig: {e}") from None


class _GenerationClock(Sampler):
    """Row indices 0, 1, ... (mod n) as long as TRL's RepeatSampler would run: it paces the
    dataloader; SPOTrainer draws the real prompts at generation time."""

    def __init__(self, num_rows: int, length: int):
        self.num_rows, self.length = num_rows, length

    def __iter__(self):
        return (i % self.num_rows for i in range(self.length))

    def __len__(self) -> int:
        return self.length


class _ObserveAfterStep(TrainerCallback):
    """Feeds a generation batch to the tracker after the optimizer step that ends it."""

    def __init__(self, trainer: SPOTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        if t._spo_pending is not None and t._step >= t._spo_pending["end"]:
            t._spo_observe()


class SPOTrainer(GRPOTrainer):
    """`GRPOTrainer` with SPO's tracker baseline and prioritised prompts (see module doc).

    `self.spo_state` is the SPOState; `self.spo_last_keys` the keys of the last draw.
    """

    def __init__(
        self, model, reward_funcs=None, args: SPOConfig | None = None, train_dataset=None, **kwargs
    ):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = SPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-SPO")
        if not isinstance(args, SPOConfig):
            raise ValueError(
                f"SPOTrainer needs an SPOConfig (a GRPOConfig with one completion per prompt); "
                f"got {type(args).__name__}"
            )
        if not isinstance(train_dataset, Dataset):
            raise ValueError(
                "SPOTrainer draws prompts by index: train_dataset must be a map-style "
                f"datasets.Dataset; got {type(train_dataset).__name__}"
            )
        if args.generation_batch_size > len(train_dataset):
            raise ValueError(
                f"SPOTrainer draws {args.generation_batch_size} distinct prompts per generation "
                f"but train_dataset has {len(train_dataset)}; lower the batch size or add prompts"
            )
        super().__init__(model, reward_funcs, args=args, train_dataset=train_dataset, **kwargs)
        self.spo_state, self._spo_row_of_key = self._spo_build_state()
        self._spo_rows = self._remove_unused_columns(self.train_dataset, description="training")
        self._spo_pending: dict | None = None
        self._spo_rewards_per_func: torch.Tensor | None = None
        self.spo_last_keys: list = []
        self.add_callback(_ObserveAfterStep(self))

    def _spo_build_state(self) -> tuple[SPOState, dict | None]:
        args, ds = self.args, self.train_dataset
        w = self.reward_weights.double()
        lo, hi = float(w.clamp(max=0).sum()), float(w.clamp(min=0).sum())
        if args.spo_key_column is None:
            state, row_of_key = args.make_spo_state(len(ds), (lo, hi)), None
        else:
            if args.spo_key_column not in ds.column_names:
                raise ValueError(
                    f"SPOConfig spo_key_column={args.spo_key_column!r} is not a train_dataset "
                    f"column; columns: {ds.column_names}"
                )
            keys = ds[args.spo_key_column]
            row_of_key = {k: i for i, k in enumerate(keys)}
            if len(row_of_key) != len(keys):
                raise ValueError(f"train_dataset column {args.spo_key_column!r} has repeated keys")
            state = args.make_spo_state(keys, (lo, hi))
        if args.spo_init_values and state.load_values(args.spo_init_values) == 0:
            raise ValueError(
                f"values file {args.spo_init_values!r} shares no prompt id with the train "
                "dataset keys; rerun `spo init-values` for these prompts"
            )
        return state, row_of_key

    # -------------------------------------------------------------- prompt draw
    def _get_train_sampler(self, dataset=None) -> Sampler:  # override: the index clock
        trl_sampler = super()._get_train_sampler(dataset)
        n = len(dataset if dataset is not None else self.train_dataset)
        return _GenerationClock(n, len(trl_sampler))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # override
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._spo_rewards_per_func = rewards_per_func  # (N_global, F), gathered by TRL
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):  # override: draw, then SPO advantages
        if not self.model.training:  # evaluation stays TRL's
            return super()._generate_and_score_completions(inputs)
        if self._spo_pending is not None:  # a generation whose last optimizer step is pending
            self._spo_observe()
        n_local, rank = len(inputs), self.accelerator.process_index
        keys = self.spo_state.select(n_local * self.accelerator.num_processes)
        rows = keys if self._spo_row_of_key is None else [self._spo_row_of_key[k] for k in keys]
        self.spo_last_keys = keys
        local = rows[rank * n_local : (rank + 1) * n_local]
        out = super()._generate_and_score_completions([self._spo_rows[int(i)] for i in local])

        rpf = self._spo_rewards_per_func.detach()
        reward_B = (rpf * self.reward_weights.to(rpf.device)).nansum(dim=1).cpu()
        scored = ~torch.isnan(rpf).all(dim=1).cpu()
        scored_keys = [k for k, ok in zip(keys, scored.tolist(), strict=True) if ok]
        adv_B = torch.zeros(len(keys), dtype=torch.float32)
        try:
            adv_B[scored] = self.spo_state.advantages(
                reward_B[scored], scored_keys, normalize=self.args.spo_normalize
            ).float()
        except ValueError as e:
            raise ValueError(
                f"{e}: SPOConfig.spo_reward_range={list(self.spo_state.reward_range)} must hold "
                "the weighted reward sum; set it to the sum's range"
            ) from None
        local_adv = adv_B[rank * n_local : (rank + 1) * n_local]
        out["advantages"] = local_adv.to(out["advantages"].device, out["advantages"].dtype)
        logged = self._logs["advantages"]  # TRL logged its group-of-one advantages (all 0)
        for _ in range(min(len(keys), len(logged))):
            logged.pop()
        logged.extend(adv_B.tolist())
        zero_std = self._metrics["train"].get("frac_reward_zero_std")
        if zero_std:  # always 1 with groups of one: not a statement about SPO
            zero_std.pop()
            if not zero_std:
                del self._metrics["train"]["frac_reward_zero_std"]

        generate_every = self.args.steps_per_generation * self.num_iterations
        self._spo_pending = {
            "keys": scored_keys,
            "rewards": reward_B[scored].numpy(),
            "end": (self._step // generate_every + 1) * generate_every,
            "drift": self._spo_drift_sample(out) if self.args.spo_rho == "drift" else None,
        }
        return out

    # ----------------------------------------------------------- tracker update
    def _spo_drift_sample(self, out: dict) -> dict:
        """The first spo_drift_sample local sequences and their log-probs before the update."""
        m = min(self.args.spo_drift_sample, out["completion_ids"].shape[0])
        sample = {
            "ids": torch.cat([out["prompt_ids"][:m], out["completion_ids"][:m]], dim=1),
            "mask": torch.cat([out["prompt_mask"][:m], out["completion_mask"][:m]], dim=1),
            "completion_mask": out["completion_mask"][:m],
        }
        sample["logp"] = self._spo_logp(sample)
        return sample

    def _spo_logp(self, sample: dict) -> torch.Tensor:
        with torch.no_grad():
            logp, _, _ = self._get_per_token_logps_and_entropies(
                self.model, sample["ids"], sample["mask"], sample["completion_mask"].shape[1]
            )
        return logp.float()

    def _spo_observe(self) -> None:
        pending, self._spo_pending = self._spo_pending, None
        metrics = self._metrics["train"]
        kwargs = {}
        if self.args.spo_rho == "constant":
            kwargs["rho"] = self.args.spo_rho_constant
        else:
            s = pending["drift"]
            d = policy_drift(self._spo_logp(s), s["logp"], s["completion_mask"]).reshape(1)
            step_drift = float(self.accelerator.gather(d.to(self.accelerator.device)).mean())
            self.spo_state.advance(step_drift)
            metrics["spo/step_drift"].append(step_drift)
        self.spo_state.observe(
            pending["keys"], pending["rewards"], step=self.state.global_step, **kwargs
        )
        for name, value in self.spo_state.metrics().items():
            metrics[f"spo/{name}"].append(value)

    # ------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):  # override: + checkpoint-N/spo/
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            from spo.train.checkpoint import write_state

            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            path = Path(self._get_output_dir(trial=trial)) / folder / "spo"
            path.mkdir(parents=True, exist_ok=True)
            write_state(path, {"spo": self.spo_state.state_dict(), **self._spo_pending_state()})

    def _spo_pending_state(self) -> dict:
        """A generation not yet absorbed (only when it spans several optimizer steps)."""
        p = self._spo_pending
        if p is None:
            return {}
        state = {"pending": {"keys": list(p["keys"]), "rewards": np.asarray(p["rewards"])}}
        if p["drift"] is not None:
            state["pending"]["drift"] = {k: v.cpu().numpy() for k, v in p["drift"].items()}
        return state

    def _load_optimizer_and_scheduler(self, checkpoint):  # override: + checkpoint-N/spo/
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        from spo.train.checkpoint import read_state

        path = Path(checkpoint) / "spo"
        if not (path / "state.json").is_file():
            raise ValueError(
                f"checkpoint {checkpoint} has no SPO state (spo/state.json): it was not written "
                "by SPOTrainer; resume from an SPOTrainer checkpoint or start without resuming"
            )
        state = read_state(path)
        restored = self.args.make_spo_state(0)
        restored.load_state_dict(state["spo"])
        if restored.keys != self.spo_state.keys:
            raise ValueError(
                f"checkpoint {checkpoint} tracks {len(restored)} prompt keys that differ from "
                f"this train_dataset's {len(self.spo_state)}; resume with the same dataset"
            )
        self.spo_state = restored
        p = state.get("pending")
        if p is not None:  # absorbed before the next draw (TRL regenerates after a resume)
            drift = p.get("drift")
            if drift is not None:
                drift = {
                    k: torch.from_numpy(v).to(self.accelerator.device) for k, v in drift.items()
                }
            self._spo_pending = {
                "keys": list(p["keys"]),
                "rewards": p["rewards"],
                "end": 0,
                "drift": drift,
            }
