"""cluster.trainer_workers: the update split over trainer ranks equals the single-process one.

Unit level (no Ray, no process group): micro-batch i goes to rank i % W, and with the
mini-batch's global normaliser the ranks' losses and gradients sum to the single-process
loss and gradient. End to end: a local 2-CPU Ray cluster, 2 SPO steps with two gloo trainer
ranks (ddp: bit for bit; fsdp: FSDP2 shards, equal up to bf16 rounding) against the
single-process run, and a sharded checkpoint resumed by a new group.
"""

from __future__ import annotations

import copy
import json
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import pytest
import torch
from test_trainer import REWARD_SRC, tiny_overrides

from spo.policy.batch import pack
from spo.policy.logprobs import completion_logp
from spo.policy.models import load_policy
from spo.train.checkpoint import list_checkpoints
from spo.train.config import ConfigError, load_config
from spo.train.trainer import Trainer
from spo.train.update import LOCAL, Comm, ppo_update, share


class FakeRank(Comm):
    """Rank `rank` of `world`, for `share` alone."""

    def __init__(self, rank: int, world: int, pad: bool = False):
        self.rank, self.world, self.pad = rank, world, pad


class ThreadRank(FakeRank):
    """A rank in a thread: the collectives of `RankComm` over shared memory (sum in rank
    order); gradients are summed as by all-reduce (ddp) or reduce-scatter (fsdp)."""

    def __init__(self, rank: int, world: int, pad: bool, barrier, slots: list):
        super().__init__(rank, world, pad)
        self.barrier, self.slots = barrier, slots

    def gather(self, obj):
        self.slots[self.rank] = obj
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def sum_(self, t):
        parts = self.gather(t.clone())
        return t.copy_(sum(parts[1:], parts[0]))

    def reduce_grads(self, params):
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        parts = self.gather(grads)
        for i, p in enumerate(params):
            p.grad = sum((part[i] for part in parts[1:]), parts[0][i].clone())


class GradRecorder:
    """Optimizer stand-in: records the gradients of each step, changes nothing."""

    def __init__(self, params):
        self.params, self.grads = list(params), []

    def step(self) -> float:
        self.grads.append([p.grad.clone() for p in self.params])
        for p in self.params:
            p.grad = None
        return 0.0


