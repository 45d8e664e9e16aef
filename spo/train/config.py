"""The one typed config tree for `spo train` (and the commands that share its parts).

Resolution order: dataclass defaults < YAML file < `a.b=c` overrides (omegaconf structured
configs, as in verl). The defaults ARE the demo: the embedded SmolLM2-135M-Instruct learning
the built-in arithmetic task with SPO on a laptop CPU. Field names equal the keyword names
of the functions they feed (`load_task(**task)`, `ppo_clip_loss(**loss)`, ...).

Every field carries a `help` string; `spo train --help` is generated from them, so the
documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from spo.algo.algorithms import ALGORITHMS


class ConfigError(ValueError):
    """A bad config value or key; the message is one line for the user."""


def _f(default: Any, help: str, choices: Any = None) -> Any:
    """A field with its help text and choices: a tuple, or a function returning one (asked
    when validating, for choices that live in a table, e.g. `ALGORITHMS`)."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class LoraConfig:
    r: int = _f(0, "LoRA rank (0 = off: full fine-tuning); peft adapters, only they train")
    alpha: float = _f(16.0, "LoRA scaling numerator (scale = alpha / r)")
    dropout: float = _f(0.0, "dropout on the LoRA input")
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        metadata={"help": "module names that get adapters", "choices": None},
    )


@dataclass
class ModelConfig:
    path: str = _f(
        "embedded:smollm2-135m-instruct",
        "local Hugging Face model directory, or the embedded default (converted once, cached)",
    )
    dtype: str = _f(
        "bfloat16",
        "weight dtype (bf16 is ~6x faster on AMX CPUs; fp32 master "
        "weights are kept by the optimizer)",
        ("bfloat16", "float32"),
    )
    device: str = _f(
        "auto",
        "where the policy trains and the HF engine samples: auto (cuda if available), "
        "cpu, cuda or cuda:N",
    )
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TaskConfig:
    name: str = _f(
        "arithmetic",
        "arithmetic | reasoning_gym:<dataset> | path to .jsonl/.parquet"
        " or a saved HF dataset dir (columns prompt, answer, optional id)",
    )
    train_size: int | None = _f(
        None,
        "training prompts (null = the task's default: every row of a file that is not held "
        "out; 256 for arithmetic / reasoning_gym)",
    )
    test_size: int | None = _f(
        None,
        "held-out prompts (null = the task's default: min(128, 10%) of a file, or all of "
        "task.test_path; 128 for arithmetic / reasoning_gym)",
    )
    seed: int = _f(0, "seed of the procedural tasks and of the train/test split")
    prompt_column: str = _f("prompt", "dataset column holding the user prompt")
    answer_column: str = _f("answer", "dataset column holding the reference answer")
    id_column: str = _f(
        "id", "optional dataset column with stable prompt ids (else a content hash)"
    )
    test_path: str | None = _f(None, "optional separate held-out file for user datasets")
    reward_fn: str | None = _f(
        None,
        "verifier: null = task default (math-verify for files), "
        "'exact', or 'pkg.module:function' / '/path/file.py:function'",
    )
    difficulty: str | None = _f(None, "built-in arithmetic difficulty mix (see docs/tasks.md)")
    system_prompt: str | None = _f(
        None, "system prompt for the chat template (null = model default)"
    )
    fewshot: Any = _f(  # noqa: RUF009 (None default; Any: a list or a path)
        None,
        "few-shot prefix before every prompt: null = the task's own (arithmetic_tool: one "
        "worked tool example), [] = none, a list of chat messages (user/assistant/tool) or "
        "conversations, or a .json/.jsonl file of them (docs/tasks.md); never trained on",
    )
    skip_bad_rows: bool = _f(
        False,
        "dataset files: skip (and count) rows without a prompt or answer and invalid JSON "
        "lines; false = stop at the first with its line number",
    )


@dataclass
class VLLMConfig:
    gpu_memory_utilization: float = _f(
        0.5, "share of GPU memory vLLM may take (the trainer shares the GPU)"
    )
    tensor_parallel_size: int = _f(1, "GPUs one vLLM engine spans")
    max_model_len: int | None = _f(None, "context length vLLM reserves (null = the model's)")
    enforce_eager: bool = _f(False, "disable CUDA graphs (faster start, slower decode)")


