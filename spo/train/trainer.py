"""The training loop: SPO and the group baselines in one linear harness.

One step (design.md):
    idx      = sampler.draw(tracker.values(), prompts_per_step)    # prioritised for SPO
    rollouts = engine.generate(prompts[idx] × responses_per_prompt, seed=f(seed, step))
    reward   = reward_pool(rollouts)                                # isolated, time-limited
    adv      = ADVANTAGES[algo](reward, baseline=tracker.value(idx) (pre-update), groups)
    for mini-batch: optimizer.step(ppo_clip_loss(...))
    rho      = estimator.step(idx, policy before/after)             # drift | replay | constant
    tracker.update(idx, reward, rho)                                 # after the policy update

The algorithm is data (`ALGORITHMS`): GRPO differs from SPO only by responses per prompt,
advantage function and sampler mode. Fairness is structural: every algorithm generates
`samples_per_step` responses and takes `optim.updates_per_step` optimizer steps per step.
`algo=critic` reads its baseline from a learned V(x) instead of the tracker (before the
update) and fits V after it (`spo.train.critic`).

Resume is lossless: generation is seeded from (seed, step), the sampler RNG, tracker, the
active ρ estimator's state (drift clock or replay store; `spo.train.forgetting`), optimizer
(fp32 masters) and counters are checkpointed, so N straight steps and k steps + resume to N
draw the same prompts and give the same tracker state.

With `rollout.mode=async` or multi-turn tool use (`rollout.max_turns > 1`) the first two
lines of the step become `batch = scheduler.next_batch(version)`: finished samples from a
pool kept in flight (`spo.rollout.scheduler`, docs/async.md), whose in-flight samples are
checkpointed too. The rest of the step is the same.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from spo.algo import ADVANTAGES, SPOState
from spo.algo.algorithms import ALGORITHMS
from spo.algo.values import load_values
from spo.policy.batch import pack, pad_logp
from spo.policy.models import load_policy
from spo.policy.weights import is_peft
from spo.rollout.factory import make_engine
from spo.rollout.scheduler import RolloutScheduler
from spo.tasks import load_task
from spo.tasks.rewards import RewardPool
from spo.train import TrainError
from spo.train import checkpoint as ckpt
from spo.train.config import (
    TrainConfig,
    chat_kwargs,
    task_kwargs,
    to_dict,
    to_yaml,
    tool_episodes,
)
from spo.train.critic import make_critic
from spo.train.diagnostics import write_diagnostics
from spo.train.forgetting import make_estimator
from spo.train.heap import TRIM_EVERY, trim_heap
from spo.train.logging import RunLogger, reset_logs, sample_positions, sample_row
from spo.train.optim import optimizer_from_config
from spo.train.step_metrics import StepRecord, StepTimes, step_metrics
from spo.train.update import LocalUpdate


def _step_seed(seed: int, step: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, step, purpose)."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0])


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    """Owns the policy, task, tracker, sampler and run directory of one training run."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.algo = ALGORITHMS[cfg.algo]
        self.run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
        self.ckpt_root = self.run_dir / "checkpoints"
        self._check_run_dir()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

        resume_from = self._resume_checkpoint() if cfg.resume else None
        self.task = load_task(**task_kwargs(cfg))
        if not self.task.train:
            raise TrainError(f"task {cfg.task.name!r} has no training prompts")
        print(self.task.summary(), flush=True)  # prompts used, duplicates, rows skipped
        for warning in self.task.info.get("warnings", ()):
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        if cfg.eval_every and not self.task.test:
            raise TrainError(
                f"eval_every={cfg.eval_every} but task {cfg.task.name!r} has no held-out "
                "prompts; give task.test_path or task.test_size, or set eval_every=0"
            )
        self.train_examples = self.task.train
        self.eval_examples = self.task.test[: cfg.eval_size]

        model_source = str(resume_from) if resume_from else cfg.model.path
        group = cfg.cluster.trainer_workers > 1  # the update runs in Ray trainer ranks
        self.model, self.tokenizer = load_policy(
            model_source, dtype=cfg.model.dtype, device="cpu" if group else cfg.model.device
        )
        if cfg.model.lora.r and not is_peft(self.model):  # a resumed LoRA run loads its adapter
            from spo.policy.lora import apply_lora

            self.model = apply_lora(self.model, cfg.model.lora, seed=cfg.seed)
        self.prompt_tokens = self._encode([ex.prompt for ex in self.train_examples])
        self.engine = make_engine(
            cfg,
            self.model,
            self.tokenizer,
            model_path=cfg.model.path,
            lora_dir=str(self.run_dir / "engine-lora"),
        )
        self.rewards = RewardPool(
            self.task.verifier, timeout=cfg.reward.timeout, workers=cfg.reward.workers
        )
        if group:  # ranks hold policy + optimizer; self.model is the driver's CPU copy
            from spo.train.distributed import TrainerGroup

            self.optimizer = self.updater = TrainerGroup(cfg, model_source, self.model)
        else:
            self.optimizer = optimizer_from_config(self.model.parameters(), cfg)
            self.updater = LocalUpdate(self.model, self.optimizer, cfg)

        t = cfg.tracker
        mode = self.algo.sampler if cfg.sampler.mode == "auto" else cfg.sampler.mode
        # Tracker, sampler and drift clock live in SPOState, keyed by prompt index
        # (the same object the TRL / verl integrations use).
        self.spo = SPOState(
            len(self.train_examples),
            rho_min=t.rho_min,
            rho_max=t.rho_max,
            d_half=t.d_half,
            prior_value=t.prior_value,
            prior_count=t.prior_count,
            eps=cfg.sampler.eps,
            seed=cfg.seed,
            sampler=mode,
        )
        # ρ: only the configured estimator is built (and checkpointed), spo.train.forgetting
        self.rho = make_estimator(
            t.rho,
            spo=self.spo,
            scorer=self.updater,
            prompt_tokens=self.prompt_tokens,
            pad_id=self.tokenizer.pad_token_id,
            rho_constant=t.rho_constant,
            drift_sample=t.drift_sample,
        )
        self.episodes = tool_episodes(cfg, self.tokenizer)  # None without tool use
        # algo=critic: a learned V(x) replaces the tracker as baseline (spo.train.critic)
        self.critic = None
        if self.algo.critic:
            pad_id = self.tokenizer.pad_token_id
            self.critic = make_critic(cfg, self.model, self.prompt_tokens, pad_id)
        self.scheduler = self._build_scheduler()
        self.step = 0
        self.samples_seen = 0
        # samples drawn per training prompt (a GRPO group counts its responses); None when
        # resumed from a checkpoint written before visits were counted
        self.visits: np.ndarray | None = np.zeros(len(self.train_examples), dtype=np.int64)
        self.train_seconds = 0.0
        self._stop_requested = False

        if resume_from is not None:
            self._load_state(resume_from)
        elif t.init == "offline":
            self._init_offline(t.offline_path)
        self.engine.sync_weights(self.model)  # engines holding their own copy start equal
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        reset_logs(self.run_dir, self.step if resume_from is not None else None)
        self.logger = RunLogger(
            self.run_dir,
            tensorboard=cfg.log.tensorboard,
            wandb=cfg.log.wandb,
            config=to_dict(cfg),
            constant_reward_warning=cfg.log.constant_reward_warning,
        )
        self._samples: list[dict] = []  # this step's samples.jsonl rows

    # The SPOState pieces under the names the checkpoint and metrics code use.
    @property
    def tracker(self):
        return self.spo.tracker

    @property
    def sampler(self):
        return self.spo.sampler

    @property
    def drift(self):
        return self.spo.drift

    # ---------------------------------------------------------------- set-up helpers
    def _check_run_dir(self) -> None:
        existing = ckpt.list_checkpoints(self.ckpt_root)
        if existing and not self.cfg.resume:
            raise TrainError(
                f"run_dir {str(self.run_dir)!r} already holds checkpoints; pass resume=true to "
                "continue it or choose another run_dir (nothing was overwritten)"
            )
        if self.cfg.resume and not existing:
            raise TrainError(
                f"resume=true but {str(self.ckpt_root)!r} has no complete "
                "checkpoint; start without resume or point run_dir at a run"
            )
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise TrainError(
                f"run_dir {str(self.run_dir)!r} is not writable ({e.strerror}); "
                "choose another run_dir"
            ) from None

    def _resume_checkpoint(self) -> Path:
        """Newest checkpoint that verifies against its manifest; older ones are fallbacks
        (one warning line per damaged one, nothing deleted; none intact -> one-line error)."""
        return ckpt.newest_intact(self.ckpt_root)

    def _encode(self, prompts: list[str]) -> list[list[int]]:
        from spo.policy.models import encode_prompts

        return encode_prompts(self.tokenizer, prompts, **chat_kwargs(self.cfg, self.task))

    def _build_scheduler(self) -> RolloutScheduler | None:
        """The in-flight pool for async / multi-turn rollouts; None = the synchronous path."""
        cfg, r = self.cfg, self.cfg.rollout
        if r.mode == "sync" and r.max_turns == 1:
            return None
        env = messages = None
        if self.episodes is not None:
            env, messages = self.episodes.env, self.episodes.messages
        examples = self.train_examples

        def score(samples):
            return self.rewards(
                [s.final_text for s in samples], [examples[s.prompt_idx] for s in samples]
            )

        def draw(k, eligible):
            candidates = None if eligible is None else np.flatnonzero(eligible)
            return np.asarray(self.spo.select(k, candidates), dtype=np.int64)

        from concurrent.futures import ThreadPoolExecutor

        return RolloutScheduler(
            engine=self.engine,
            prompt_tokens=self.prompt_tokens,
            draw=draw,
            score=score,
            samples_per_step=cfg.samples_per_step,
            group_size=cfg.group_size if self.algo.grouped else 1,
            mode=r.mode,
            in_flight=r.in_flight,
            max_staleness=r.max_staleness,
            staleness=r.staleness,
            batch_size=r.batch_size,
            max_turns=r.max_turns,
            env=env,
            messages=messages,
            tool_timeout=r.tool_timeout + 30.0,  # backstop; the sandbox kills at tool_timeout
            executor=ThreadPoolExecutor(r.tool_workers, thread_name_prefix="spo-tool"),
            seed=lambda call: _step_seed(cfg.seed, call, 1),
        )

    def _init_offline(self, path: str) -> None:
        prompt_ids = [ex.id for ex in self.train_examples]
        prompt_idx, successes, trials = load_values(path, prompt_ids)
        if len(prompt_idx) == 0:
            raise TrainError(
                f"values file {path!r} shares no prompt id with task "
                f"{self.cfg.task.name!r}; rerun `spo init-values` for this task"
            )
        # counts as a visit at step 0: the first real visit gets the drift since (SPOState)
        self.spo.init_from_counts(prompt_idx, successes, trials)
        missing = len(prompt_ids) - len(prompt_idx)
        if missing:
            print(
                f"offline init: {missing} of {len(prompt_ids)} prompts not in {path}; they start "
                "at the prior"
            )

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "train_seconds": self.train_seconds,
            "prompt_ids": np.array([ex.id for ex in self.train_examples]),
            **({"visits": self.visits} if self.visits is not None else {}),
            "tracker": self.tracker.state_dict(),
            **({self.rho.key: self.rho.state_dict()} if self.rho.key else {}),
            **({self.critic.key: self.critic.state_dict()} if self.critic else {}),
            "sampler": self.sampler.state_dict(),
            **({"rollout": self.scheduler.state_dict()} if self.scheduler else {}),
        }

    def save_checkpoint(self) -> Path:
        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            ckpt.write_state(tmp, self._state())
            (tmp / "config.yaml").write_text(to_yaml(self.cfg))
            # Tracker diagnostics (histograms, frontier, sampler ESS, parquet export) ride
            # inside the atomic checkpoint; cheap: no model calls.
            write_diagnostics(tmp, self.run_dir, prompts=[ex.prompt for ex in self.train_examples])

        return ckpt.save_checkpoint(
            self.ckpt_root, self.step, write, keep=self.cfg.keep_checkpoints
        )

    def _load_state(self, path: Path) -> None:
        state = ckpt.read_state(path)
        prompt_ids = [str(x) for x in state["prompt_ids"]]
        if prompt_ids != [ex.id for ex in self.train_examples]:
            raise TrainError(
                f"checkpoint {path} was trained on different prompts than task "
                f"{self.cfg.task.name!r} gives now; resume with the run's task "
                "settings (see its config.yaml)"
            )
        try:
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
            self.tracker.load_state_dict(state["tracker"])
            if self.rho.key in state:  # absent: a run resumed under another tracker.rho
                self.rho.load_state_dict(state[self.rho.key])
            if self.critic is not None:
                self.critic.load_state_dict(state[self.critic.key])
            self.sampler.load_state_dict(state["sampler"])
            if self.scheduler is not None and "rollout" in state:
                self.scheduler.load_state_dict(state["rollout"])
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise TrainError(
                f"checkpoint {path} does not match this run "
                f"({e.__class__.__name__}: {str(e).splitlines()[0]})"
            ) from None
        self.step = int(state["step"])
        self.samples_seen = int(state["samples_seen"])
        self.train_seconds = float(state["train_seconds"])
        visits = state.get("visits")
        self.visits = None if visits is None else np.asarray(visits, dtype=np.int64).copy()
        if self.visits is not None and self.visits.shape != (len(self.train_examples),):
            raise TrainError(
                f"checkpoint {path} counts visits of {self.visits.size} prompts, the task has "
                f"{len(self.train_examples)}; resume with the run's task settings"
            )

    # ------------------------------------------------------------------- the step
    def train_step(self) -> dict[str, float]:
        cfg, step = self.cfg, self.step + 1
        t_start = time.perf_counter()
        group = cfg.group_size if self.algo.grouped else 1
        prompts_per_step = cfg.samples_per_step // group
        if prompts_per_step > len(self.train_examples):
            raise TrainError(
                f"{prompts_per_step} distinct prompts per step but the task has "
                f"only {len(self.train_examples)}; raise task.train_size or lower "
                "samples_per_step"
            )
        if self.scheduler is None:  # synchronous: this step's batch, generated now
            prompt_idx = np.asarray(self.spo.select(prompts_per_step), dtype=np.int64)
            prompt_idx_B = np.repeat(prompt_idx, group)
            group_id_B = torch.from_numpy(np.repeat(np.arange(prompts_per_step), group))
            rollouts = self.engine.generate(
                [self.prompt_tokens[i] for i in prompt_idx_B], seed=_step_seed(cfg.seed, step, 0)
            )
            t_gen = time.perf_counter()
            scored = self.rewards(rollouts.texts, [self.train_examples[i] for i in prompt_idx_B])
            loss_mask, stale_B, rollout_stats, transcripts = None, None, {}, None
        else:  # the first finished samples of the in-flight pool, already scored
            fb = self.scheduler.next_batch(self.step)
            prompt_idx_B, group_id_B, rollouts, scored = (
                fb.prompt_idx_B,
                fb.group_id_B,
                fb.rollouts,
                fb.reward,
            )
            prompt_idx = np.array(list(dict.fromkeys(prompt_idx_B.tolist())), dtype=np.int64)
            loss_mask, stale_B, rollout_stats = fb.loss_mask, fb.stale_B, fb.stats
            transcripts = None
            if cfg.rollout.max_turns > 1:
                transcripts = [s.transcript(cfg.rollout.tool_role) for s in fb.samples]
            t_gen = time.perf_counter()
        self.last_prompt_idx = prompt_idx
        reward_B = torch.from_numpy(np.asarray(scored.reward_B, dtype=np.float32))
        t_score = time.perf_counter()

        # Baseline is read BEFORE this step's rewards are absorbed (unbiased gradient).
        if cfg.baseline == "none" and self.algo.without_baseline:
            adv_name, baseline_B = self.algo.without_baseline, torch.zeros_like(reward_B)
        elif self.critic is not None:  # V₋₁(x): before the policy update and the critic's fit
            adv_name, baseline_B = self.algo.advantage, self.critic.read(prompt_idx_B)
        else:
            adv_name = self.algo.advantage
            baseline_B = torch.from_numpy(self.spo.baseline(prompt_idx_B).astype(np.float32))
        adv_B = ADVANTAGES[adv_name](reward_B, baseline_B=baseline_B, group_id_B=group_id_B)
        self._keep_samples(  # v̂ (or V) read before the update
            step,
            prompt_idx_B,
            rollouts.texts,
            reward_B,
            adv_B,
            transcripts,
            value_B=baseline_B if self.critic else None,
        )

        batch = pack(
            rollouts.prompt_tokens,
            rollouts.completion_ids,
            pad_id=self.tokenizer.pad_token_id,
            loss_mask=loss_mask,
        )
        stale_B = stale_B if stale_B is not None and stale_B.any() else None
        train_stats, old_logp_BT = self._update(batch, adv_B, rollouts, stale_B, step)
        self.engine.sync_weights(self.model)
        t_train = time.perf_counter()

        # The tracker as the step used it (v̂₋₁, N), read before it absorbs the rewards.
        value_P, count_P = self.tracker.value(prompt_idx), self.tracker.count(prompt_idx)
        first_visit_B = ~self.tracker.seen(prompt_idx_B)
        rho_kw, rho_stats = self.rho.step(prompt_idx_B, batch, rollouts, old_logp_BT)
        rho_B = self.spo.observe(prompt_idx_B, reward_B, step=step, **rho_kw)
        if step % TRIM_EVERY == 0:  # freed activations back to the OS (spo.train.heap)
            trim_heap()
        critic_stats = self.critic.fit(reward_B) if self.critic else {}  # after V₋₁ was used
        t_end = time.perf_counter()

        self.step = step
        self.samples_seen += len(prompt_idx_B)
        if self.visits is not None:
            np.add.at(self.visits, np.asarray(prompt_idx_B, dtype=np.int64), 1)
        self.train_seconds += t_end - t_start
        record = StepRecord(
            reward_B=reward_B,
            baseline_B=baseline_B,
            group_id_B=group_id_B,
            prompt_idx=prompt_idx,
            scored=scored,
            rollouts=rollouts,
            times=StepTimes(t_start, t_gen, t_score, t_train, t_end),
            advantage=adv_name,
            value_P=value_P,
            count_P=count_P,
            first_visit_B=first_visit_B,
            rho_B=rho_B,
            divergence_B=self.spo.last_divergence,
            train_stats=train_stats,
            extra_stats={**rho_stats, **rollout_stats, **critic_stats},
        )
        return step_metrics(
            record,
            self.tracker,
            grouped=self.algo.grouped,
            samples_seen=self.samples_seen,
            wall_seconds=self.train_seconds,
        )

    def _update(
        self, batch, adv_B: torch.Tensor, rollouts, stale_B: torch.Tensor | None, step: int
    ) -> tuple[dict[str, float], torch.Tensor]:
        """PPO-clip updates (`spo.train.update.ppo_update`, here or in the trainer group);
        returns stats and the pre-update log-probs (needed by the drift/replay estimators).
        Behaviour log-probs go along for stale async rows and loss.tis_cap. Mini-batches
        are a shuffle seeded by (seed, step): resume draws the same ones."""
        behaviour_logp_BT = None
        if self.cfg.loss.tis_cap or stale_B is not None:
            behaviour_logp_BT = pad_logp(rollouts.logp, batch.completion_mask_BT.shape[1])
        shuffle_seed = _step_seed(self.cfg.seed, step, 2)
        return self.updater.update(
            batch, adv_B, behaviour_logp_BT, stale_B, shuffle_seed=shuffle_seed
        )

    # ---------------------------------------------------------------------- run
    def _on_signal(self, signum, _frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step, checkpointing, exiting")

    def _keep_samples(
        self,
        step: int,
        prompt_idx_B,
        texts: list[str],
        reward_B,
        adv_B,
        transcripts=None,
        value_B=None,
    ) -> None:
        """samples.jsonl rows of this step at evenly spaced batch positions, with v̂ read
        now (before the tracker absorbs this step), or the given `value_B` (the critic's
        V₋₁); written once the step is logged. `transcripts`: multi-turn episodes' turns
        and tool messages, per sample (or None)."""
        rows = sample_positions(len(texts), self.cfg.log.samples_per_step)
        if value_B is not None:
            value_R = [float(value_B[i]) for i in rows]
        else:
            value_R = self.spo.baseline(np.asarray(prompt_idx_B)[rows]) if rows else []
        self._samples = [
            sample_row(
                step,
                "train",
                self.train_examples[int(prompt_idx_B[i])],
                texts[i],
                reward_B[i],
                advantage=adv_B[i],
                value=v,
                transcript=None if transcripts is None else transcripts[i],
            )
            for i, v in zip(rows, value_R, strict=True)
        ]

    def evaluate(self, *, k: int = 1, tools: bool = True) -> dict[str, float]:
        """Held-out metrics; a few of the responses go to samples.jsonl (split "eval").
        With tool use (`rollout.max_turns > 1`) every response is an episode with the tool
        (tools/* metrics too); `tools=False` answers in one turn without it (reference)."""
        from spo.eval import evaluate_with_samples

        metrics, samples = evaluate_with_samples(
            self.engine,  # the configured engine (Ray actors too), not the driver's copy
            self.tokenizer,
            self.task,
            self.eval_examples,
            k=k,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            temperature=self.cfg.rollout.temperature or 1.0,
            top_p=self.cfg.rollout.top_p,
            **chat_kwargs(self.cfg, self.task),
            reward_pool=self.rewards,
            seed=self.cfg.seed,
            episodes=self.episodes if tools else None,
        )
        rows = sample_positions(len(samples.texts_EK), self.cfg.log.samples_per_step)
        self.logger.log_samples(
            [
                sample_row(
                    self.step,
                    "eval",
                    self.eval_examples[i],
                    samples.texts_EK[i][0],
                    samples.reward_EK[i, 0],
                    transcript=None
                    if samples.episodes_EK is None
                    else samples.episodes_EK[i][0].transcript(self.cfg.rollout.tool_role),
                )
                for i in rows
                if samples.texts_EK[i]
            ]
        )
        return metrics

    def run(self, *, progress=None) -> dict[str, float]:
        """Train until cfg.steps (or a stop signal); checkpoint periodically and at the end."""
        cfg = self.cfg
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        last: dict[str, float] = {}
        try:
            bar = None
            if cfg.log.progress and progress is None:
                from tqdm.auto import tqdm

                bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.algo}", unit="step")
            if cfg.eval_every and cfg.eval_start and self.step == 0:
                base = {f"eval/{k}": v for k, v in self.evaluate(k=cfg.eval_k).items()}
                self.logger.log(0, {"samples": 0, "wall_seconds": 0.0, **base})
            while self.step < cfg.steps and not self._stop_requested:
                last = self.train_step()
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                    last.update({f"eval/{k}": v for k, v in self.evaluate(k=cfg.eval_k).items()})
                self.logger.log(self.step, last)
                self.logger.log_samples(self._samples)
                if bar is not None:
                    bar.set_postfix(
                        reward=f"{last['reward/mean']:.2f}", s_per_step=f"{last['time/step']:.1f}"
                    )
                    bar.update(1)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
            if self._stop_requested and self.step % cfg.checkpoint_every and self.step:
                self.save_checkpoint()
            if bar is not None:
                bar.close()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return last

    def close(self) -> None:
        if hasattr(self.engine, "close"):
            self.engine.close()
        if hasattr(self.updater, "close"):
            self.updater.close()
        if self.scheduler is not None:
            self.scheduler.close()
        self.rewards.close()
        self.logger.close()
