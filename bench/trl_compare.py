"""spo-rl vs TRL on this CPU: throughput, time split, peak memory and a roofline (issue 6).

In one invocation, on the same machine, model (the embedded SmolLM2-135M-Instruct, bf16
weights), prompts (the built-in `arithmetic` task's training prompts in the chat format)
and settings (64 samples per step, 64 new tokens, temperature 1.0, one optimizer update per
step), it runs `--warmup` + `--steps` steps of three arms, each in its own subprocess so
that peak RSS is per arm:

  trl        TRL's GRPOTrainer: 8 prompts x 8 completions, per_device_train_batch_size=64,
             beta=0 (no reference model), num_iterations=1, no gradient checkpointing,
             bf16 weights; reward = the task's verifier called in-process.
  spo_grpo   spo-rl GRPO (8 x 8, the trainer's defaults otherwise).
  spo        spo-rl SPO (64 distinct prompts x 1, tracker + priority sampler).

Time split, measured the same way in every arm: `generate` (the engine's/`model.generate`
call), `score` (reward), `logp_nograd` (extra no-grad log-prob passes: old/ref log-probs,
the drift/replay estimator), `forward` (the log-prob forward pass with grad), `backward`
(every `Tensor.backward`, wrapped), `optimizer` (spo: `optimizer.step`, which includes
gradient clipping; TRL: end of the last backward to HF's `on_optimizer_step` callback,
i.e. clipping + `optimizer.step`) and `other` (the rest of the step's wall time). TRL's
generate / score / log-prob times come from its own `profiling_context` timers (patched to
record instead of sending them to W&B); step wall time is the interval between
consecutive `on_step_end` callbacks.

Roofline: the best of several 2048^3 bf16 matmuls (before and after the arms) gives the
machine's FLOP/s bound; generation tokens/s x 2·params and training tokens/s x 6·params
(params = all parameters, the tied embedding counted once as it is the LM head's matmul)
are reported as fractions of it. Training tokens are the real (unpadded) prompt +
completion tokens of the forward pass with grad, timed over forward + backward.

Then one spo-rl SPO step is profiled (py-spy, Python stacks) and the torch profiler's op
table of one step is written; summaries go to bench/profile/.

Run from the repository root (TRL is not a dependency of spo-rl; see bench/README.md):

    .venv/bin/pip install trl      # keeps the CPU torch; check with `pip list | grep torch`
    .venv/bin/python bench/trl_compare.py                  # ~15 min on 2 idle cores
    .venv/bin/python bench/trl_compare.py --wait-quiet 1200 --arms spo,spo_grpo
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from common import (
    RESULTS,
    ROOT,
    best_matmul_s,
    command,
    load_avg,
    load_avgs,
    machine,
    rss_mib,
    run_child,
    write_json,
)

PROFILE_DIR = ROOT / "bench" / "profile"

SETTINGS = {
    "samples_per_step": 64,
    "group_size": 8,
    "max_new_tokens": 64,
    "temperature": 1.0,
    "updates_per_step": 1,
    "lr": 2e-5,
    "dtype": "bfloat16",
    "task": "arithmetic",
    "model": "embedded:smollm2-135m-instruct",
}
ARMS = ("trl", "spo_grpo", "spo")
MACHINE = ("cpu", "cpu_count", "mem_gib", "platform", "python", "torch", "transformers", "trl")
MACHINE += ("git_commit",)
BUCKETS = ("generate", "score", "logp_nograd", "forward", "backward", "optimizer")
TRL_MISSING = (
    "bench/trl_compare.py needs TRL, which spo-rl does not depend on. Install it into the venv "
    "without replacing the CPU torch:  .venv/bin/pip install trl  (then check `pip list | grep "
    "torch` still shows +cpu; see bench/README.md)"
)


# --------------------------------------------------------------------------- helpers
class Recorder:
    """Seconds per (step, bucket), tokens per step, and the current step index."""

    def __init__(self) -> None:
        self.step = 0
        self.times: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.counts: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def add(self, bucket: str, seconds: float) -> None:
        self.times[self.step][bucket] += seconds

    def count(self, key: str, n: float) -> None:
        self.counts[self.step][key] += n


def _wrap_backward(rec: Recorder) -> None:
    """Time every Tensor.backward (both arms call it once per (micro-)batch)."""
    import torch

    original = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            now = time.perf_counter()
            rec.add("backward", now - t0)
            rec.last_backward_end = now

    torch.Tensor.backward = backward


def _task_examples():
    from spo.tasks import load_task
    from spo.train.config import load_config, task_kwargs

    cfg = load_config(None, [])
    kwargs = task_kwargs(cfg)
    return load_task(**kwargs)


# --------------------------------------------------------------------------- spo arms
def _child_spo(algo: str, n_steps: int, run_dir: str, profile: str | None) -> dict:
    import torch

    import spo.train.update as update_mod
    from spo.train.config import load_config
    from spo.train.trainer import Trainer

    s = SETTINGS
    overrides = [
        f"algo={algo}",
        f"samples_per_step={s['samples_per_step']}",
        f"group_size={s['group_size']}",
        f"rollout.max_new_tokens={s['max_new_tokens']}",
        f"rollout.temperature={s['temperature']}",
        f"optim.updates_per_step={s['updates_per_step']}",
        f"optim.lr={s['lr']}",
        f"model.dtype={s['dtype']}",
        f"run_dir={run_dir}",
        "log.progress=false",
        "log.tensorboard=false",
        "checkpoint_every=100000",
        f"steps={n_steps + 10}",
    ]
    cfg = load_config(None, overrides)
    rec = Recorder()
    trainer = Trainer(cfg)

    original_logp = update_mod.completion_logp  # what the update and re-scoring call

    def completion_logp(model, batch, **kwargs):
        t0 = time.perf_counter()
        out = original_logp(model, batch, **kwargs)
        grad = torch.is_grad_enabled()
        rec.add("forward" if grad else "logp_nograd", time.perf_counter() - t0)
        if grad:
            rec.count("train_tokens", float(batch.seq_len_B.sum()))
            rec.count("train_tokens_padded", float(batch.input_ids_BL.numel()))
        return out

    update_mod.completion_logp = completion_logp
    original_step = trainer.optimizer.step

    def optimizer_step():
        t0 = time.perf_counter()
        out = original_step()
        rec.add("optimizer", time.perf_counter() - t0)
        return out

    trainer.optimizer.step = optimizer_step
    _wrap_backward(rec)

    steps = []
    for i in range(n_steps):
        rec.step = i
        if profile == "torch" and i == n_steps - 1:
            metrics, wall = _torch_profiled_step(trainer)
        else:
            if profile == "pyspy" and i == n_steps - 1:
                print("READY", flush=True)  # the parent attaches py-spy, then says go
                sys.stdin.readline()
            t0 = time.perf_counter()
            metrics = trainer.train_step()
            wall = time.perf_counter() - t0
        gen_tokens = metrics["completion/length_mean"] * s["samples_per_step"]
        times = dict(rec.times[i])
        times["generate"] = metrics["time/generate"]
        times["score"] = metrics["time/score"]
        steps.append(
            {
                "wall_s": wall,
                "times": times,
                "gen_tokens": gen_tokens,
                "train_tokens": rec.counts[i]["train_tokens"],
                "train_tokens_padded": rec.counts[i]["train_tokens_padded"],
                "reward_mean": metrics["reward/mean"],
                "truncated_fraction": metrics["completion/truncated_fraction"],
                "rss_mib": rss_mib(),
            }
        )
        print(f"  {algo} step {i}: {wall:.1f}s reward {metrics['reward/mean']:.2f}", flush=True)
    trainer.close()
    return {"steps": steps, "torch_threads": torch.get_num_threads()}


def _torch_profiled_step(trainer):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        t0 = time.perf_counter()
        metrics = trainer.train_step()
        wall = time.perf_counter() - t0
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    (PROFILE_DIR / "spo_step_torch_ops.txt").write_text(
        f"# torch.profiler, one spo-rl SPO step (64 samples, 64 new tokens), wall {wall:.1f}s "
        f"under the profiler, load average {load_avgs()}; sorted by self CPU time\n{table}\n"
    )
    return metrics, wall


# --------------------------------------------------------------------------- trl arm
def _child_trl(n_steps: int, run_dir: str, autocast: bool) -> dict:
    import torch
    import trl.extras.profiling as trl_profiling
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from spo.policy.models import convert_embedded, encode_prompts

    s = SETTINGS
    task = _task_examples()
    examples = task.train
    model_dir = str(convert_embedded())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    spo_prompt_ids = {tuple(p) for p in encode_prompts(tokenizer, [e.prompt for e in examples])}
    rec = Recorder()
    rec.last_backward_end = None
    seen = {"prompts": 0, "prompts_matching_spo": 0}

    def record(self, duration: float) -> None:  # replaces ProfilingContext._log_metrics
        name = self.name.rsplit(".", 1)[-1] if "generate" not in self.name else "generate"
        grad = torch.is_grad_enabled()
        if name == "generate":
            rec.add("generate", duration)
        elif name == "_calculate_rewards":
            rec.add("score", duration)
        elif name == "_get_per_token_logps_and_entropies":
            rec.add("forward" if grad else "logp_nograd", duration)

    trl_profiling.ProfilingContext._log_metrics = record
    _wrap_backward(rec)

    def arithmetic_reward(prompts, completions, completion_ids, index, **kwargs):
        rec.count("gen_tokens", float(sum(len(c) for c in completion_ids)))
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        rewards = [float(task.verifier(t, examples[i])) for t, i in zip(texts, index, strict=True)]
        rec.count("reward_sum", sum(rewards))
        rec.count("reward_n", len(rewards))
        return rewards

    class Trainer(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            seen["prompts"] += len(prompt_ids)
            seen["prompts_matching_spo"] += sum(tuple(p) in spo_prompt_ids for p in prompt_ids)
            return super()._generate_single_turn(prompt_ids, *args, **kwargs)

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, *a, **kw):
            if torch.is_grad_enabled():
                rec.count("train_tokens", float(attention_mask.sum()))
                rec.count("train_tokens_padded", float(attention_mask.numel()))
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, *a, **kw
            )

    steps: list[dict] = []
    marks = {"t": None}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks["t"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            if rec.last_backward_end is not None:
                rec.add("optimizer", time.perf_counter() - rec.last_backward_end)

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            i = rec.step
            steps.append(
                {
                    "wall_s": now - marks["t"],
                    "times": dict(rec.times[i]),
                    "gen_tokens": rec.counts[i]["gen_tokens"],
                    "train_tokens": rec.counts[i]["train_tokens"],
                    "train_tokens_padded": rec.counts[i]["train_tokens_padded"],
                    "reward_mean": rec.counts[i]["reward_sum"] / max(rec.counts[i]["reward_n"], 1),
                    "rss_mib": rss_mib(),
                }
            )
            print(f"  trl step {i}: {now - marks['t']:.1f}s", flush=True)
            marks["t"] = now
            rec.step += 1

    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": e.prompt}], "index": i}
            for i, e in enumerate(examples)
        ]
    )
    args = GRPOConfig(
        output_dir=run_dir,
        use_cpu=True,
        bf16=autocast,
        model_init_kwargs={"dtype": "bfloat16"},
        gradient_checkpointing=False,
        num_generations=s["group_size"],
        per_device_train_batch_size=s["samples_per_step"],
        gradient_accumulation_steps=1,
        num_iterations=1,
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        top_p=1.0,
        beta=0.0,
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=n_steps,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model_dir,
        reward_funcs=arithmetic_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()
    return {
        "steps": steps,
        "torch_threads": torch.get_num_threads(),
        "trl_version": importlib.import_module("trl").__version__,
        "model_dtype": str(next(trainer.model.parameters()).dtype),
        "bf16_autocast": autocast,
        "prompt_check": seen,
    }


# --------------------------------------------------------------------------- parent
def _summarise(arm: str, child: dict, warmup: int) -> dict:
    steady = child["steps"][warmup:]
    if not steady:
        raise SystemExit(f"arm {arm} produced no steady-state steps")
    wall = sum(st["wall_s"] for st in steady)
    n = len(steady)
    split = {b: sum(st["times"].get(b, 0.0) for st in steady) / n for b in BUCKETS}
    split["other"] = wall / n - sum(split.values())
    gen_tokens = sum(st["gen_tokens"] for st in steady)
    train_tokens = sum(st["train_tokens"] for st in steady)
    gen_time = sum(st["times"].get("generate", 0.0) for st in steady)
    fb_time = sum(
        st["times"].get("forward", 0.0) + st["times"].get("backward", 0.0) for st in steady
    )
    return {
        "steady_steps": n,
        "s_per_step": wall / n,
        "s_per_step_median": statistics.median(st["wall_s"] for st in steady),
        "samples_per_s": SETTINGS["samples_per_step"] * n / wall,
        "gen_tokens_per_step": gen_tokens / n,
        "gen_tokens_per_s_in_generate": gen_tokens / gen_time if gen_time else None,
        "gen_tokens_per_s_wall": gen_tokens / wall,
        "train_tokens_per_step": train_tokens / n,
        "train_tokens_padded_per_step": sum(st["train_tokens_padded"] for st in steady) / n,
        "train_tokens_per_s_fwd_bwd": train_tokens / fb_time if fb_time else None,
        "time_split_s": {k: round(v, 3) for k, v in split.items()},
        "peak_rss_mib": child["peak_rss_mib"],
        "reward_mean": [st.get("reward_mean") for st in child["steps"]],
        "step_wall_s": [round(st["wall_s"], 3) for st in child["steps"]],
    }


def _run_child(arm: str, args, extra: list[str] | None = None, pyspy: Path | None = None) -> dict:
    child_args = [
        "--child",
        arm,
        "--child-steps",
        str(args.warmup + args.steps),
        *(["--trl-autocast"] if args.trl_autocast else []),
        *(extra or []),
    ]
    interact = None if pyspy is None else (lambda child: _attach_pyspy(child, pyspy))
    result = run_child(__file__, child_args, prefix=f"trl_compare_{arm}_", interact=interact)
    result["peak_rss_mib"] = result.pop("child_peak_rss_mib")  # ru_maxrss of the arm's process
    return result


def _attach_pyspy(child: subprocess.Popen, raw_out: Path) -> None:
    """Warm up in the child, attach py-spy for the last step only (samples end at exit)."""
    pyspy = Path(sys.executable).parent / "py-spy"
    assert child.stdin is not None and child.stdout is not None
    for line in child.stdout:
        print(line, end="")
        if line.strip() == "READY":
            break
    spy = subprocess.Popen(
        [
            str(pyspy),
            "record",
            "--pid",
            str(child.pid),
            "--format",
            "raw",
            "--rate",
            "50",
            "--output",
            str(raw_out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.0)
    child.stdin.write("go\n")
    child.stdin.flush()
    for line in child.stdout:  # until the child closes its output (it exits)
        print(line, end="")
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.terminate()
    if spy.returncode not in (0, None) or not raw_out.exists():
        print(f"py-spy failed ({spy.returncode}): {(spy.stderr.read() or '').strip()[:300]}")


PHASES = (
    ("generate", "generate (hf.py)"),
    ("_update", "update: forward+backward+optimizer"),
    ("forgetting.py", "drift / forgetting estimator (spo/train/forgetting.py)"),
    ("rewards.py", "score (reward pool)"),
)


_WRAPPER_FRAMES = ("_call_impl", "wrapper", "wrapped", "trl_compare.py", "decorate_context")


def _function(frame: str) -> str:
    """'name (path/file.py:123)' -> 'name (path/file.py)' so lines of one function add up."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def _summarise_pyspy(raw: Path, header: str) -> str:
    """Collapsed stacks -> share of one step's samples per phase and hottest functions."""
    total = 0
    phases: dict[str, int] = defaultdict(int)
    leaves: dict[str, int] = defaultdict(int)
    inclusive: dict[str, int] = defaultdict(int)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "train_step" not in stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        step_at = next(i for i, f in enumerate(frames) if "train_step" in f)
        inner = [_function(f) for f in frames[step_at + 1 :]]
        phase = "other (in train_step)"
        for key, label in PHASES:
            if inner and key in inner[0]:
                phase = label
                break
        phases[phase] += n
        if inner:
            leaves[inner[-1]] += n
        for f in set(inner):
            if not any(w in f for w in _WRAPPER_FRAMES):
                inclusive[f] += n
    if not total:
        return "py-spy: no samples inside train_step\n"
    lines = [header, f"py-spy (Python stacks, 50 Hz) of one spo-rl SPO step: {total} samples", ""]
    lines.append("phase (first frame below Trainer.train_step)      share")
    for label, n in sorted(phases.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {label:<46} {100 * n / total:5.1f}%")
    lines += ["", "hottest functions by self time (native code is charged to its Python caller)"]
    for name, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", "inclusive time of functions (top 25, call wrappers left out)"]
    for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:25]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def _matmul_roofline(size: int = 2048, reps: int = 10) -> dict:
    import torch

    out = {"size": size, "threads": torch.get_num_threads()}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        best = best_matmul_s(dtype, size, size, size, reps=reps, warmup=2)
        out[f"{name}_flops"] = 2 * size**3 / best
        out[f"{name}_best_s"] = best
    return out