@dataclass
class RolloutConfig:
    engine: str = _f(
        "hf",
        "rollout engine: hf = Hugging Face in this process (CPU/GPU); vllm = vLLM on GPU "
        "(pip install 'spo-rl[vllm]')",
        ("hf", "vllm"),
    )
    max_new_tokens: int = _f(24, "maximum generated tokens per response")
    temperature: float = _f(1.0, "sampling temperature (0 = greedy)")
    top_p: float = _f(1.0, "nucleus sampling threshold")
    batch_size: int = _f(64, "sequences generated together")
    mode: str = _f(
        "sync",
        "sync = generate each step's batch and wait for all of it; async = keep a pool of "
        "samples in flight and train on the first that finish (docs/async.md)",
        ("sync", "async"),
    )
    in_flight: int | None = _f(
        None, "async: samples kept in flight, finished-untrained included (null = 2 x step)"
    )
    max_staleness: int = _f(
        1, "async: policy updates a sample may lag behind before `staleness` applies"
    )
    staleness: str = _f(
        "reweight",
        "samples staler than max_staleness: drop (re-issue the prompt) or reweight "
        "(PPO ratio against the stored behaviour log-probs)",
        ("drop", "reweight"),
    )
    max_turns: int = _f(
        1, "model turns per episode; > 1 runs ```python blocks in the sandbox (paper: 8)"
    )
    tool_timeout: float = _f(5.0, "wall-clock seconds per sandboxed tool call")
    tool_workers: int = _f(4, "tool calls run concurrently (threads driving sandbox processes)")
    tool_role: str = _f("tool", "chat role of tool messages (some templates want user)")
    tool_output_chars: int = _f(
        2048, "clip of each tool message (characters, head and tail kept): bounds the context"
    )
    vllm: VLLMConfig = field(default_factory=VLLMConfig)


@dataclass
class RewardConfig:
    timeout: float = _f(5.0, "seconds per verifier call; a timeout scores 0 and is counted")
    workers: int = _f(2, "verifier processes (0 = in-process, no isolation: debugging only)")


@dataclass
class TrackerConfig:
    init: str = _f(
        "online",
        "tracker initialisation: offline = load `spo init-values` output; "
        "online = prior, learned while training; prior = prior_value/prior_count",
        ("online", "offline", "prior"),
    )
    offline_path: str | None = _f(None, "values file written by `spo init-values` (init=offline)")
    rho: str = _f(
        "drift",
        "forgetting-factor estimator: drift (O(1)/prompt), replay (reference "
        "code: stored response per prompt), constant",
        ("drift", "replay", "constant"),
    )
    rho_constant: float = _f(0.9, "rho when rho=constant")
    rho_min: float = _f(0.875, "lower clip of rho (also sets N0 = 1/(1-rho_min))")
    rho_max: float = _f(0.96, "upper clip of rho")
    d_half: float = _f(0.06, "divergence at which rho halves: rho = 2^(-D/d_half)")
    prior_value: float = _f(0.5, "v̂ of prompts never seen")
    prior_count: float = _f(1.0, "effective count N of the prior")
    drift_sample: int = _f(16, "sequences re-scored after each step to measure drift (rho=drift)")


@dataclass
class CriticConfig:
    lr: float = _f(
        0.02,
        "algo=critic: Adam learning rate of the value head V(x) = clip(w.phi(x) + b, 0, 1); "
        "about the most V moves per Adam step",
    )
    updates_per_step: int = _f(
        4, "algo=critic: Adam steps of the value head on each batch's (prompt, reward) pairs"
    )
    init_value: float = _f(
        0.5, "algo=critic: V(x) of every prompt before the first fit, in [0, 1] (as prior_value)"
    )


@dataclass
class SamplerConfig:
    mode: str = _f(
        "auto",
        "prompt sampling: auto = the algorithm's own (SPO priority; groups and critic uniform)",
        ("auto", "priority", "uniform"),
    )
    eps: float = _f(0.05, "priority floor: w ∝ sqrt(v̂(1-v̂)) + eps")


@dataclass
class LossConfig:
    eps_low: float = _f(0.2, "PPO clip below: ratio >= 1 - eps_low")
    eps_high: float = _f(0.28, "PPO clip above (clip-higher): ratio <= 1 + eps_high")
    dual_clip: float = _f(10.0, "dual clip constant c for negative advantages")
    agg: str = _f(
        "token-mean",
        "loss aggregation",
        ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"),
    )
    tis_cap: float | None = _f(
        None,
        "truncated importance sampling cap C: weight tokens by min(exp(old_logp - "
        "behaviour_logp), C) against engine/trainer mismatch (null or 0 = off; vLLM: ~2)",
    )


ROUNDINGS = ("stochastic", "nearest")  # how masters reach the bf16 model (spo.train.optim)


