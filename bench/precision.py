"""bf16 training with fp32 master weights tracks fp32 training; plain bf16 AdamW does not (issue 6).

One fixed batch of SPO rollouts of the embedded SmolLM2-135M-Instruct (arithmetic, sampled
once by the bf16 engine and scored by the task's verifier) is trained on for `--updates`
PPO-clip updates, the same way `Trainer._update` does (micro-batches, token-mean loss,
the demo's lr / clipping), by three arms that start from the same weights:

  fp32            fp32 weights and matmuls, torch AdamW (the reference)
  bf16+masters SR bf16 weights and matmuls, `MasterWeightAdamW`, masters rounded into the
                  model stochastically (what spo-rl trains with: optim.rounding=stochastic)
  bf16+masters RN the same with round-to-nearest (optim.rounding=nearest)
  bf16 AdamW      bf16 weights, torch AdamW directly on them (the negative control)

Recorded per update: the PPO loss and the mean log-prob change of the batch's completion
tokens since the start (both under each arm's own weights). The summary gives the largest
gap to the fp32 curve, relative to how far the fp32 curve moved, and the wall time per
update of each arm.

Run from the repository root (about 12 minutes on 2 cores):

    .venv/bin/python bench/precision.py        # writes bench/results/precision.{json,md}
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import torch
from common import RESULTS, load_avgs, machine, write_json


def _rollouts(args):
    import numpy as np

    from spo.algo import ADVANTAGES
    from spo.policy.batch import pack
    from spo.policy.models import DEFAULT_MODEL, encode_prompts, load_policy
    from spo.rollout.hf import HFEngine
    from spo.tasks import load_task
    from spo.tasks.rewards import RewardPool

    model, tok = load_policy(DEFAULT_MODEL, dtype="bfloat16")
    task = load_task("arithmetic", train_size=256, test_size=8, seed=args.seed)
    examples = task.train[: args.samples]
    prompts = encode_prompts(tok, [ex.prompt for ex in examples])
    engine = HFEngine(model, tok, max_new_tokens=args.new_tokens, temperature=1.0)
    rollouts = engine.generate(prompts, seed=args.seed)
    with RewardPool(task.verifier, timeout=5.0, workers=1) as pool:
        reward_B = torch.tensor(
            np.asarray(pool(rollouts.texts, examples).reward_B), dtype=torch.float32
        )
    baseline_B = torch.full_like(reward_B, float(reward_B.mean()))
    adv_B = ADVANTAGES["spo"](reward_B, baseline_B=baseline_B, group_id_B=None)
    batch = pack(rollouts.prompt_tokens, rollouts.completion_ids, pad_id=tok.pad_token_id)
    return batch, adv_B, float(reward_B.mean())


def _arm(name: str, batch, adv_B, args) -> dict:
    from spo.algo import ppo_clip_loss
    from spo.policy.logprobs import completion_logp
    from spo.policy.models import DEFAULT_MODEL, load_policy
    from spo.train.optim import MasterWeightAdamW

    dtype = "float32" if name == "fp32" else "bfloat16"
    model, _ = load_policy(DEFAULT_MODEL, dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    masters = name.startswith("bf16+masters")
    if masters:
        rounding = "stochastic" if name.endswith("SR") else "nearest"
        opt = MasterWeightAdamW(
            params, lr=args.lr, max_grad_norm=1.0, rounding=rounding, seed=args.seed
        )
    else:
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    B = len(batch)
    mask_BT = batch.completion_mask_BT
    normalizer = float(mask_BT.sum())

    def logp_all(policy):
        out = torch.zeros(mask_BT.shape)
        with torch.no_grad():
            for idx in batch.micro_batches(0, B, args.micro):
                lp = completion_logp(policy, batch.select(idx))
                out[idx, : lp.shape[1]] = lp
        return out

    def delta(policy) -> float:
        return float(((logp_all(policy) - old_BT) * mask_BT).sum() / mask_BT.sum())

    # the fp32 masters evaluated in fp32: what the optimizer has learned, before the
    # rounding into the bf16 copy the model computes with
    shadow = load_policy(DEFAULT_MODEL, dtype="float32")[0] if masters else None
    old_BT = logp_all(model)
    losses, dlogp, dlogp_masters, seconds = [], [], [], []
    model.train()
    for _ in range(args.updates):
        t0 = time.perf_counter()
        opt.zero_grad()
        total = 0.0
        for idx in batch.micro_batches(0, B, args.micro):
            sub = batch.select(idx)
            lp = completion_logp(model, sub)
            T = lp.shape[1]
            loss, _ = ppo_clip_loss(
                lp, old_BT[idx, :T], adv_B[idx], sub.completion_mask_BT, normalizer=normalizer
            )
            loss.backward()
            total += float(loss.detach())
        if masters:
            opt.step()
        else:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        seconds.append(time.perf_counter() - t0)
        losses.append(total)
        model.eval()
        dlogp.append(delta(model))
        if shadow is not None:
            with torch.no_grad():
                for dst, master in zip(shadow.parameters(), opt.masters, strict=True):
                    dst.copy_(master)
            dlogp_masters.append(delta(shadow))
        model.train()
        print(
            f"  {name:13s} update {len(losses):2d}: loss {total:+.5f}  Δlogp {dlogp[-1]:+.5f}",
            flush=True,
        )
    out = {"loss": losses, "delta_logp": dlogp, "s_per_update": sum(seconds) / len(seconds)}
    if dlogp_masters:
        out["delta_logp_masters_fp32"] = dlogp_masters
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--updates", type=int, default=8)
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-5, help="the demo's learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "precision.json"))
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    batch, adv_B, reward_mean = _rollouts(args)
    print(f"batch: {len(batch)} samples, reward mean {reward_mean:.3f}", flush=True)
    names = ("fp32", "bf16+masters SR", "bf16+masters RN", "bf16 AdamW")
    arms = {name: _arm(name, batch, adv_B, args) for name in names}
    ref = arms["fp32"]
    moved = max(abs(x) for x in ref["delta_logp"]) or 1.0
    for arm in arms.values():
        gap = max(abs(a - b) for a, b in zip(arm["delta_logp"], ref["delta_logp"], strict=True))
        arm["max_gap_delta_logp"] = gap
        arm["max_gap_relative"] = gap / moved
        if "delta_logp_masters_fp32" in arm:
            pairs = zip(arm["delta_logp_masters_fp32"], ref["delta_logp"], strict=True)
            arm["masters_max_gap_relative"] = max(abs(a - b) for a, b in pairs) / moved
        arm["speedup_vs_fp32"] = ref["s_per_update"] / arm["s_per_update"]
    result = {
        "benchmark": "precision",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine("cpu_count", "platform", "torch"),
        "load_avg": load_avgs(),
        "settings": vars(args) | {"reward_mean": reward_mean},
        "arms": arms,
    }
    out = write_json(args.out, result)
    lines = [
        "# bf16 + fp32 master weights vs fp32 (issue 6)",
        "",
        f"{result['date']}, torch {torch.__version__}, load average {result['load_avg']}. "
        f"SmolLM2-135M-Instruct, one fixed batch of {len(batch)} SPO samples (arithmetic, "
        f"{args.new_tokens} new tokens), {args.updates} PPO-clip updates at lr {args.lr:g}.",
        "",
        "Δlogp: mean change of the batch's completion-token log-probs since the start, "
        "under each arm's own weights: for the bf16+masters arms the bf16 model the trainer "
        "computes and samples with (in brackets: the fp32 masters evaluated in fp32). SR = "
        "stochastic rounding of the masters into the model (the default), RN = "
        "round-to-nearest.",
        "",
        "| update | " + " | ".join(f"{n} loss | {n} Δlogp" for n in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    for i in range(args.updates):
        cells = []
        for a in arms.values():
            d = f"{a['delta_logp'][i]:+.4f}"
            if "delta_logp_masters_fp32" in a:
                d += f" ({a['delta_logp_masters_fp32'][i]:+.4f})"
            cells += [f"{a['loss'][i]:+.4f}", d]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| arm | s/update | speed vs fp32 | max gap to fp32's Δlogp, / fp32's movement |",
        "|---|---|---|---|",
    ]
    for name, a in arms.items():
        gap = f"{100 * a['max_gap_relative']:.0f}%"
        if "masters_max_gap_relative" in a:
            gap += f" (masters: {100 * a['masters_max_gap_relative']:.0f}%)"
        lines.append(f"| {name} | {a['s_per_update']:.1f} | {a['speedup_vs_fp32']:.2f}x | {gap} |")
    lines += ["", "Command:", "", "```", "python bench/precision.py", "```", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
