"""The trainer as a Ray actor group: `cluster=ray cluster.trainer_workers=W` (W > 1).

The driver keeps everything but the update: tracker, sampler, rewards, rollout engines,
the linear loop, and a CPU copy of the policy that feeds the engines, evaluation and
checkpoints. `TrainerGroup` replaces `spo.train.update.LocalUpdate` (same `update` and
`logp` methods): W `TrainerRank` actors, one per GPU (`cluster.gpus_per_trainer=1`,
NCCL) or CPU slot (gloo), joined by `torch.distributed`, each with the policy and an
optimizer. Each step the driver puts the packed batch and advantages (and behaviour
log-probs when the loss needs them) into the Ray object store once; every rank runs
`ppo_update` on its micro-batches (i % W), the gradients are summed across ranks, every
rank takes the same optimizer step, and rank 0 returns the stats, the pre-update
log-probs and the new weights, which the driver loads into its copy before it syncs the
engines as in a single-process run.

cluster.sharding
    ddp   every rank holds the whole model and a `MasterWeightAdamW`; gradients are
          all-reduced (summed) before the step, so rank 0's optimizer state is the
          single-process one and checkpoints are interchangeable.
    fsdp  torch FSDP2 (`fully_shard`) per decoder layer plus a root around
          `completion_logp` (embeddings, final norm, LM head): parameters, gradients
          (reduce-scattered, summed) and the fp32 masters / AdamW moments of
          `ShardedMasterWeightAdamW` live in 1/W shards. Weights and optimizer state are
          gathered whole for the driver and checkpoints, and scattered back on resume.
          Under FSDP every rank must run the same number of forward/backward passes, so
          a rank with fewer micro-batches runs padding passes that add nothing.
"""

from __future__ import annotations

import socket
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from spo.policy.batch import PackedBatch
from spo.policy.logprobs import completion_logp
from spo.policy.weights import is_peft, load_policy_weights, policy_weights
from spo.train.optim import MasterWeightAdamW, optimizer_from_config
from spo.train.update import Comm, ppo_update, rows_logp


class RankComm(Comm):
    """`Comm` over the default torch.distributed process group (see spo.train.update)."""

    def __init__(self, device: torch.device, *, fsdp: bool):
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device, self.fsdp = device, fsdp
        self.pad = fsdp  # FSDP's collectives need the same passes on every rank

    def sum_(self, t: Tensor) -> Tensor:
        buf = t.to(self.device)
        dist.all_reduce(buf)
        if buf is not t:
            t.copy_(buf)
        return t

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def reduce_grads(self, params) -> None:
        if self.fsdp:  # FSDP reduce-scattered them during backward
            return
        for p in params:  # a rank without micro-batches in this mini-batch adds zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        # In the gradients' own dtype, as DDP does: with W micro-batches and W ranks the
        # sum is the single-process accumulation exactly (addition of two is symmetric).
        works = [dist.all_reduce(p.grad, async_op=True) for p in params]
        for w in works:
            w.wait()


class ShardedMasterWeightAdamW(MasterWeightAdamW):
    """`MasterWeightAdamW` over FSDP2 parameters (DTensor shards): masters, moments and
    the update stay sharded (DTensor ops); only the clipping norm needs a reduction."""

    def _rounding_seed(self) -> int:
        # each shard holds different weights: its own bits, not a copy of rank 0's
        return (super()._rounding_seed() * 8191 + dist.get_rank()) % (1 << 63)

    def grad_norm(self, grads: list[Tensor]) -> float:
        sq = torch.zeros((), dtype=torch.float32, device=self.masters[0].device)
        for g in grads:
            sq += (g.to_local() if hasattr(g, "to_local") else g).float().pow(2).sum()
        dist.all_reduce(sq)
        return float(sq.sqrt())


class LogpRoot(nn.Module):
    """`completion_logp` as a module forward, so FSDP's root hooks gather the parameters
    that the decoder layers do not own (embeddings, final norm, tied LM head) around it."""

    def __init__(self, policy: nn.Module, temperature: float):
        super().__init__()
        self.policy, self.temperature = policy, temperature

    def forward(self, batch: PackedBatch) -> Tensor:
        return completion_logp(
            self.policy,
            batch,
            temperature=self.temperature,
            share_prefix=not torch.is_grad_enabled(),  # see completion_logp
        )