@dataclass
class OptimConfig:
    lr: float = _f(2e-5, "learning rate (constant; paper: 1e-6 for 8B)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float | None = _f(1.0, "gradient clipping (null = off)")
    rounding: str = _f(
        "stochastic",
        "how fp32 master weights are rounded into the bf16 model after each update: "
        "stochastic = unbiased (small updates reach the model), nearest = round-to-nearest",
        ROUNDINGS,
    )
    updates_per_step: int = _f(1, "optimizer updates (mini-batches) per rollout batch")
    micro_batch_size: int = _f(16, "sequences per forward/backward (gradient accumulation)")


@dataclass
class ClusterConfig:
    mode: str = _f(
        "local",
        "local = everything in this process; ray = rollout workers as Ray actors "
        "(shorthand: cluster=ray)",
        ("local", "ray"),
    )
    rollout_workers: int = _f(
        1,
        "rollout shards per step (Ray: one actor each); local mode generates the same "
        "shards in turn, so results do not depend on the mode",
    )
    address: str | None = _f(
        None, "Ray cluster to join ('auto' = the one `ray start` runs; null = start one here)"
    )
    cpus_per_worker: float = _f(1.0, "CPUs reserved per rollout actor")
    gpus_per_worker: float = _f(0.0, "GPUs reserved per rollout actor (vLLM: 1)")
    trainer_workers: int = _f(
        1,
        "trainer ranks: 1 = the update runs in this process; W > 1 = a Ray actor group "
        "(torch.distributed, needs cluster=ray), micro-batch i on rank i % W",
    )
    sharding: str = _f(
        "ddp",
        "how trainer ranks hold the model: ddp = a full copy each, gradients all-reduced; "
        "fsdp = torch FSDP2, parameters and optimizer sharded per decoder layer",
        ("ddp", "fsdp"),
    )
    cpus_per_trainer: float = _f(1.0, "CPUs reserved per trainer rank (its torch threads)")
    gpus_per_trainer: int = _f(0, "GPUs per trainer rank: 0 = CPU (gloo), 1 = one GPU each (NCCL)")


@dataclass
class LogConfig:
    tensorboard: bool = _f(True, "write TensorBoard events to RUN_DIR/tb")
    wandb: bool = _f(False, "also log to Weights & Biases (if installed)")
    progress: bool = _f(True, "console progress bar")
    samples_per_step: int = _f(
        4,
        "rows written to RUN_DIR/samples.jsonl per training step and per in-training eval "
        "(prompt, completion, reward, advantage, v̂; 0 = none)",
    )
    constant_reward_warning: int = _f(
        10,
        "steps in a row with every reward 0 (or every reward 1) before one console warning "
        "(0 = never)",
    )


@dataclass
class TrainConfig:
    algo: str = _f(
        "spo", "algorithm (a row of spo.algo.algorithms.ALGORITHMS)", lambda: tuple(ALGORITHMS)
    )
    baseline: str = _f(
        "tracker",
        "SPO baseline: tracker, or none (ablation: A = r, still batch-normalised)",
        ("tracker", "none"),
    )
    steps: int = _f(20, "training steps (rollout batch + updates)")
    samples_per_step: int = _f(
        64,
        "responses per step; group algorithms use samples_per_step/group_size prompts x group_size",
    )
    group_size: int = _f(
        8,
        "responses per prompt of the group algorithms ("
        + ", ".join(name for name, a in ALGORITHMS.items() if a.grouped)
        + ")",
    )
    seed: int = _f(0, "seed of sampling, generation and initialisation")
    run_dir: str | None = _f(None, "run directory (null = runs/<algo>-<time>)")
    resume: bool = _f(False, "continue from the newest valid checkpoint in run_dir")
    checkpoint_every: int = _f(10, "steps between checkpoints (one is always written at the end)")
    keep_checkpoints: int = _f(2, "newest checkpoints kept on disk")
    eval_every: int = _f(0, "steps between held-out evaluations, and at the last step (0 = none)")
    eval_size: int = _f(128, "held-out prompts used by in-training evaluation")
    eval_k: int = _f(
        1, "sampled responses per held-out prompt in in-training eval (avg@k, pass@k, maj@k)"
    )
    eval_start: bool = _f(
        False, "with eval_every > 0, also evaluate the initial policy (logged as step 0)"
    )
    threads: int | None = _f(None, "torch CPU threads (null = all cores)")
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    log: LogConfig = field(default_factory=LogConfig)


def _one_line(e: OmegaConfBaseException) -> str:
    msg = str(e).strip().splitlines()[0]
    key = getattr(e, "full_key", None)
    return f"{key}: {msg}" if key and key not in msg else msg


def load_config(
    config_path: str | None = None, overrides: list[str] | None = None, base: dict | None = None
) -> TrainConfig:
    """Defaults < `base` (e.g. a resumed run's saved config) < YAML < `key=value` overrides."""
    try:
        cfg = OmegaConf.structured(TrainConfig)
        if base is not None:
            cfg = OmegaConf.merge(cfg, base)
        if config_path is not None:
            path = Path(config_path)
            if not path.is_file():
                raise ConfigError(f"config file {config_path!r} not found")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        for item in overrides or []:
            if item.startswith("cluster=") and "." not in item.split("=", 1)[1]:
                item = f"cluster.mode={item.split('=', 1)[1]}"  # `cluster=ray` shorthand
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value (e.g. algo=grpo)")
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad config: {_one_line(e)} (see `spo train --help`)") from None
    validate(obj)
    return obj


def _walk(obj: Any, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def field_choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The valid values of a config field (None = any), table-backed choices resolved now."""
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def validate(cfg: TrainConfig) -> None:
    """Check choices and ranges; raise ConfigError naming the key."""
    for key, f, value in _walk(cfg):
        choices = field_choices(f)
        if choices and value not in choices:
            raise ConfigError(f"{key}={value!r} is not valid; choose one of {', '.join(choices)}")
    positive = [
        "steps",
        "samples_per_step",
        "group_size",
        "rollout.max_new_tokens",
        "rollout.batch_size",
        "rollout.max_turns",
        "rollout.tool_timeout",
        "rollout.tool_workers",
        "rollout.tool_output_chars",
        "optim.updates_per_step",
        "optim.micro_batch_size",
        "checkpoint_every",
        "keep_checkpoints",
        "cluster.rollout_workers",
        "cluster.trainer_workers",
        "rollout.vllm.tensor_parallel_size",
        "eval_k",
        "critic.lr",
        "critic.updates_per_step",
    ]
    values = {k: v for k, _, v in _walk(cfg)}
    for key in positive:
        if values[key] <= 0:
            raise ConfigError(f"{key} must be > 0, got {values[key]}")
    for key in ("log.samples_per_step", "log.constant_reward_warning"):
        if values[key] < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = off), got {values[key]}")
    for key in ("task.train_size", "task.test_size"):
        if values[key] is not None and values[key] < (1 if key == "task.train_size" else 0):
            raise ConfigError(
                f"{key} must be {'> 0' if key == 'task.train_size' else '>= 0'} "
                f"(or null for the task's default), got {values[key]}"
            )
    grouped = ALGORITHMS[cfg.algo].grouped
    if grouped and cfg.samples_per_step % cfg.group_size:
        raise ConfigError(
            f"samples_per_step={cfg.samples_per_step} is not divisible by group_size="
            f"{cfg.group_size} (needed by algo={cfg.algo}); pick multiples of group_size"
        )
    if grouped and cfg.group_size < 2:
        raise ConfigError(f"group_size must be >= 2 for algo={cfg.algo}, got {cfg.group_size}")
    if cfg.task.fewshot is not None:
        from spo.tasks.base import TaskError
        from spo.tasks.fewshot import parse_fewshot

        try:
            parse_fewshot(cfg.task.fewshot)
        except TaskError as e:
            raise ConfigError(str(e)) from None
    if cfg.samples_per_step % cfg.optim.updates_per_step:
        raise ConfigError(
            f"samples_per_step={cfg.samples_per_step} is not divisible by "
            f"optim.updates_per_step={cfg.optim.updates_per_step}"
        )
    t = cfg.tracker
    if not 0 < t.rho_min <= t.rho_max < 1:
        raise ConfigError(
            f"need 0 < tracker.rho_min <= tracker.rho_max < 1, got {t.rho_min}, {t.rho_max}"
        )
    if not 0 < t.rho_constant <= 1:
        raise ConfigError(f"tracker.rho_constant must be in (0, 1], got {t.rho_constant}")
    if not 0 <= t.prior_value <= 1 or t.prior_count <= 0:
        raise ConfigError("tracker.prior_value must be in [0, 1] and tracker.prior_count > 0")
    if not 0 <= cfg.critic.init_value <= 1:
        raise ConfigError(f"critic.init_value must be in [0, 1], got {cfg.critic.init_value}")
    if t.init == "offline" and not t.offline_path:
        raise ConfigError(
            "tracker.init=offline needs tracker.offline_path=<file from `spo init-values`>"
        )
    if cfg.rollout.temperature < 0 or not 0 < cfg.rollout.top_p <= 1:
        raise ConfigError("rollout.temperature must be >= 0 and rollout.top_p in (0, 1]")
    r = cfg.rollout
    if r.max_staleness < 0 or (r.in_flight is not None and r.in_flight < cfg.samples_per_step):
        raise ConfigError(
            "rollout.max_staleness must be >= 0 and rollout.in_flight >= samples_per_step"
        )
    if r.max_turns > 1 and t.rho == "replay":
        raise ConfigError(
            "tracker.rho=replay stores single-turn responses; use tracker.rho=drift or "
            "constant with rollout.max_turns > 1"
        )
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if cfg.loss.tis_cap is not None and cfg.loss.tis_cap < 0:
        raise ConfigError(f"loss.tis_cap must be > 0 (or 0/null = off), got {cfg.loss.tis_cap}")
    lora = cfg.model.lora
    if lora.r < 0 or lora.alpha <= 0 or not 0 <= lora.dropout < 1 or not lora.target_modules:
        raise ConfigError(
            "model.lora needs r >= 0 (0 = off), alpha > 0, 0 <= dropout < 1 and "
            "at least one target module"
        )
    if cfg.cluster.cpus_per_worker < 0 or cfg.cluster.gpus_per_worker < 0:
        raise ConfigError("cluster.cpus_per_worker and cluster.gpus_per_worker must be >= 0")
    c = cfg.cluster
    if c.trainer_workers > 1 and c.mode != "ray":
        raise ConfigError(
            f"cluster.trainer_workers={c.trainer_workers} runs the trainer as Ray actors; "
            "add cluster=ray (or set cluster.trainer_workers=1)"
        )
    if c.gpus_per_trainer not in (0, 1) or c.cpus_per_trainer < 0:
        raise ConfigError(
            "cluster.gpus_per_trainer must be 0 (CPU) or 1 (one GPU per rank) and "
            "cluster.cpus_per_trainer >= 0"
        )
    if c.trainer_workers > 1 and c.sharding == "fsdp" and lora.r:
        raise ConfigError(
            "cluster.sharding=fsdp does not shard LoRA runs; use cluster.sharding=ddp "
            "(only the adapters train, the frozen base is one copy per rank)"
        )
    if cfg.reward.timeout <= 0 or cfg.reward.workers < 0:
        raise ConfigError("reward.timeout must be > 0 and reward.workers >= 0")


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: TrainConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def help_text() -> str:
    """Every option with its type, default and meaning (for `spo train --help`)."""
    lines = []
    for key, f, value in _walk(TrainConfig()):
        typ = getattr(f.type, "__name__", None) or str(f.type)
        choices = field_choices(f)
        extra = f" {{{'|'.join(choices)}}}" if choices else ""
        lines.append(f"  {key}={value!s}{extra}\n      {f.metadata['help']} [{typ}]")
    return "\n".join(lines)


def task_kwargs(cfg: TrainConfig) -> dict:
    """TaskConfig fields that `spo.tasks.load_task` takes; `system_prompt` and `fewshot`
    are not among them: they feed the chat template (`chat_kwargs`)."""
    chat = ("system_prompt", "fewshot")
    return {k: v for k, v in dataclasses.asdict(cfg.task).items() if k not in chat}


def chat_kwargs(cfg: TrainConfig, task) -> dict:
    """The one chat-prompt rule of training, evaluation and `spo init-values`: the
    `system_prompt` and `fewshot` arguments of `spo.policy.models.encode_prompts` (and of
    `spo.eval`), the config's when set, else the task's own (`Task.chat_system_prompt`,
    `Task.chat_fewshot`; a `task.fewshot` file is read here)."""
    from spo.tasks.fewshot import parse_fewshot

    own = None if cfg.task.fewshot is None else parse_fewshot(cfg.task.fewshot)
    return {
        "system_prompt": task.chat_system_prompt(cfg.task.system_prompt),
        "fewshot": task.chat_fewshot(own, tool_role=cfg.rollout.tool_role),
    }


def tool_episodes(cfg: TrainConfig, tokenizer):
    """The run's sandboxed Python tool as a `spo.rollout.multiturn.Episodes` (shared by
    training rollouts, evaluation and `spo init-values`), or None without tool use
    (`rollout.max_turns` 1). A sandbox that cannot be set up is a one-line TrainError."""
    r = cfg.rollout
    if r.max_turns <= 1:
        return None
    from spo.rollout.multiturn import python_episodes
    from spo.tools.sandbox import SandboxError
    from spo.train import TrainError

    try:
        return python_episodes(
            tokenizer,
            max_turns=r.max_turns,
            tool_role=r.tool_role,
            tool_timeout=r.tool_timeout,
            workers=r.tool_workers,
            output_chars=r.tool_output_chars,
        )
    except (SandboxError, ValueError) as e:
        raise TrainError(f"cannot run tool calls: {e}") from None
