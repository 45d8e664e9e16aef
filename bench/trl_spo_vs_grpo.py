"""TRL's GRPOTrainer vs spo-rl's SPOTrainer (spo.integrations.trl) at equal samples.

Both arms are TRL trainers with the same TRL settings; only the SPO-specific lines differ:
the embedded SmolLM2-135M-Instruct (fp32 weights), the built-in `arithmetic` task (its
training prompts as a conversational `prompt` column, its verifier as the one reward
function), `--steps` optimizer steps of 64 samples each (GRPO: 8 prompts x 8 completions,
`num_generations=8`; SPO: 64 distinct prompts x 1), temperature 1.0, at most 24 new
tokens, lr 2e-5 constant, beta 0, one optimizer step per generation, TRL's default loss.

Per (seed, arm): held-out accuracy on the task's first --eval-prompts test prompts
(default 128) before and after training (spo.eval: greedy and avg@4 at temperature 1.0,
the same eval seed for both arms; "before" is measured once per seed), TRL's
`train_runtime` (wall-clock of training, generation included), and the share of trained
samples whose advantage is exactly 0 (no gradient: GRPO's all-equal groups; for SPO
r = v̂ exactly), plus SPO's share with |r − v̂| <= 1e-4 from its logs.

Results are appended to --out (JSON) after every arm, so an interrupted study resumes
where it stopped; --report rewrites the markdown table from the JSON (hand-written notes
after the NOTES marker in the markdown are kept).

    python bench/trl_spo_vs_grpo.py --seeds 0,1,2 --steps 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, load_avgs, machine, regenerate, spread, t_interval

OUT = ROOT / "docs" / "results" / "trl_spo_vs_grpo.json"
REPORT = ROOT / "docs" / "results" / "trl_spo_vs_grpo.md"
SETTINGS = {
    "model": "embedded:smollm2-135m-instruct (fp32 weights)",
    "task": "arithmetic",
    "samples_per_step": 64,
    "grpo_num_generations": 8,
    "max_completion_length": 24,
    "temperature": 1.0,
    "learning_rate": 2e-5,
    "eval_prompts": 128,
    "eval_k": 4,
}
ARMS = ("grpo", "spo")


def _task():
    from spo.tasks import load_task
    from spo.train.config import load_config, task_kwargs

    cfg = load_config(None, [])
    return load_task(**task_kwargs(cfg))


def _evaluate(model, tokenizer, task, seed: int) -> dict:
    from spo.eval import evaluate_examples
    from spo.tasks.rewards import RewardPool

    with RewardPool(task.verifier, workers=0) as pool:  # in-process: the verifier is cheap
        m = evaluate_examples(
            model,
            tokenizer,
            task,
            task.test[: SETTINGS["eval_prompts"]],
            k=SETTINGS["eval_k"],
            max_new_tokens=SETTINGS["max_completion_length"],
            temperature=SETTINGS["temperature"],
            seed=seed,
            reward_pool=pool,
        )
    return {k: float(m[k]) for k in ("greedy", f"avg@{SETTINGS['eval_k']}") if k in m}


def run_arm(arm: str, seed: int, steps: int, before: dict | None = None) -> dict:
    """Train one arm; `before` = the initial policy's held-out metrics if already measured
    for this seed (identical for both arms: same model, same eval seed)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from spo.integrations.trl import SPOConfig, SPOTrainer
    from spo.policy.models import convert_embedded

    task = _task()
    examples = task.train
    model_dir = str(convert_embedded())
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": e.prompt}], "index": i}
            for i, e in enumerate(examples)
        ]
    )

    def correct(completions, index, **kwargs):
        return [
            float(task.verifier(c[0]["content"], examples[i]))
            for c, i in zip(completions, index, strict=True)
        ]

    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"trl_{arm}_"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=SETTINGS["samples_per_step"],
        gradient_accumulation_steps=1,
        num_iterations=1,
        max_completion_length=SETTINGS["max_completion_length"],
        temperature=SETTINGS["temperature"],
        top_p=1.0,
        beta=0.0,
        learning_rate=SETTINGS["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=seed,
    )
    if arm == "grpo":
        cls, args = (
            GRPOTrainer,
            GRPOConfig(num_generations=SETTINGS["grpo_num_generations"], **common),
        )
    else:
        cls, args = SPOTrainer, SPOConfig(**common)
    zero = []

    class Recording(cls):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                zero.append(float((out["advantages"] == 0).float().mean()))
            return out

    if before is None:
        before = _evaluate(model, tokenizer, task, seed)
    trainer = Recording(
        model=model,
        reward_funcs=correct,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    t0 = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - t0
    after = _evaluate(trainer.model, tokenizer, task, seed)
    logs = [h for h in trainer.state.log_history if "reward" in h]
    result = {
        "arm": arm,
        "seed": seed,
        "steps": steps,
        "samples": steps * SETTINGS["samples_per_step"],
        "before": before,
        "after": after,
        "train_runtime_s": float(out.metrics["train_runtime"]),
        "train_wall_s": wall,
        "zero_advantage_share": statistics.mean(zero),
        "zero_advantage_by_step": zero,
        "reward_by_step": [h["reward"] for h in logs],
        "load_avg_at_end": load_avgs(),
    }
    if arm == "spo":
        result["spo_abs_adv_le_1e-4"] = statistics.mean(
            h.get("spo/adv/abs_le_1e-4", 0.0) for h in logs
        )
        result["spo_variance_ratio"] = [h.get("spo/adv/variance_ratio") for h in logs]
    else:
        result["frac_reward_zero_std_by_step"] = [h.get("frac_reward_zero_std") for h in logs]
    return result


def _t_interval(values: list[float], scale: float = 100.0) -> str:
    """[lo, hi]: the 95% interval of a mean of n paired differences."""
    mean, half = t_interval(values, scale)
    return f"[{mean - half:.1f}, {mean + half:.1f}]"


_fmt = spread


def report(data: dict) -> str:
    runs = data["runs"]
    k = f"avg@{SETTINGS['eval_k']}"
    lines = [
        "# TRL: GRPOTrainer vs SPOTrainer at equal samples",
        "",
        f"Generated by `{data['command']}` (bench/trl_spo_vs_grpo.py) from "
        "`docs/results/trl_spo_vs_grpo.json`; the script's docstring lists every setting.",
        "",
        f"- {SETTINGS['model']}, task `{SETTINGS['task']}`; both arms are TRL {data['trl']} "
        f"trainers with the same settings: {SETTINGS['samples_per_step']} samples per step "
        f"(GRPO {SETTINGS['samples_per_step'] // SETTINGS['grpo_num_generations']} prompts × "
        f"{SETTINGS['grpo_num_generations']}, SPO {SETTINGS['samples_per_step']} prompts × 1), "
        f"≤ {SETTINGS['max_completion_length']} new tokens, temperature 1.0, lr "
        f"{SETTINGS['learning_rate']:g} (no search for either arm), beta 0.",
        f"- Held-out: the first {SETTINGS['eval_prompts']} test prompts, greedy and {k} "
        "(temperature 1.0), same eval seed for both arms of a seed.",
        f"- Machine: {data['machine']}. The CPU was shared with other jobs while this ran "
        "(load averages are in the JSON), so wall-clock is noisy; read it as the ratio of the "
        "two arms of a seed, which ran side by side, each process pinned to its own core with "
        "one thread (bench/trl_spo_vs_grpo.sh).",
        "",
        "Values: mean ± std [min–max] over seeds; one number = one seed.",
        "",
        f"| arm | seeds | samples | greedy before | greedy after | {k} before | {k} after | "
        "train wall-clock (min) | zero-advantage samples (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        name = "GRPOTrainer" if arm == "grpo" else "SPOTrainer"
        lines.append(
            f"| {name} | {len(rs)} | {rs[0]['samples']} | "
            f"{_fmt([r['before']['greedy'] for r in rs])} | "
            f"{_fmt([r['after']['greedy'] for r in rs])} | "
            f"{_fmt([r['before'][k] for r in rs])} | {_fmt([r['after'][k] for r in rs])} | "
            f"{_fmt([r['train_runtime_s'] for r in rs], 1 / 60)} | "
            f"{_fmt([r['zero_advantage_share'] for r in rs])} |"
        )
    pairs = [
        (g, s)
        for g in runs
        for s in runs
        if g["arm"] == "grpo"
        and s["arm"] == "spo"
        and g["seed"] == s["seed"]
        and g["steps"] == s["steps"]
    ]
    if pairs:
        d_greedy = [s["after"]["greedy"] - g["after"]["greedy"] for g, s in pairs]
        d_avg = [s["after"][k] - g["after"][k] for g, s in pairs]
        ratio = [s["train_runtime_s"] / g["train_runtime_s"] for g, s in pairs]
        lines += [
            "",
            f"Paired by seed (n = {len(pairs)}), SPO − GRPO after training: greedy "
            f"{_fmt(d_greedy)} pp, {k} {_fmt(d_avg)} pp; wall-clock SPO/GRPO {_fmt(ratio, 1, 2)}.",
        ]
        if len(pairs) > 1:
            lines.append(
                f"95% t-intervals of the mean paired difference (n = {len(pairs)}): greedy "
                f"{_t_interval(d_greedy)} pp, {k} {_t_interval(d_avg)} pp."
            )
    return "\n".join(lines) + "\n"


def write_report(data: dict) -> None:
    regenerate(REPORT, report(data))


def _merged_machine(paths: list[Path]) -> str | None:
    """The machine line the merged arm runs recorded (their threads, not this process's)."""
    lines = {json.loads(p.read_text()).get("machine") for p in paths} - {None}
    return " / ".join(sorted(lines)) if lines else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--cpu",
        default=None,
        help="pin this process to these CPUs (comma-separated), e.g. to run the two arms of a "
        "seed side by side on one core each",
    )
    p.add_argument("--eval-prompts", type=int, default=SETTINGS["eval_prompts"])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--report", action="store_true", help="only rewrite the markdown from --out")
    p.add_argument(
        "--merge", type=Path, nargs="*", default=[], help="JSON files of runs to add to --out"
    )
    p.add_argument(
        "--skip-before",
        action="store_true",
        help="no initial-policy eval (another arm of the seed, run in parallel, measures it)",
    )
    args = p.parse_args(argv)
    import torch
    import trl

    if args.cpu is not None:
        os.sched_setaffinity(0, {int(c) for c in args.cpu.split(",")})
    torch.set_num_threads(args.threads)
    SETTINGS["eval_prompts"] = args.eval_prompts
    data = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    if not args.report:  # --report regenerates the page of the runs as they were made
        m = machine("platform", "cpu_count", "torch")
        data.update(
            command="bash bench/trl_spo_vs_grpo.sh"
            if args.merge
            else "python bench/trl_spo_vs_grpo.py "
            f"--seeds {args.seeds} --steps {args.steps} --threads {args.threads} "
            f"--eval-prompts {args.eval_prompts}",
            trl=trl.__version__,
            machine=_merged_machine(args.merge)
            or f"{m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
            f"{args.threads} threads",
            settings=SETTINGS,
        )
    for extra in args.merge:  # a run already present (same arm, seed, steps) is not added twice
        have = {(r["arm"], r["seed"], r["steps"]) for r in data["runs"]}
        data["runs"] += [
            r
            for r in json.loads(extra.read_text())["runs"]
            if (r["arm"], r["seed"], r["steps"]) not in have
        ]
    for r in data["runs"]:  # runs started with --skip-before take their seed's measurement
        if not r["before"]:
            same_seed = [
                o["before"] for o in data["runs"] if o["seed"] == r["seed"] and o["before"]
            ]
            r["before"] = same_seed[0] if same_seed else {}
    if not args.report:
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in args.arms.split(","):
                if any(
                    r["arm"] == arm and r["seed"] == seed and r["steps"] == args.steps
                    for r in data["runs"]
                ):
                    continue
                print(f"== {arm} seed {seed}", flush=True)
                done = [r for r in data["runs"] if r["seed"] == seed and r["steps"] == args.steps]
                before = done[0]["before"] if done else ({} if args.skip_before else None)
                data["runs"].append(run_arm(arm, seed, args.steps, before))
                data["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                args.out.write_text(json.dumps(data, indent=1))
                write_report(data)
    if args.merge:  # the merged runs are the data the page is generated from
        args.out.write_text(json.dumps(data, indent=1))
    write_report(data)
    print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