def shard_policy(policy: nn.Module, temperature: float, device: torch.device) -> LogpRoot:
    """FSDP2 units: each decoder layer, then the root (everything else)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    base = policy.get_base_model() if is_peft(policy) else policy
    layers = getattr(getattr(base, base.base_model_prefix, None), "layers", None)
    if layers is None:
        raise ValueError(
            f"cluster.sharding=fsdp needs a decoder with .layers; {type(base).__name__} "
            "has none (use cluster.sharding=ddp)"
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    root = LogpRoot(policy, temperature)
    fully_shard(root, mesh=mesh)
    for module in root.modules():
        if isinstance(module, FSDPModule):  # sum, not mean: losses carry the normaliser
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
    return root


def _map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _whole_cpu(t: Tensor) -> Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu()


class TrainerRank:
    """Body of one trainer actor (see the module docstring)."""

    def __init__(self, cfg: Any, rank: int, world: int):
        c = cfg.cluster
        self.cfg, self.rank, self.world = cfg, rank, world
        torch.set_num_threads(cfg.threads or max(1, int(c.cpus_per_trainer)))
        self.device = torch.device("cuda" if c.gpus_per_trainer else "cpu")

    def master_address(self) -> str:
        """A tcp:// address on this (rank 0's) node for the process group rendezvous."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def setup(self, init_method: str, model_source: str) -> None:
        from spo.policy.models import load_policy

        cfg, cuda = self.cfg, self.device.type == "cuda"
        if cuda and not torch.cuda.is_available():
            raise RuntimeError(f"trainer rank {self.rank} has no CUDA device")
        if cuda:
            torch.cuda.set_device(0)  # Ray shows each actor its own GPU as device 0
            self.device = torch.device("cuda", 0)
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            init_method=init_method,
            rank=self.rank,
            world_size=self.world,
        )
        fsdp = cfg.cluster.sharding == "fsdp"
        # fsdp loads on the CPU and shards onto the device: each GPU holds 1/W of it
        policy, _ = load_policy(
            model_source,
            dtype=cfg.model.dtype,
            device="cpu" if fsdp else str(self.device),
            attn_implementation="sdpa" if cuda else None,
        )
        if cfg.model.lora.r and not is_peft(policy):
            from spo.policy.lora import apply_lora

            policy = apply_lora(policy, cfg.model.lora, seed=cfg.seed)
        temperature = cfg.rollout.temperature or 1.0
        self.policy = policy
        if fsdp:
            self.model = shard_policy(policy, temperature, self.device)
            self.logp_fn = self.model
        else:
            self.model = policy
            self.logp_fn = lambda sub: completion_logp(policy, sub, temperature=temperature)
        opt = ShardedMasterWeightAdamW if fsdp else MasterWeightAdamW
        self.optimizer = optimizer_from_config(self.model.parameters(), cfg, opt)
        self.comm = RankComm(self.device, fsdp=fsdp)

    def _weights(self) -> dict[str, Tensor] | None:
        """The whole state dict on rank 0 (under FSDP a collective every rank joins)."""
        if self.comm.fsdp or self.rank == 0:
            weights = policy_weights(self.policy)
        return weights if self.rank == 0 else None

    def update(self, batch, adv_B, behaviour_logp_BT, stale_B, shuffle_seed=None):
        stats, old_logp_BT = ppo_update(
            self.logp_fn,
            self.model,
            self.optimizer,
            self.cfg,
            batch,
            adv_B,
            behaviour_logp_BT,
            stale_B,
            comm=self.comm,
            shuffle_seed=shuffle_seed,  # the same on every rank: the same mini-batches
        )
        weights = self._weights()
        return (stats, old_logp_BT, weights) if self.rank == 0 else None

    def logp(self, batch: PackedBatch) -> Tensor | None:
        out = rows_logp(self.logp_fn, batch, self.cfg.optim.micro_batch_size, self.comm)
        return out if self.rank == 0 else None

    def optimizer_state(self) -> dict | None:
        state = self.optimizer.state_dict()
        if self.comm.fsdp:
            state = _map_tensors(state, _whole_cpu)  # collective, in the same order
        return _map_tensors(state, lambda t: t.detach().cpu()) if self.rank == 0 else None

    def load_optimizer_state(self, state: dict) -> None:
        if self.comm.fsdp:  # whole tensors -> this rank's shards, laid out like the masters
            from torch.distributed.tensor import distribute_tensor

            def like(i, t):
                m = self.optimizer.masters[int(i)]
                if not isinstance(t, Tensor) or t.shape != m.shape:
                    return t  # e.g. AdamW's scalar step
                return distribute_tensor(
                    t.to(m.device), m.device_mesh, m.placements, src_data_rank=None
                )

            state = {
                **state,
                "masters": {i: like(i, t) for i, t in state["masters"].items()},
                "inner": {
                    **state["inner"],
                    "state": {
                        i: {k: like(i, v) for k, v in s.items()}
                        for i, s in state["inner"]["state"].items()
                    },
                },
            }
        self.optimizer.load_state_dict(state)


