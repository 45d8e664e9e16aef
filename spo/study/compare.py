"""`spo compare`: SPO vs GRPO (and SPO ablations) at matched samples, several seeds.

Every arm × seed is one ordinary `spo train` run in its own process (a crash in one run
never stops the study) under `OUT/runs/<arm>/seed<s>/`, so every number can be checked
with `spo eval` / `spo report` on that directory. Matching is structural: every arm gets
the same config and overrides, then only its own keys (`algo=...` or an ablation's
keys), so `steps`, `samples_per_step` and `optim.updates_per_step` are equal for all
arms (checked before anything runs); GRPO draws samples_per_step/group_size prompts ×
group_size responses. Held-out eval runs in training (`eval_every`, plus the initial
policy and the last step) with `eval_k` samples per prompt + one greedy response.

The SPO arm is the config as given. In `configs/demo.yaml` (= the defaults) that is
online tracker init: offline init (`spo init-values`, n0 = 8 samples per training prompt
= 2,048 samples for the demo's 256 prompts) costs more samples than the whole 20-step
run (1,280), so it cannot be part of a matched-samples arm. It is the ablation
`offline_init` instead, whose init samples are reported and added to its samples axis.
Ablations that would not change the SPO arm (e.g. `no_offline_init` on an online config)
are refused.

What each run leaves for the repository (checkpoints are git-ignored): config.yaml,
metrics.jsonl, diagnostics.jsonl, train.log, calibration_eval.json and run.json (status,
init samples, the final tracker diagnostics and calibration; `spo.study.runs`); the
summary, plots and page are rebuilt from those alone (`--summarize-only`, fresh clone).

Resumable: rerunning the same command skips finished runs (final checkpoint present),
resumes interrupted ones (`spo train --resume`) and redoes runs that never reached a
checkpoint. A run made with different settings is an error, never silently mixed in.
`--jobs N` runs N trainings at once (each gets cpu_count/N torch threads unless
`threads=` is given), in `run_order`: algorithm arms first, seed-major. Afterwards
`spo.study.summary` writes OUT/summary.json, the plots, OUT/report.html (`spo report`
over all runs) and optionally the markdown page.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from spo.algo.algorithms import ALGORITHMS
from spo.study.runs import (
    flatten,
    read_run_summary,
    resolved_config,
    run_state,
    write_run_summary,
)

IGNORED_KEYS = ("run_dir", "resume", "threads", "log.progress", "log.tensorboard", "log.wandb")
RESERVED = ("algo", "seed", "run_dir", "resume")


@dataclass(frozen=True)
class Ablation:
    """An SPO arm with some keys changed."""

    overrides: tuple[str, ...]
    what: str
    needs_values: bool = False  # tracker.offline_path = OUT/values/seed<s>.parquet


ABLATIONS = {
    "no_baseline": Ablation(("baseline=none",), "no baseline: A = r, batch-normalised"),
    "offline_init": Ablation(
        ("tracker.init=offline",),
        "tracker initialised offline from n0 samples per training prompt (`spo init-values`)",
        needs_values=True,
    ),
    "no_offline_init": Ablation(
        ("tracker.init=online",), "tracker initialised online (prior, learned while training)"
    ),
    "constant_rho": Ablation(("tracker.rho=constant",), "constant ρ = tracker.rho_constant"),
    "replay_rho": Ablation(("tracker.rho=replay",), "ρ from replayed stored responses"),
    "drift_rho": Ablation(("tracker.rho=drift",), "ρ from the cumulative policy drift"),
    "uniform_sampling": Ablation(("sampler.mode=uniform",), "uniform prompt sampling"),
    "no_clip": Ablation(
        ("loss.eps_low=0.999", "loss.eps_high=1000"),
        "PPO ratio clip off (ε_low 0.999, ε_high 1000; the dual clip stays): "
        "importance-weighted policy gradient",
    ),
    "priority_sampling": Ablation(("sampler.mode=priority",), "prioritised prompt sampling"),
}


@dataclass
class RunSpec:
    """One `spo train` run of the study."""

    arm: str
    algo: str
    seed: int
    run_dir: Path
    overrides: list[str]  # the arm's own keys, applied after the user's overrides
    values: Path | None = None  # offline-init values file this run needs
    status: str = "pending"  # pending | finished | failed
    message: str = ""


@dataclass
class Plan:
    config: Path
    overrides: list[str]
    out: Path
    steps: int
    runs: list[RunSpec]
    arms: dict[str, dict] = field(default_factory=dict)  # arm -> {algo, overrides, what}
    init_samples: int = 8
    calibration: int = 8
    calibration_prompts: int = 64

    def train_args(self, spec: RunSpec) -> list[str]:
        """The run's overrides after the config file: the user's, then the arm's."""
        return [*self.overrides, *spec.overrides]


