"""`spo eval MODEL_OR_RUN`: held-out accuracy of a model, a checkpoint or every checkpoint
of a run (library: `spo.eval`), and `--calibration n` (tracker v̂ vs fresh pass rates).
Every model is sampled through the configured rollout engine (`PolicyEngines`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from spo.eval import (
    budgets,
    evaluate_examples,
    generate_samples,
    level_name,
    level_sort_key,
    split_level_key,
)

EMBEDDED_NAMES = ("embedded:smollm2-135m-instruct", "embedded", "default")


def calibrate(
    policy,
    tokenizer,
    task,
    state: dict,
    *,
    samples: int,
    prompts: int = 64,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    top_p: float = 1.0,
    system_prompt: str | None = None,
    fewshot=(),
    reward_pool,
    seed: int = 0,
    batch_size: int = 64,
    episodes=None,
) -> dict:
    """Tracker v̂ of a checkpoint `state` vs a fresh pass rate of `model` on training prompts.

    Draws `prompts` training prompts uniformly (seeded) among those the tracker has updated
    (all prompts if none), samples `samples` responses each at the rollout settings with
    `policy` (an engine or a model, as in `spo.eval.generate_samples`), and returns
    `spo.train.diagnostics.calibration(v̂, rewards, reference=mean v̂ over the pool)` plus
    the step, the prompt ids, v̂, fresh rates and every fresh reward. With tool use
    (`episodes`) every fresh sample is a whole episode, as in training.
    """
    from spo.train.checkpoint import CheckpointError
    from spo.train.diagnostics import calibration, tracker_arrays

    arr = tracker_arrays(state["tracker"])
    by_id = {ex.id: ex for ex in task.train}
    ids = [str(x) for x in state["prompt_ids"]]
    known = np.array([pid in by_id for pid in ids])
    if not known.any():
        raise CheckpointError(
            "no prompt of the checkpoint's tracker is in the task's training "
            "set; run `spo eval` with the run's own task settings"
        )
    pool_P = np.flatnonzero(known & (arr["last_step"] >= 0))
    if pool_P.size == 0:
        pool_P = np.flatnonzero(known)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool_P, size=min(prompts, pool_P.size), replace=False))
    examples = [by_id[ids[i]] for i in chosen]
    s = generate_samples(
        policy,
        tokenizer,
        task,
        examples,
        k=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        system_prompt=system_prompt,
        fewshot=fewshot,
        reward_pool=reward_pool,
        episodes=episodes,
        seed=seed + 1,
        greedy=False,
        batch_size=batch_size,
    )
    # the reference predictor: the tracker's own mean v̂ over the prompts it has seen,
    # known before any fresh sample is drawn (see spo.train.diagnostics)
    out = calibration(
        arr["value"][chosen], s.reward_EK, reference=float(arr["value"][pool_P].mean())
    )
    out["step"] = int(state.get("step", 0))
    out["prompt_ids"] = [ids[i] for i in chosen]
    out["value"] = [float(x) for x in arr["value"][chosen]]
    out["rate"] = [float(x) for x in s.reward_EK.mean(1)]
    out["reward"] = [[float(x) for x in row] for row in s.reward_EK]  # recompute anything
    return out


# ----------------------------------------------------------------------------- CLI
EPILOG = """\
MODEL_OR_RUN is a Hugging Face model directory, embedded:smollm2-135m-instruct, one
checkpoint (RUN/checkpoints/step_NNNNNN) or a run directory (every checkpoint, plus the
initial model as step 0). key=value options are `spo train` options (see its --help); a
run's or checkpoint's saved config is the starting point, e.g. task.test_size=200
eval_size=200 rollout.temperature=0.6 task.name=data.jsonl; put them before --options.

examples:
  spo eval runs/demo-20260101-120000              # accuracy vs step -> RUN/eval.json
  spo eval runs/demo-20260101-120000 --calibration 8   # + v̂ vs fresh pass rates
  spo eval embedded:smollm2-135m-instruct --k 8 --out base.json
  spo eval my-model/ task.name=data.jsonl task.reward_fn=exact --k 16
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument(
        "target",
        metavar="MODEL_OR_RUN",
        help="model dir, embedded model, checkpoint dir or run dir",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides (task.*, rollout.*, eval_size, seed, ...)",
    )
    parser.add_argument("--k", type=int, default=4, help="samples per prompt (default 4)")
    parser.add_argument(
        "--out", metavar="FILE.json", help="write results here (default for a run: RUN/eval.json)"
    )
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy response")
    parser.add_argument(
        "--skip-base",
        action="store_true",
        help="run dir: do not evaluate the initial model as step 0",
    )
    parser.add_argument(
        "--calibration",
        type=int,
        default=0,
        metavar="N",
        help="also sample N responses per training prompt with the newest "
        "checkpoint and compare with the tracker's v̂",
    )
    parser.add_argument(
        "--calibration-prompts",
        type=int,
        default=64,
        metavar="M",
        help="training prompts used for --calibration (default 64)",
    )