def _param_counts() -> dict:
    import json as _json

    from spo.policy.models import convert_embedded

    cfg = _json.loads((Path(convert_embedded()) / "config.json").read_text())
    d, v, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    heads, kv = (
        cfg["num_attention_heads"],
        cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
    )
    hd = d // heads
    ff = cfg["intermediate_size"]
    per_layer = d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * ff + 2 * d
    non_embedding = layers * per_layer + d
    embedding = v * d
    tied = cfg.get("tie_word_embeddings", True)
    total = non_embedding + embedding * (1 if tied else 2)
    return {
        "total": total,
        "non_embedding": non_embedding,
        "embedding": embedding,
        "tied_embeddings": tied,
        "used_for_roofline": "total (the tied embedding counted once: it is the LM head matmul)",
    }


def _wait_quiet(max_wait: float, threshold: float) -> None:
    deadline = time.time() + max_wait
    while load_avg() > threshold and time.time() < deadline:
        print(f"load {load_avg():.2f} > {threshold}: waiting (up to {max_wait:.0f}s)")
        time.sleep(30)


def _markdown(result: dict) -> str:
    arms = result["arms"]
    names = {"trl": "TRL GRPOTrainer", "spo_grpo": "spo-rl GRPO", "spo": "spo-rl SPO"}
    lines = [
        "# spo-rl vs TRL on CPU (issue 6)",
        "",
        f"{result['date']}, {result['machine']['cpu']} ({result['machine']['cpu_count']} cores), "
        f"torch {result['machine']['torch']}, transformers {result['machine']['transformers']}, "
        f"trl {result['machine']['trl']}; load average during the arms: "
        + ", ".join(f"{a} {arms[a]['load_avg_1m']}" for a in arms)
        + ".",
        "",
        "SmolLM2-135M-Instruct (bf16 weights), arithmetic prompts, 64 samples/step, 64 new "
        f"tokens, temperature 1.0, 1 optimizer update/step; mean over {result['steps']} steps "
        f"after {result['warmup']} warm-up.",
        "",
        "| arm | s/step | samples/s | gen tok/s | generate | score | logp (no grad) | forward "
        "| backward | optimizer | other | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in arms.items():
        sp = r["time_split_s"]
        lines.append(
            f"| {names[arm]} | {r['s_per_step']:.1f} | {r['samples_per_s']:.2f} "
            f"| {r['gen_tokens_per_s_in_generate']:.0f} | "
            + " | ".join(f"{sp[b]:.1f}" for b in (*BUCKETS, "other"))
            + f" | {r['peak_rss_mib'] / 1024:.2f} GiB |"
        )
    if result.get("ratios"):
        lines += [
            "",
            "Ratios vs TRL (samples/s): "
            + ", ".join(f"{names[k]} **{v:.2f}x**" for k, v in result["ratios"].items()),
        ]
    roof = result["roofline"]
    lines += [
        "",
        f"Roofline: bf16 matmul {roof['matmul']['bf16_flops'] / 1e12:.2f} TFLOP/s "
        f"(best of 2048^3, {roof['matmul']['threads']} threads); params "
        f"{roof['params']['total'] / 1e6:.1f}M (total, tied head counted once).",
        "",
        "| arm | generation tok/s | % of 2·P bound | training tok/s (fwd+bwd) | % of 6·P bound |",
        "|---|---|---|---|---|",
    ]
    for arm, f in roof["fractions"].items():
        lines.append(
            f"| {names[arm]} | {f['gen_tokens_per_s']:.0f} | {100 * f['gen_fraction']:.1f}% "
            f"| {f['train_tokens_per_s']:.0f} | {100 * f['train_fraction']:.1f}% |"
        )
    lines += ["", "Command:", "", "```", result["command"], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="steady-state steps per arm")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per arm (not timed)")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma list of " + ", ".join(ARMS))
    ap.add_argument(
        "--trl-autocast",
        action="store_true",
        help="TRL bf16=True (autocast over the bf16 weights); off by default: measured the "
        "same speed here (33.6 vs 33.4 s/step)",
    )
    ap.add_argument("--no-profile", action="store_true", help="skip the profile of one spo step")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="wait up to this many seconds for the 1-min load to drop below 2.5",
    )
    ap.add_argument("--out", default=str(RESULTS / "trl_compare.json"))
    ap.add_argument("--md", default=str(RESULTS / "trl_compare.md"))
    ap.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    ap.add_argument("--child-steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-dir", help=argparse.SUPPRESS)
    ap.add_argument("--child-profile", choices=("pyspy", "torch"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        if args.child == "trl":
            result = _child_trl(args.child_steps, args.child_dir, args.trl_autocast)
        else:
            algo = "grpo" if args.child == "spo_grpo" else "spo"
            result = _child_spo(algo, args.child_steps, args.child_dir, args.child_profile)
        write_json(args.child_out, result, indent=None)
        return 0

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := [a for a in arms if a not in ARMS]:
        print(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    if "trl" in arms and importlib.util.find_spec("trl") is None:
        print(TRL_MISSING, file=sys.stderr)
        return 2
    if args.wait_quiet:
        _wait_quiet(args.wait_quiet, 2.5)
    result: dict = {
        "benchmark": "trl_compare",
        "command": command(__file__, argv),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(*MACHINE),
        "load_avg_at_start": load_avgs(),
        "settings": {
            **SETTINGS,
            "warmup": args.warmup,
            "steps": args.steps,
            "trl_bf16_autocast": args.trl_autocast,
        },
        "steps": args.steps,
        "warmup": args.warmup,
        "method": {
            "timing": __doc__.split("Time split, ", 1)[1]
            .split("\n\nRoofline")[0]
            .replace("\n", " "),
            "rss": "ru_maxrss of each arm's own subprocess (model load included)",
        },
    }
    print(f"load average {load_avgs()}; measuring bf16 matmul roofline")
    matmul = _matmul_roofline()
    params = _param_counts()
    print(
        f"  bf16 {matmul['bf16_flops'] / 1e12:.2f} TFLOP/s, fp32 {matmul['fp32_flops'] / 1e12:.2f}"
    )

    result["arms"] = {}
    children = {}
    for arm in arms:
        print(
            f"arm {arm}: {args.warmup} warm-up + {args.steps} steps (load {load_avgs()})",
            flush=True,
        )
        child = _run_child(arm, args)
        children[arm] = child
        summary = _summarise(arm, child, args.warmup)
        summary["load_avg_1m"] = child["load_avg_before"][0]
        summary["load_avg_before"] = child["load_avg_before"]
        summary["load_avg_after"] = child["load_avg_after"]
        summary["torch_threads"] = child["torch_threads"]
        for key in ("trl_version", "model_dtype", "bf16_autocast", "prompt_check"):
            if key in child:
                summary[key] = child[key]
        result["arms"][arm] = summary

    if "trl" in result["arms"]:
        base = result["arms"]["trl"]["samples_per_s"]
        result["ratios"] = {
            a: result["arms"][a]["samples_per_s"] / base for a in result["arms"] if a != "trl"
        }
    # the bound is the best the machine showed: measured again after the arms, so that a
    # busy moment before them cannot understate it (and inflate the fractions)
    after = _matmul_roofline()
    if after["bf16_flops"] > matmul["bf16_flops"]:
        matmul = after | {"measured": "after the arms (higher than before)"}
    print(f"  bf16 roofline used: {matmul['bf16_flops'] / 1e12:.2f} TFLOP/s")
    peak = matmul["bf16_flops"]
    p = params["total"]
    fractions = {}
    for arm, r in result["arms"].items():
        g, tr = r["gen_tokens_per_s_in_generate"] or 0.0, r["train_tokens_per_s_fwd_bwd"] or 0.0
        fractions[arm] = {
            "gen_tokens_per_s": g,
            "gen_fraction": g * 2 * p / peak,
            "gen_fraction_non_embedding": g * 2 * params["non_embedding"] / peak,
            "train_tokens_per_s": tr,
            "train_fraction": tr * 6 * p / peak,
        }
    result["roofline"] = {
        "matmul": matmul,
        "params": params,
        "fractions": fractions,
        "note": "gen: tokens/s inside generate x 2P; train: real prompt+"
        "completion tokens/s over forward+backward x 6P; P = total",
    }

    if not args.no_profile:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        raw = PROFILE_DIR / "spo_step_pyspy.raw.txt"
        print("profiling one spo-rl SPO step (py-spy, then torch.profiler)", flush=True)
        try:
            prof_args = argparse.Namespace(**{**vars(args), "warmup": 1, "steps": 1})
            _run_child("spo", prof_args, ["--child-profile", "pyspy"], pyspy=raw)
            if raw.exists():
                commit = result["machine"]["git_commit"]
                header = f"# {result['date']}, load average {load_avgs()}, commit {commit}"
                (PROFILE_DIR / "spo_step_pyspy.txt").write_text(_summarise_pyspy(raw, header))
                raw.unlink()
            _run_child("spo", prof_args, ["--child-profile", "torch"])
        except (subprocess.CalledProcessError, OSError) as e:
            print(f"profiling failed: {e}")

    out = write_json(args.out, result, indent=2)
    Path(args.md).write_text(_markdown(result))
    print()
    print(_markdown(result))
    print(f"wrote {out} and {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