def test_share_gives_micro_batch_i_to_rank_i_mod_w():
    chunks = [torch.tensor([i]) for i in range(5)]
    assert [int(c) for c, _ in share(chunks, FakeRank(0, 2))] == [0, 2, 4]
    assert [int(c) for c, _ in share(chunks, FakeRank(1, 2))] == [1, 3]
    # FSDP: every rank runs as many passes; the extra one repeats chunk 0 and is marked
    padded = share(chunks, FakeRank(1, 2, pad=True))
    assert [(int(c), real) for c, real in padded] == [(1, True), (3, True), (0, False)]
    assert [int(c) for c, _ in share(chunks, LOCAL)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_rank_parts_sum_to_the_single_process_loss_and_gradient(tiny_model_dir, agg):
    cfg = load_config(
        None,
        [
            "samples_per_step=8",
            "optim.updates_per_step=2",
            "optim.micro_batch_size=1",  # 4 micro-batches per mini-batch over 3 ranks
            f"loss.agg={agg}",
        ],
    )
    g = torch.Generator().manual_seed(0)
    lengths = [5, 1, 7, 3, 8, 2, 6, 4]
    completions = [torch.randint(3, 200, (n,), generator=g).tolist() for n in lengths]
    batch = pack([[1, 5, 7, 9]] * 8, completions, pad_id=0)
    adv_B = torch.randn(8, generator=g)

    base, _ = load_policy(str(tiny_model_dir), dtype="float32", device="cpu")

    def run(comm, out, model):
        recorder = GradRecorder(model.parameters())
        grad_passes = [0]

        def logp_fn(sub):
            grad_passes[0] += torch.is_grad_enabled()
            return completion_logp(model, sub)

        stats, old_BT = ppo_update(logp_fn, model, recorder, cfg, batch, adv_B, None, comm=comm)
        out[comm.rank] = stats, old_BT, recorder.grads, grad_passes[0]

    want = {}
    run(LOCAL, want, copy.deepcopy(base))
    want_stats, want_old, want_grads, _ = want[0]
    for pad in (False, True):  # padding passes (FSDP) must add exactly nothing
        barrier, slots, got = threading.Barrier(3, timeout=120), [None] * 3, {}
        with ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(run, ThreadRank(r, 3, pad, barrier, slots), got, copy.deepcopy(base))
                for r in range(3)
            ]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f.exception() for f in done if f.exception() is not None]
            if failed:
                barrier.abort()  # the other ranks stop waiting for the failed one
                raise failed[0]
        # 2 updates x 4 micro-batches: rank 0 runs micro-batches 0 and 3 of each, ranks
        # 1 and 2 one each, plus a padding pass each with FSDP
        assert [got[r][3] for r in range(3)] == ([4, 4, 4] if pad else [4, 2, 2])
        for r in range(3):
            stats, old_BT, grads, _ = got[r]
            assert stats["train/loss"] == pytest.approx(want_stats["train/loss"], rel=1e-5)
            for key in want_stats:
                assert stats[key] == pytest.approx(want_stats[key], rel=1e-5, abs=1e-7), key
            torch.testing.assert_close(old_BT, want_old, rtol=0, atol=0)
            for u in range(2):  # both optimizer steps
                for g, w in zip(grads[u], want_grads[u], strict=True):
                    torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_trainer_workers_need_cluster_ray(tiny_model_dir):
    with pytest.raises(ConfigError, match="cluster=ray"):
        load_config(None, ["cluster.trainer_workers=2"])
    with pytest.raises(ConfigError, match="sharding=ddp"):
        load_config(
            None,
            ["cluster=ray", "cluster.trainer_workers=2", "cluster.sharding=fsdp", "model.lora.r=4"],
        )


# ------------------------------------------------------------------ end to end, on Ray

ray = pytest.importorskip("ray")
STEPS = 2
COMMON = {"steps": STEPS, "threads": 1, "samples_per_step": 8, "checkpoint_every": 1}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-trainer-task")
    rows = [
        {"prompt": f"Say something about {i} and {i * 7 % 13}.", "answer": str(i)}
        for i in range(40)
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "reward.py").write_text(REWARD_SRC)
    return {"data": str(root / "data.jsonl"), "reward": f"{root / 'reward.py'}:reward"}


def _run(cfg):
    trainer = Trainer(cfg)
    prompts, rewards, norms = [], [], []
    try:
        while trainer.step < cfg.steps:
            metrics = trainer.train_step()
            prompts.append(trainer.last_prompt_idx.tolist())
            rewards.append(metrics["reward/mean"])
            norms.append(metrics["train/grad_norm"])
            trainer.save_checkpoint()
    finally:
        trainer.close()
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return prompts, rewards, trainer.tracker.state_dict(), weights, norms


@pytest.fixture(scope="module")
def single_process(tiny_model_dir, task, tmp_path_factory):
    """rounding -> (the single-process run, its run dir), each run once per module."""
    runs = {}

    def get(rounding: str):
        if rounding not in runs:
            run_dir = tmp_path_factory.mktemp(f"single-{rounding}") / "run"
            kw = {**COMMON, "optim.rounding": rounding}
            cfg = load_config(None, tiny_overrides(tiny_model_dir, task, run_dir, **kw))
            runs[rounding] = _run(cfg), run_dir
        return runs[rounding]

    return get


@pytest.fixture(scope="module")
def ray_cluster():
    from spo.rollout.ray_engine import worker_runtime_env

    ray.init(num_cpus=2, include_dashboard=False, runtime_env=worker_runtime_env())
    yield
    ray.shutdown()


def _group_cfg(tiny_model_dir, task, run_dir, sharding, **extra):
    overrides = tiny_overrides(tiny_model_dir, task, run_dir, **{**COMMON, **extra})
    return load_config(
        None,
        [
            *overrides,
            "cluster=ray",
            "cluster.trainer_workers=2",
            f"cluster.sharding={sharding}",
            "cluster.cpus_per_trainer=0.5",  # 2 ranks + 1 rollout actor on 2 CPUs
        ],
    )