def resolve_target(target: str) -> tuple[str, Path | str]:
    """("model" | "checkpoint" | "run", path) for what the user pointed at."""
    from spo.policy.models import ModelError

    if target in EMBEDDED_NAMES:
        return "model", target
    p = Path(target).expanduser()
    if not p.exists():
        raise ModelError(
            f"{target!r} does not exist: pass a model directory, "
            f"{EMBEDDED_NAMES[0]}, a run directory or a checkpoint directory"
        )
    if (p / "checkpoints").is_dir() or (p / "metrics.jsonl").is_file():
        return "run", p
    if (p / "state.json").is_file():
        return "checkpoint", p
    if (p / "config.json").is_file():
        return "model", p
    raise ModelError(
        f"{target!r} is neither a model directory (config.json), a checkpoint "
        "(state.json) nor a run directory (config.yaml + checkpoints/)"
    )


def _config(kind: str, path, overrides: list[str]):
    from omegaconf import OmegaConf

    from spo.train.config import ConfigError, load_config

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not key=value (e.g. task.test_size=200)")
    saved = None
    if kind == "run":
        saved = path / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"run dir {str(path)!r} has no config.yaml; is it a run directory?")
    elif kind == "checkpoint":
        saved = next(
            (c for c in (path / "config.yaml", path.parent.parent / "config.yaml") if c.is_file()),
            None,
        )
    base = OmegaConf.load(saved) if saved is not None else None
    extra = [f"model.path={path}"] if kind == "model" else []
    return load_config(None, extra + list(overrides), base=base)


def _models_to_evaluate(kind, path, cfg, skip_base: bool) -> list[dict]:
    from spo.train.checkpoint import (
        CheckpointError,
        check_one,
        intact_checkpoints,
        list_checkpoints,
        read_state,
    )

    if kind == "model":
        return [{"label": "model", "path": str(path), "step": None}]
    if kind == "checkpoint":
        check_one(path)  # damaged -> one-line CheckpointError
        ckpts = [path]
    else:  # every intact checkpoint; a damaged one is skipped with a warning line
        ckpts = intact_checkpoints(path / "checkpoints")
    if not ckpts:
        damaged = len(list_checkpoints(path / "checkpoints"))
        raise CheckpointError(
            f"run dir {str(path)!r} has no intact checkpoint ({damaged} damaged, see the "
            f"warnings above); evaluate the initial model with `spo eval {cfg.model.path}`"
            if damaged
            else f"run dir {str(path)!r} has no complete checkpoint yet; evaluate "
            f"the initial model with `spo eval {cfg.model.path}`"
        )
    out = []
    if kind == "run" and not skip_base:
        out.append(
            {
                "label": "initial",
                "path": cfg.model.path,
                "step": 0,
                "samples": 0,
                "wall_seconds": 0.0,
            }
        )
    for c in ckpts:
        state = read_state(c)
        out.append(
            {
                "label": c.name,
                "path": str(c),
                "step": int(state["step"]),
                "samples": int(state["samples_seen"]),
                "wall_seconds": float(state.get("train_seconds", 0.0)),
                "state": state,
            }
        )
    return out


def _pct(x) -> str:
    return "    -" if x is None else f"{100 * x:5.1f}"


def level_names(examples) -> dict[str, str]:
    """Difficulty label -> the task's name for that level (meta["level"]), where it has one."""
    return {
        str(ex.meta["difficulty"]): str(ex.meta["level"])
        for ex in examples
        if ex.meta.get("difficulty") is not None and ex.meta.get("level") is not None
    }


