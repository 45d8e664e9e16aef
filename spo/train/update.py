"""The policy update of one step (PPO-clip over mini-batches) and the no-grad re-scoring
passes, written once for one process and for a group of trainer ranks.

`ppo_update` runs `optim.updates_per_step` optimizer steps on equal mini-batches of a
seeded random permutation of the batch (`minibatch_rows`; the trainer seeds it from
(seed, step), so a resumed run draws the same ones; with one update per step the
mini-batch is the whole batch and nothing is permuted). Each mini-batch is cut into
micro-batches (`PackedBatch.micro_batches`: rows of similar length together). With one
process (`LOCAL`) every micro-batch runs here. In a trainer group
(`spo.train.distributed`, `cluster.trainer_workers = W`) micro-batch i runs on rank
i % W; every micro-batch loss is divided by the *whole* mini-batch's normaliser (tokens
for token-mean, non-empty rows for seq-mean), so the gradients the ranks sum are the
single-process gradient, term for term; then every rank takes the same optimizer step.

    loss_mb = sum over micro-batches m of  sum_{tokens in m} l_t / N_mb
    grad    = sum over ranks r of  sum_{m : m % W == r} d loss_m      (all-reduce / FSDP)

`Comm` is the seam: the single-process one is a no-op, `spo.train.distributed.RankComm`
all-reduces over torch.distributed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spo.algo import ppo_clip_loss, tis_weight
from spo.policy.batch import PackedBatch
from spo.policy.logprobs import completion_logp

LogpFn = Callable[[PackedBatch], Tensor]  # differentiable completion log-probs, (B, T)


class Comm:
    """One process: rank 0 of 1; every reduction is the identity."""

    rank = 0
    world = 1
    pad = False  # True: every rank runs as many passes as the busiest one (FSDP collectives)

    def sum_(self, t: Tensor) -> Tensor:
        """All-reduce (sum) `t` in place across ranks and return it."""
        return t

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank, in rank order."""
        return [obj]

    def reduce_grads(self, params: Sequence[Tensor]) -> None:
        """Sum the gradients of `params` across ranks (no-op where FSDP already did)."""


LOCAL = Comm()