def _error(msg: str):
    from spo.train.config import ConfigError

    return ConfigError(msg)


def _names(text: str, what: str, valid) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in valid]
    if bad:
        raise _error(f"unknown {what} {bad[0]!r}; choose from {', '.join(valid)}")
    if len(set(items)) != len(items):
        raise _error(f"--{what}s lists {what}s twice: {text!r}")
    return items


def _differences(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in IGNORED_KEYS and a.get(k) != b.get(k)]


def _algo_seeds(text: str, algos: list[str], default: int) -> dict[str, int]:
    """--algo-seeds 'rloo=3,critic=3' -> seeds per algorithm (--seeds for the others)."""
    seeds = dict.fromkeys(algos, default)
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit() or int(n) < 1:
            raise _error(f"--algo-seeds {item!r}: write ALGO=N with N >= 1 (e.g. rloo=3)")
        if name.strip() not in seeds:
            raise _error(
                f"--algo-seeds {item!r}: {name.strip()!r} is not in --algos ({','.join(algos)})"
            )
        seeds[name.strip()] = int(n)
    return seeds


def make_plan(args: argparse.Namespace) -> Plan:
    """Validate the request and every arm's config; nothing runs or is written here."""
    config = Path(args.config)
    if not config.is_file():
        raise _error(f"config file {args.config!r} not found (e.g. configs/demo.yaml)")
    if args.seeds < 1 or args.ablation_seeds < 1:
        raise _error(f"--seeds and --ablation-seeds must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise _error(f"--jobs must be >= 1, got {args.jobs}")
    if args.calibration < 0 or args.init_samples < 1:
        raise _error("--calibration must be >= 0 and --init-samples >= 1")
    algos = _names(args.algos, "algo", tuple(ALGORITHMS))
    ablations = _names(args.ablations, "ablation", tuple(ABLATIONS))
    seeds_of = _algo_seeds(getattr(args, "algo_seeds", "") or "", algos, args.seeds)
    if not algos and not ablations:
        raise _error("nothing to run: give --algos and/or --ablations")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise _error(f"override {bad[0]!r} is not key=value (e.g. steps=40)")
    reserved = [o for o in args.overrides if o.split("=", 1)[0] in RESERVED]
    if reserved:
        raise _error(
            f"{reserved[0]!r}: compare sets algo, seed and run_dir per run; "
            "use --algos, --seeds and --out"
        )
    overrides = list(args.overrides)
    base = resolved_config(config, overrides)
    eval_every = args.eval_every or base["eval_every"] or max(1, base["steps"] // 4)
    overrides += [f"eval_every={eval_every}", f"eval_k={args.eval_k}", "eval_start=true"]
    overrides += ["log.progress=false"]
    if args.jobs > 1 and not any(o.startswith("threads=") for o in args.overrides):
        overrides.append(f"threads={max(1, (os.cpu_count() or 1) // args.jobs)}")
    out = Path(args.out) if args.out else Path("runs") / f"compare-{config.stem}"

    arms: dict[str, dict] = {}
    for algo in algos:
        arms[algo] = {"algo": algo, "overrides": [f"algo={algo}"], "what": f"{algo} (config)"}
    for name in ablations:
        ab = ABLATIONS[name]
        arms[name] = {"algo": "spo", "overrides": ["algo=spo", *ab.overrides], "what": ab.what}
    plan = Plan(
        config=config,
        overrides=overrides,
        out=out,
        steps=base["steps"],
        runs=[],
        arms=arms,
        init_samples=args.init_samples,
        calibration=args.calibration,
        calibration_prompts=args.calibration_prompts,
    )
    spo_cfg = resolved_config(config, [*overrides, "algo=spo"])
    matched = ("steps", "samples_per_step", "optim.updates_per_step")
    for arm, info in arms.items():
        needs_values = arm in ABLATIONS and ABLATIONS[arm].needs_values
        n_seeds = seeds_of[arm] if arm in algos else args.ablation_seeds
        for seed in range(n_seeds):
            values = out / "values" / f"seed{seed}.parquet" if needs_values else None
            extra = [f"tracker.offline_path={values}"] if values else []
            run_dir = out / "runs" / arm / f"seed{seed}"
            spec = RunSpec(
                arm=arm,
                algo=info["algo"],
                seed=seed,
                run_dir=run_dir,
                overrides=[*info["overrides"], *extra, f"seed={seed}", f"run_dir={run_dir}"],
                values=values,
            )
            cfg = resolved_config(config, plan.train_args(spec))  # validates every arm up front
            if arm in ABLATIONS and seed == 0:
                own = ("seed", "tracker.offline_path")
                if not [k for k in _differences(cfg, spo_cfg) if k not in own]:
                    raise _error(
                        f"ablation {arm!r} ({' '.join(ABLATIONS[arm].overrides)}) is the SPO "
                        f"arm itself with {config}; drop it"
                    )
            for key in matched:
                if cfg[key] != base[key]:
                    raise _error(f"arm {arm!r} changes {key}; arms must match on {matched}")
            plan.runs.append(spec)
    return plan


# ------------------------------------------------------------------------- running
def _python() -> list[str]:
    return [sys.executable, "-m", "spo.cli"]


def _env() -> dict:
    """The children import the same `spo` package as this process."""
    import spo

    env = dict(os.environ)
    root = str(Path(spo.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _call(cmd: list[str], log: Path) -> tuple[int, str]:
    """Run `cmd`, appending its output to `log`; (exit code, last non-empty output line)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}  # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=_env())
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return rc, (lines[-1] if lines else "")


def train_command(plan: Plan, spec: RunSpec) -> list[str]:
    """`spo train` for a new run, `spo train --resume` for a partial one."""
    if run_state(spec.run_dir, plan.steps) == "partial":
        return [*_python(), "train", "--resume", str(spec.run_dir), f"steps={plan.steps}"]
    return [*_python(), "train", str(plan.config), *plan.train_args(spec)]


def check_existing(plan: Plan, spec: RunSpec) -> None:
    """A run dir made with other settings must not be mixed into this study."""
    saved = spec.run_dir / "config.yaml"
    if run_state(spec.run_dir, plan.steps) == "new" or not saved.is_file():
        return
    from omegaconf import OmegaConf

    old = flatten(OmegaConf.to_container(OmegaConf.load(saved)))
    new = resolved_config(plan.config, plan.train_args(spec))
    diff = [k for k in _differences(old, new) if k != "steps"]
    if diff:
        k = diff[0]
        raise _error(
            f"{spec.run_dir} was made with {k}={old.get(k)!r}, this study has "
            f"{k}={new.get(k)!r}; use another --out or delete that run"
        )


def prepare_values(plan: Plan, seed: int, path: Path) -> tuple[int, str]:
    if path.is_file():
        return 0, ""
    tmp = path.with_name(path.stem + ".tmp.parquet")
    cmd = [
        *_python(),
        "init-values",
        str(plan.config),
        *plan.overrides,
        f"seed={seed}",
        "--samples",
        str(plan.init_samples),
        "--out",
        str(tmp),
    ]
    rc, last = _call(cmd, path.with_suffix(".log"))
    if rc == 0:
        os.replace(tmp, path)
    return rc, last


def calibrate(plan: Plan, spec: RunSpec) -> tuple[int, str]:
    """v̂ vs fresh pass rates at the final checkpoint (`spo eval CKPT --calibration N`)."""
    from spo.train.checkpoint import checkpoint_name

    ckpt = spec.run_dir / "checkpoints" / checkpoint_name(plan.steps)
    calibrated = ALGORITHMS[spec.algo].tracker_baseline  # v̂ is the baseline of these only
    if plan.calibration == 0 or not calibrated or (ckpt / "calibration.json").is_file():
        return 0, ""
    cmd = [
        *_python(),
        "eval",
        str(ckpt),
        "eval_size=1",  # the greedy pass spo eval always makes: one prompt, negligible
        "--k",
        "0",
        "--calibration",
        str(plan.calibration),
        "--calibration-prompts",
        str(plan.calibration_prompts),
        "--out",
        str(spec.run_dir / "calibration_eval.json"),
    ]
    return _call(cmd, spec.run_dir / "train.log")


def committed_only(plan: Plan, spec: RunSpec) -> bool:
    """The run finished elsewhere: its run.json says so, but its checkpoints are not here
    (a fresh clone of a committed study). It is summarised, never retrained over."""
    record = read_run_summary(spec.run_dir) or {}
    return (
        record.get("status") == "finished"
        and record.get("steps") == plan.steps
        and run_state(spec.run_dir, plan.steps) != "finished"
    )


def execute(plan: Plan, spec: RunSpec) -> RunSpec:
    """Train (or resume) one run, then calibrate its tracker; never raises for a failed run."""
    if committed_only(plan, spec):
        spec.status = "finished"
        return spec
    if spec.values is not None and not spec.values.is_file():
        spec.status, spec.message = "failed", f"values file {spec.values} missing"
        return spec
    if run_state(spec.run_dir, plan.steps) != "finished":
        rc, last = _call(train_command(plan, spec), spec.run_dir / "train.log")
        if run_state(spec.run_dir, plan.steps) != "finished":
            spec.status = "failed"
            spec.message = f"exit {rc}: {last[:200]} (log: {spec.run_dir / 'train.log'})"
            return spec
    rc, last = calibrate(plan, spec)
    spec.status = "finished"
    if rc:
        spec.message = f"calibration failed (exit {rc}): {last[:200]}"
    record(plan, spec)
    return spec


def record(plan: Plan, spec: RunSpec) -> None:
    """RUN/run.json: what the study needs of a finished run once its checkpoints are gone."""
    from spo.study.summary import init_samples

    write_run_summary(
        spec.run_dir,
        plan.steps,
        arm=spec.arm,
        algo=spec.algo,
        seed=spec.seed,
        init_samples=init_samples(spec, plan.init_samples, plan.steps),
    )


def run_plan(plan: Plan, jobs: int = 1, log=print) -> list[RunSpec]:
    for spec in plan.runs:
        check_existing(plan, spec)
    plan.out.mkdir(parents=True, exist_ok=True)
    seeds = sorted(
        {s.seed for s in plan.runs if s.values is not None and not committed_only(plan, s)}
    )
    for seed in seeds:
        path = plan.out / "values" / f"seed{seed}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        rc, last = prepare_values(plan, seed, path)
        if rc:
            log(f"init-values seed {seed} failed (exit {rc}): {last}")
    todo = [
        s
        for s in plan.runs
        if run_state(s.run_dir, plan.steps) != "finished" and not committed_only(plan, s)
    ]
    log(
        f"{len(plan.runs)} runs: {len(plan.runs) - len(todo)} finished, {len(todo)} to run "
        f"({jobs} at a time) -> {plan.out}"
    )
    t0 = time.perf_counter()

    def one(spec: RunSpec) -> RunSpec:
        was = "finished" if committed_only(plan, spec) else run_state(spec.run_dir, plan.steps)
        execute(plan, spec)
        if was != "finished" or spec.message:
            note = f" {spec.message}" if spec.message else ""
            log(
                f"  [{time.perf_counter() - t0:6.0f}s] {spec.arm} seed {spec.seed}: "
                f"{spec.status}{note}"
            )
        return spec

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, run_order(plan)))
    return plan.runs


def run_order(plan: Plan) -> list[RunSpec]:
    """The order runs start in: the algorithm arms before the ablations, each seed-major
    (seed 0 of every arm, then seed 1, ...). An interrupted study then holds the most
    complete paired comparisons, and with --jobs 2 the arms of one seed run side by side
    (under the same load, so their wall-clocks compare)."""
    ablation = {arm: arm in ABLATIONS and arm not in ALGORITHMS for arm in plan.arms}
    rank = {arm: i for i, arm in enumerate(plan.arms)}
    return sorted(plan.runs, key=lambda s: (ablation[s.arm], s.seed, rank[s.arm]))