def print_table(results: list[dict], k: int, levels_named: dict[str, str] | None = None) -> None:
    """One row per evaluated model: accuracies in percent; per difficulty for the last."""
    keys = ["greedy"]
    if k > 0:
        keys += [f"avg@{k}", *(f"pass@{j}" for j in budgets(k)), f"maj@{k}", "extract_fail"]
    headers = {"extract_fail": "no-answer"}
    with_diag = any(r.get("diagnostics") for r in results)
    head = f"{'model':<14}{'step':>6}{'samples':>9}" + "".join(
        f"{headers.get(key, key):>10}" for key in keys
    )
    print(head + (f"{'frontier':>10}{'ESS%':>8}" if with_diag else ""))
    for r in results:
        m, d = r["metrics"], r.get("diagnostics") or {}
        row = f"{r['label'][:13]:<14}{_na(r.get('step')):>6}{_na(r.get('samples')):>9}"
        row += "".join(f"{_pct(m.get(key)):>10}" for key in keys)
        if with_diag:
            ess = (d.get("sampler") or {}).get("ess_fraction")
            row += f"{_pct(d.get('frontier_seen')):>10}{_pct(ess):>8}"
        print(row)
    m = results[-1]["metrics"]
    levels = sorted(
        {parts[1] for key in m if (parts := split_level_key(key)) is not None}, key=level_sort_key
    )
    if not levels:
        return
    cols = ["greedy", *([f"avg@{k}", f"pass@{k}", f"maj@{k}"] if k > 0 else [])]
    print(f"\nby difficulty ({results[-1]['label']}):")
    print(f"{'difficulty':<12}{'prompts':>8}" + "".join(f"{c:>10}" for c in cols))
    for lv in levels:
        n = int(m.get(f"n_prompts/{lv}", 0))
        name = level_name(lv)
        print(
            f"{(name + ' ' + (levels_named or {}).get(name, '')).strip():<12}{n:>8}"
            + "".join(f"{_pct(m.get(f'{c}/{lv}')):>10}" for c in cols)
        )


def print_calibration(c: dict) -> None:
    """The calibration summary lines of `spo eval --calibration` (keys of
    `spo.train.diagnostics.calibration`)."""

    def f(key: str, digits: int = 4) -> str:
        x = c.get(key)
        return "-" if x is None or x != x else f"{x:.{digits}f}"

    print(
        f"\ncalibration at step {c['step']} ({c['n_prompts']} prompts x "
        f"{c['samples_per_prompt']} fresh samples), v̂ vs the fresh outcomes:\n"
        f"  Brier {f('brier')} = reliability {f('reliability')} − resolution "
        f"{f('resolution')} + uncertainty {f('uncertainty')} (+ within-bin "
        f"{c['within_bin_variance'] - c['within_bin_covariance']:+.4f})\n"
        f"  reference (tracker mean v̂ {f('reference', 3)} for every prompt): Brier "
        f"{f('brier_reference')}, skill {f('brier_skill', 3)}\n"
        f"  discrimination: AUC {f('auc', 3)} (ceiling {f('auc_ceiling', 3)}), Spearman "
        f"{f('spearman', 3)}, Pearson {f('pearson', 3)} with the fresh pass rate\n"
        f"  ECE {f('ece')}, mean v̂ {f('value_mean', 3)} vs fresh {f('rate_mean', 3)}"
    )


def _na(x) -> str:
    return "-" if x is None else str(x)


