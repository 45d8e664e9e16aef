"""What the critic arm costs next to SPO: time per step and parameter/optimizer memory
(issue 19, deliverable 4), side by side in one process.

Two trainers on the same config, `algo=spo` and `algo=critic`, take their steps in turn
(spo 1, critic 1, spo 2, ...), so machine load hits both alike. Reported per arm: the
median over steps 2.. of `time/step` and its phases, and for the critic `time/critic`
(reading V: one no-grad forward over the step's prompt tokens; fitting the head) and its
share of the step. Memory: bytes of the policy's parameters, of its optimizer state (fp32
masters and AdamW moments), and of the critic's state (θ, Adam moments, running feature
mean/variance), counted from the tensors; plus `feature_read_peak_extra_mib`, how far the
resident peak (VmHWM, reset before) rose above the RSS during one feature read after the
last step: 0 means the read fit in memory the process already held (the allocator keeps
the update's freed activations, which are far larger).

    python bench/critic_cost.py                       # the embedded SmolLM2-135M, 16 samples/step
    python bench/critic_cost.py --model tiny          # the tests' tiny random Llama (seconds)

Writes bench/results/critic_cost.json (or --out). Timings on a shared machine are noisy:
compare the arms within one run (the ratio), not across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
from pathlib import Path

from common import (
    RESULTS,
    command,
    hwm_mib,
    load_avg,
    machine,
    reset_peak_rss,
    rss_mib,
    tiny_task,
    write_json,
)

PHASES = ("time/step", "time/generate", "time/score", "time/train", "time/tracker")


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor / array inside a nested state (dicts, lists)."""
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("embedded", "tiny"), default="embedded")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--samples", type=int, default=16, help="samples_per_step")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "critic_cost.json"))
    args = ap.parse_args(argv)

    from spo.train.config import load_config
    from spo.train.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="critic-cost-"))
    base = ["task.train_size=64"]
    if args.model == "tiny":
        tiny = tiny_task(work, rows=80)
        base += [
            f"model.path={tiny['model_dir']}",
            f"task.name={tiny['name']}",
            f"task.reward_fn={tiny['reward_fn']}",
            "task.test_size=4",
            "optim.lr=1e-3",
        ]
    base += [
        f"samples_per_step={args.samples}",
        f"rollout.max_new_tokens={args.new_tokens}",
        f"steps={args.steps}",
        f"threads={args.threads}",
        "reward.workers=0",
        "log.progress=false",
        "log.tensorboard=false",
        "log.samples_per_step=0",
        "checkpoint_every=100000",
    ]
    load_start = load_avg()
    trainers = {
        algo: Trainer(load_config(None, [*base, f"algo={algo}", f"run_dir={work / algo}"]))
        for algo in ("spo", "critic")
    }
    rows: dict[str, list[dict]] = {algo: [] for algo in trainers}
    try:
        for step in range(1, args.steps + 1):
            for algo, trainer in trainers.items():
                m = trainer.train_step()
                keep = (
                    *PHASES,
                    "time/critic",
                    "critic/loss",
                    "critic/value_mean",
                    "reward/mean",
                    "completion/length_mean",
                )
                rows[algo].append({"step": step, **{k: m[k] for k in keep if k in m}})
                print(f"{algo} step {step}: {m['time/step']:.2f} s", flush=True)
        critic = trainers["critic"].critic
        ids = trainers["critic"].last_prompt_idx
        rss0 = rss_mib()
        reset_peak_rss()
        critic.hidden(ids)
        read_peak_extra = hwm_mib() - rss0
        memory = {
            algo: {
                "policy_parameters": sum(p.numel() for p in t.model.parameters()),
                "policy_parameter_bytes": sum(
                    p.numel() * p.element_size() for p in t.model.parameters()
                ),
                "optimizer_state_bytes": _tensor_bytes(t.optimizer.state_dict()),
            }
            for algo, t in trainers.items()
        }
        memory["critic"]["critic_parameters"] = critic.head.num_parameters
        memory["critic"]["critic_state_bytes"] = _tensor_bytes(critic.state_dict())
        memory["critic"]["feature_read_peak_extra_mib"] = round(read_peak_extra, 1)
        from spo.policy.batch import pack
        from spo.policy.logprobs import shared_prefix_len

        tokens = trainers["critic"].prompt_tokens
        prompts = {
            "train_prompts": len(tokens),
            "tokens_mean": round(statistics.mean(len(p) for p in tokens), 1),
            "shared_prefix_tokens": shared_prefix_len(pack(tokens, [[] for _ in tokens], pad_id=0)),
        }
    finally:
        for trainer in trainers.values():
            trainer.close()

    def med(algo: str, key: str) -> float | None:
        vals = [r[key] for r in rows[algo][1:] if key in r]  # step 1 warms up
        return round(statistics.median(vals), 4) if vals else None

    summary = {algo: {k: med(algo, k) for k in (*PHASES, "time/critic")} for algo in rows}
    c, s = summary["critic"], summary["spo"]
    result = {
        "what": "critic arm vs SPO, same config, steps interleaved in one process",
        "command": command(__file__, argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(
            "cpu", "cores", "torch", "transformers", "git_commit", load_avg_1m_at_start=load_start
        )
        | {"load_avg_1m_at_end": load_avg()},
        "config": vars(args),
        "median_over_steps_2_on": summary,
        "ratios": {
            "step_time_critic_over_spo": round(c["time/step"] / s["time/step"], 3),
            "train_phase_critic_over_spo": round(c["time/train"] / s["time/train"], 3),
            "critic_share_of_critic_step": round(c["time/critic"] / c["time/step"], 4),
            "critic_state_over_policy_plus_optimizer": (
                memory["critic"]["critic_state_bytes"]
                / (
                    memory["critic"]["policy_parameter_bytes"]
                    + memory["critic"]["optimizer_state_bytes"]
                )
            ),
        },
        "memory": memory,
        "prompts": prompts,
        "rows": rows,
        "note": "shared 2-core machine with other jobs running: absolute times are noisy; "
        "time/step also varies with completion lengths, which differ between the two "
        "policies, so time/critic (measured inside the step) is the cost to read",
    }
    print(json.dumps({"ratios": result["ratios"], "memory": memory}, indent=1))
    write_json(args.out, result)


if __name__ == "__main__":
    main()