def _check_resources(ray, c: Any) -> None:
    """Fail now, not hang: Ray waits forever for actors the cluster cannot place."""
    from spo.train import TrainError

    have = ray.cluster_resources()
    for name, per_rank, per_worker in (
        ("GPU", c.gpus_per_trainer, c.gpus_per_worker),
        ("CPU", c.cpus_per_trainer, c.cpus_per_worker),
    ):
        need = c.trainer_workers * per_rank + c.rollout_workers * per_worker
        if need > have.get(name, 0):
            key = f"{name.lower()}s_per_trainer"
            raise TrainError(
                f"{c.trainer_workers} trainer ranks x cluster.{key}={per_rank} + "
                f"{c.rollout_workers} rollout actors x cluster.{name.lower()}s_per_worker="
                f"{per_worker} need {need:g} {name}s; the Ray cluster has "
                f"{have.get(name, 0):g} (lower them or add nodes)"
            )


class TrainerGroup:
    """Driver side of the group; `update`/`logp` as `spo.train.update.LocalUpdate`, and
    `state_dict`/`load_state_dict` of the (whole) optimizer state for checkpoints."""

    def __init__(self, cfg: Any, model_source: str, driver_model: nn.Module):
        from spo.rollout.ray_engine import connect

        c = cfg.cluster
        self.ray = ray = connect(c)
        self.model = driver_model
        _check_resources(ray, c)
        actor = ray.remote(TrainerRank).options(
            num_cpus=c.cpus_per_trainer, num_gpus=c.gpus_per_trainer
        )
        self.ranks = [actor.remote(cfg, r, c.trainer_workers) for r in range(c.trainer_workers)]
        init_method = self._get(self.ranks[0].master_address.remote())
        self._call("setup", init_method, model_source)

    def _get(self, refs):
        from spo.train import TrainError

        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None) or e
            first = str(cause).strip().splitlines()[-1] if str(cause).strip() else repr(cause)
            raise TrainError(f"trainer group (cluster.trainer_workers): {first}") from None

    def _call(self, method: str, *args):
        """Every rank runs `method(*args)` (the arguments are put in the object store
        once); returns rank 0's result."""
        refs = [self.ray.put(a) for a in args]
        return self._get([getattr(r, method).remote(*refs) for r in self.ranks])[0]

    def update(self, batch, adv_B, behaviour_logp_BT, stale_B=None, *, shuffle_seed=None):
        stats, old_logp_BT, weights = self._call(
            "update", batch, adv_B, behaviour_logp_BT, stale_B, shuffle_seed
        )
        load_policy_weights(self.model, weights)
        return stats, old_logp_BT

    def logp(self, batch: PackedBatch) -> Tensor:
        return self._call("logp", batch)

    def state_dict(self) -> dict:
        return self._call("optimizer_state")

    def load_state_dict(self, state: dict) -> None:
        self._call("load_optimizer_state", state)

    def close(self) -> None:
        for r in self.ranks:
            self.ray.kill(r)
        self.ranks = []