def run(args: argparse.Namespace) -> int:
    from spo.policy.models import load_policy
    from spo.tasks import load_task
    from spo.tasks.rewards import RewardPool
    from spo.train.config import ConfigError, chat_kwargs, task_kwargs, tool_episodes
    from spo.train.diagnostics import write_json

    if args.k < 0 or args.calibration < 0 or args.calibration_prompts < 1:
        raise ConfigError("--k and --calibration must be >= 0, --calibration-prompts >= 1")
    if args.k == 0 and args.no_greedy:
        raise ConfigError("--k 0 with --no-greedy leaves nothing to evaluate")
    kind, path = resolve_target(args.target)
    if args.calibration and kind == "model":
        raise ConfigError(
            "--calibration needs a run or checkpoint directory (it compares the "
            "tracker's v̂ with fresh samples); a bare model has no tracker"
        )
    cfg = _config(kind, path, args.overrides)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    task = load_task(**task_kwargs(cfg))
    examples = task.test[: cfg.eval_size]
    if not examples:
        raise ConfigError(f"task {cfg.task.name!r} has no held-out prompts; raise task.test_size")
    todo = _models_to_evaluate(kind, path, cfg, args.skip_base)
    r = cfg.rollout
    settings = {
        "max_new_tokens": r.max_new_tokens,
        "temperature": r.temperature or 1.0,
        "top_p": r.top_p,
        **chat_kwargs(cfg, task),
        "seed": cfg.seed,
        "batch_size": r.batch_size,
    }
    print(
        f"evaluating {len(todo)} model(s) on {len(examples)} held-out prompts of "
        f"{cfg.task.name!r}: greedy{'' if not args.no_greedy else ' (off)'} + {args.k} "
        f"samples at temperature {settings['temperature']}"
    )
    results, calib = [], None
    engines = PolicyEngines(cfg)
    with (
        RewardPool(task.verifier, timeout=cfg.reward.timeout, workers=cfg.reward.workers) as pool,
        engines,
    ):
        for item in todo:
            t0 = time.perf_counter()
            model, tokenizer = load_policy(
                item["path"], dtype=cfg.model.dtype, device=cfg.model.device
            )
            engine = engines.sampling_from(model, tokenizer)
            episodes = tool_episodes(cfg, tokenizer)  # tool use: whole episodes, as in training
            metrics = evaluate_examples(
                engine,
                tokenizer,
                task,
                examples,
                k=args.k,
                reward_pool=pool,
                greedy=not args.no_greedy,
                episodes=episodes,
                **settings,
            )
            state = item.pop("state", None)
            if state is not None:
                item["diagnostics"] = _checkpoint_diagnostics(Path(item["path"]), state, task)
            item.update(metrics=metrics, seconds=time.perf_counter() - t0)
            results.append(item)
            sampled = f"  avg@{args.k} {_pct(metrics[f'avg@{args.k}']).strip()}%" if args.k else ""
            print(
                f"  {item['label']}: greedy {_pct(metrics.get('greedy')).strip()}%{sampled}"
                f"  ({item['seconds']:.0f}s)",
                flush=True,
            )
            if args.calibration and state is not None and item is todo[-1]:
                print(
                    f"calibration of {item['label']}: {args.calibration} samples x "
                    f"{args.calibration_prompts} training prompts ...",
                    flush=True,
                )
                calib = calibrate(
                    engine,
                    tokenizer,
                    task,
                    state,
                    samples=args.calibration,
                    prompts=args.calibration_prompts,
                    reward_pool=pool,
                    episodes=episodes,
                    **settings,
                )
                write_json(Path(item["path"]) / "calibration.json", calib)
            del model, tokenizer, engine
    print()
    names = level_names(examples)
    print_table(results, args.k, names)
    if calib is not None:
        print_calibration(calib)
    out = {
        "target": str(args.target),
        "kind": kind,
        "task": cfg.task.name,
        "k": args.k,
        "n_prompts": len(examples),
        "difficulty_levels": names,
        **{k: v for k, v in settings.items() if k != "seed"},
        "max_turns": cfg.rollout.max_turns,
        "seed": cfg.seed,
        "results": results,
    }
    if calib is not None:
        out["calibration"] = calib
    out_path = Path(args.out) if args.out else (path / "eval.json" if kind == "run" else None)
    if out_path is not None:
        write_json(out_path, out)
        print(f"\nwrote {out_path}")
    return 0


class PolicyEngines:
    """The run's configured rollout engine (`rollout.engine`, `cluster.*`) for each model
    `spo eval` loads. HF in this process wraps the loaded model itself (a new engine per
    model, nothing copied); an engine that holds its own copy (vLLM, Ray actors) is built
    once from `model.path` and loaded with each model's weights, as the trainer's engine
    is after every update. A context manager: leaving it stops Ray actors."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.shared = None  # the engine with its own copy of the policy, once built
        self.lora_dir = None

    def sampling_from(self, model, tokenizer):
        from spo.rollout.factory import make_engine

        cfg = self.cfg
        if cfg.rollout.engine == "hf" and cfg.cluster.mode == "local":
            return make_engine(cfg, model, tokenizer, model_path=cfg.model.path)
        if cfg.model.lora.r:  # the engine loads adapters; the initial model gets a zero one
            from spo.policy.lora import apply_lora
            from spo.policy.weights import is_peft

            if not is_peft(model):
                model = apply_lora(model, cfg.model.lora, seed=cfg.seed)
        if self.shared is None:
            import tempfile

            self.lora_dir = tempfile.TemporaryDirectory(prefix="spo-eval-lora-")
            self.shared = make_engine(
                cfg, model, tokenizer, model_path=cfg.model.path, lora_dir=self.lora_dir.name
            )
        self.shared.sync_weights(model)
        return self.shared

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if hasattr(self.shared, "close"):
            self.shared.close()
        if self.lora_dir is not None:
            self.lora_dir.cleanup()


def _checkpoint_diagnostics(ckpt: Path, state: dict, task) -> dict:
    """Tracker diagnostics of a checkpoint (written next to it if missing; no model calls)."""
    from spo.train.diagnostics import checkpoint_diagnostics, write_diagnostics

    if (ckpt / "diagnostics.json").is_file() and (ckpt / "tracker.parquet").is_file():
        return checkpoint_diagnostics(ckpt, state)
    by_id = {ex.id: ex.prompt for ex in task.train}
    ids = [str(x) for x in state["prompt_ids"]]
    prompts = [by_id.get(i, "") for i in ids] if any(i in by_id for i in ids) else None
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    try:
        return write_diagnostics(ckpt, run_dir, prompts=prompts)
    except OSError:  # a read-only checkpoint: report without writing
        return checkpoint_diagnostics(ckpt, state)