def share(chunks: Sequence[Tensor], comm: Comm = LOCAL) -> list[tuple[Tensor, bool]]:
    """This rank's (row index set, real) pairs: chunk i belongs to rank i % world.

    With `comm.pad` every rank gets the same number of pairs; the missing ones repeat
    chunks[0] with real=False: they run forward/backward for the collectives only and
    contribute nothing."""
    mine = [(c, True) for i, c in enumerate(chunks) if i % comm.world == comm.rank]
    if comm.pad and chunks:
        rounds = -(-len(chunks) // comm.world)
        mine += [(chunks[0], False)] * (rounds - len(mine))
    return mine


def rows_logp(logp_fn: LogpFn, batch: PackedBatch, rows: int, comm: Comm = LOCAL) -> Tensor:
    """No-grad completion log-probs of the whole batch, (B, T) float32 on the CPU, scored
    in contiguous chunks of `rows` sequences (bounded memory; chunk i on rank i % world)."""
    mask_BT = batch.completion_mask_BT
    out_BT = torch.zeros(mask_BT.shape, dtype=torch.float32)
    with torch.no_grad():
        for idx, real in share(list(torch.arange(len(batch)).split(rows)), comm):
            lp = logp_fn(batch.select(idx))
            if real:
                out_BT[idx, : lp.shape[1]] = lp.float().cpu()
    return comm.sum_(out_BT)


def minibatch_rows(B: int, n_updates: int, shuffle_seed: int | None) -> list[Tensor]:
    """The rows of each of `n_updates` equal mini-batches of a batch of B: a permutation of
    0..B-1 drawn from `shuffle_seed` cut into n_updates parts (batch order when the seed is
    None or n_updates == 1). Batch order would be priority (draw) order for SPO: the first
    mini-batch would hold the highest-priority prompts."""
    if shuffle_seed is None or n_updates == 1:
        order = torch.arange(B)
    else:
        order = torch.randperm(B, generator=torch.Generator().manual_seed(shuffle_seed))
    mb = B // n_updates  # config makes B a multiple of n_updates (samples_per_step)
    return [order[u * mb : (u + 1) * mb] for u in range(n_updates)]


def ppo_update(
    logp_fn: LogpFn,
    model: torch.nn.Module,
    optimizer,
    cfg: Any,
    batch: PackedBatch,
    adv_B: Tensor,
    behaviour_logp_BT: Tensor | None,
    stale_B: Tensor | None = None,
    comm: Comm = LOCAL,
    shuffle_seed: int | None = None,
) -> tuple[dict[str, float], Tensor]:
    """PPO-clip updates over `cfg.optim.updates_per_step` mini-batches (`minibatch_rows`
    of `shuffle_seed`); returns stats and the pre-update log-probs (needed by the
    drift/replay estimators), in batch order, on every rank.

    Rows marked in `stale_B` (async rollouts older than rollout.max_staleness) take
    their behaviour log-probs (`behaviour_logp_BT`) as old_logp: the importance ratio is
    against the policy that sampled them. With loss.tis_cap, tokens are weighted by the
    truncated ratio of trainer to engine log-probs. `cfg` is a TrainConfig."""
    B = adv_B.shape[0]
    n_updates = cfg.optim.updates_per_step
    micro = cfg.optim.micro_batch_size
    dev = next(model.parameters()).device  # bookkeeping stays on the CPU
    mask_BT = batch.completion_mask_BT
    old_logp_BT = torch.zeros(mask_BT.shape, dtype=torch.float32)
    if n_updates > 1:  # later mini-batches need log-probs of the policy before the step
        with torch.no_grad():
            for idx, real in share(batch.micro_batches(0, B, micro), comm):
                lp = logp_fn(batch.select(idx))
                if real:
                    old_logp_BT[idx, : lp.shape[1]] = lp.cpu()
        comm.sum_(old_logp_BT)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    sums: dict[str, float] = {}
    losses, grad_norms = [], []
    for rows_u in minibatch_rows(B, n_updates, shuffle_seed):
        mb_mask = mask_BT[rows_u]
        # The mini-batch's global normaliser makes micro-batch losses sum to the exact
        # mini-batch aggregate (tokens for token-mean, non-empty rows for seq-mean).
        normalizer = float(
            mb_mask.sum() if cfg.loss.agg == "token-mean" else (mb_mask.sum(1) > 0).sum()
        )
        loss_total = 0.0
        for idx, real in share(batch.micro_batches_of(rows_u, micro), comm):
            sub = batch.select(idx)
            logp_bt = logp_fn(sub)
            T = logp_bt.shape[1]
            if n_updates == 1:  # on-policy: the pre-update log-probs are these, detached
                old_bt = logp_bt.detach().cpu()
                if real:
                    old_logp_BT[idx, :T] = old_bt
            else:
                old_bt = old_logp_BT[idx, :T]
            if stale_B is not None:
                old_bt = torch.where(stale_B[idx, None], behaviour_logp_BT[idx, :T], old_bt)
            old_bt = old_bt.to(dev)
            sub_mask_bt = sub.completion_mask_BT.to(dev)
            weight_bt, tis_stats = None, {}
            if cfg.loss.tis_cap:
                weight_bt, tis_stats = tis_weight(
                    old_bt,
                    behaviour_logp_BT[idx, :T].to(dev),
                    sub_mask_bt,
                    tis_cap=cfg.loss.tis_cap,
                )
            loss, stats = ppo_clip_loss(
                logp_bt,
                old_bt,
                adv_B[idx].to(dev),
                sub_mask_bt,
                eps_low=cfg.loss.eps_low,
                eps_high=cfg.loss.eps_high,
                dual_clip=cfg.loss.dual_clip,
                agg=cfg.loss.agg,
                normalizer=max(normalizer, 1.0),
                weight_BT=weight_bt,
            )
            if not real:  # a padding pass: runs the collectives, adds nothing
                (loss * 0.0).backward()
                continue
            loss.backward()
            loss_total += float(loss.detach())
            for key, value in {**stats, **tis_stats}.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(idx)
        comm.reduce_grads(params)
        grad_norms.append(optimizer.step())
        losses.append(loss_total)
    model.eval()
    if n_updates == 1:
        comm.sum_(old_logp_BT)
    sums, losses = _merge(comm.gather((sums, losses)))
    out = {f"train/{k}": v / B for k, v in sums.items()}
    out["train/loss"] = float(np.mean(losses))
    out["train/grad_norm"] = float(np.mean(grad_norms))
    return out, old_logp_BT


def _merge(parts: list[tuple[dict[str, float], list[float]]]):
    """Per-rank (stat sums, per-update loss sums) -> their totals, added in rank order."""
    sums: dict[str, float] = {}
    losses = [0.0] * len(parts[0][1])
    for rank_sums, rank_losses in parts:
        for key, value in rank_sums.items():
            sums[key] = sums.get(key, 0.0) + value
        losses = [a + b for a, b in zip(losses, rank_losses, strict=True)]
    return sums, losses


class LocalUpdate:
    """The update in this process (`cluster.trainer_workers=1`); `TrainerGroup` in
    `spo.train.distributed` has the same two methods."""

    def __init__(self, model: torch.nn.Module, optimizer, cfg: Any):
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        temperature = cfg.rollout.temperature or 1.0
        self.logp_fn = lambda sub: completion_logp(model, sub, temperature=temperature)

    def update(self, batch, adv_B, behaviour_logp_BT, stale_B=None, *, shuffle_seed=None):
        return ppo_update(
            self.logp_fn,
            self.model,
            self.optimizer,
            self.cfg,
            batch,
            adv_B,
            behaviour_logp_BT,
            stale_B,
            shuffle_seed=shuffle_seed,
        )

    def logp(self, batch: PackedBatch) -> Tensor:
        return rows_logp(self.logp_fn, batch, self.cfg.optim.micro_batch_size)