def _assert_same_run(got, want, *, weights_atol, weights_rtol=0.0):
    assert got[0] == want[0]  # prompt ids of every step
    assert got[1] == want[1]  # rewards
    for key, value in want[2].items():  # tracker
        assert torch.equal(torch.as_tensor(got[2][key]), torch.as_tensor(value)), key
    assert got[3].keys() == want[3].keys()
    for key in want[3]:
        torch.testing.assert_close(got[3][key], want[3][key], rtol=weights_rtol, atol=weights_atol)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sharding,rounding", [("ddp", "stochastic"), ("fsdp", "nearest"), ("fsdp", "stochastic")]
)
def test_trainer_group_equals_single_process(
    ray_cluster, single_process, tiny_model_dir, task, tmp_path, sharding, rounding
):
    want, single_dir = single_process(rounding)
    extra = {"optim.rounding": rounding}
    cfg = _group_cfg(tiny_model_dir, task, tmp_path / "run", sharding, **extra)
    got = _run(cfg)
    # ddp: with 2 micro-batches on 2 ranks the gradient sum is the single-process one
    # exactly, and every rank draws the single process's rounding bits. fsdp: the gradient
    # forward skips completion_logp's shared-prefix path and the clipping norm is summed
    # from shards, so a few weights land one bf16 step (2^-9 at |w| < 0.5) or one AdamW
    # step (~lr per step) apart; under stochastic rounding each shard also draws its own
    # rounding bits, so many weights land one bf16 step (<= 2^-7 |w|) apart.
    lr = cfg.optim.lr
    if sharding == "ddp":
        _assert_same_run(got, want, weights_atol=0)
    elif rounding == "nearest":
        _assert_same_run(got, want, weights_atol=2**-9 + 2 * STEPS * lr)
    else:
        _assert_same_run(got, want, weights_atol=2 * STEPS * lr, weights_rtol=2**-7)
    # the gradient itself (AdamW would hide a wrong scale in the weights): its norm
    assert got[4] == pytest.approx(want[4], rel=0 if sharding == "ddp" else 1e-2)
    if sharding == "fsdp" and rounding == "nearest":
        diff = [(got[3][k].float() - want[3][k].float()).abs() for k in got[3]]
        frac = float(sum((d > 0).sum() for d in diff) / sum(d.numel() for d in diff))
        print(f"fsdp: {frac:.2%} of the weights differ, max {max(float(d.max()) for d in diff)}")
        assert frac < 0.15, f"{frac:.1%} of the weights differ"

    # resume from a step-1 checkpoint with a fresh group: ddp from the single-process
    # run's (same optimizer format), fsdp from its own (whole state scattered to shards);
    # step 2 is repeated exactly
    import shutil

    source = (single_dir if sharding == "ddp" else tmp_path / "run") / "checkpoints"
    first = list_checkpoints(source)[0]
    resumed = tmp_path / "resumed"
    shutil.copytree(first, resumed / "checkpoints" / first.name)
    again = _run(_group_cfg(tiny_model_dir, task, resumed, sharding, resume=True, **extra))
    assert again[0] == got[0][1:] and again[1] == got[1][1:] and again[4] == got[4][1:]
    for key in got[3]:
        assert torch.equal(again[3][key], got[3][key]), key


@pytest.mark.slow
def test_trainer_group_fails_fast_without_the_gpus(ray_cluster, tiny_model_dir, task, tmp_path):
    from spo.train import TrainError
    from spo.train.distributed import TrainerGroup

    cfg = _group_cfg(tiny_model_dir, task, tmp_path / "run", "ddp")
    cfg.cluster.gpus_per_trainer = 1  # the local cluster has no GPU: Ray would wait forever
    with pytest.raises(TrainError, match="need 2 GPUs; the Ray cluster has 0"):
        TrainerGroup(cfg, str(tiny_model_dir), driver_model=None)
