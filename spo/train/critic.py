"""The critic arm's baseline in the trainer: V(x) from a value head on the policy's trunk.

One step of `algo=critic` (the hooks in `spo.train.trainer`):

    baseline_B = critic.read(prompt_idx_B)    # h(x) under the policy BEFORE its update, V₋₁
    adv_B      = spo_advantage(reward_B, baseline_B)       # same normalisation as SPO
    ... PPO update of the policy (unchanged) ...
    stats      = critic.fit(reward_B)         # Adam on the head, on the features read above

Which V, and why: a linear head on the policy's own final hidden state at the prompt's
last token (`spo.policy.features.prompt_hidden`), with the trunk DETACHED — the head trains,
the policy does not see its loss. Alternatives weighed:
- a value head whose MSE also trains the shared trunk (PPO's usual actor-critic): the
  policy's representation and gradient would then differ from SPO's, so a comparison of
  the two arms would no longer isolate the baseline; it also needs a value-loss weight.
- a separate value model: a second trunk, its own forward and backward each step and
  its own optimizer — for a 135M policy that is another 135M parameters plus fp32 Adam
  state (about 2 GB), to learn one number per prompt.
The detached probe costs D + 1 parameters and 2(D + 1) Adam moments (577 and 1,154 for
SmolLM2-135M, a few KB) and one no-grad forward over the step's prompt tokens (no
response, no LM head); the head's fit is a (B, D) matmul. Measured side by side with SPO:
bench/critic_cost.py, bench/results/critic_cost.json. The features move with the policy,
so the head refits every step (Adam state carried over).

What it trades against the tracker: V has no per-prompt memory. Prompts with similar
features get similar V — it can value a prompt it has never drawn (the tracker gives
those its prior) and it needs no revisits, but it cannot learn what the policy's
representation does not show (a prompt-specific quirk), and its fit is a compromise
across prompts where the tracker's estimate is each prompt's own.

No leakage: V₋₁ is read before `fit` sees the step's rewards, from features computed
before the policy update. Resume is exact: the head's θ, feature scale and Adam state are
checkpointed (`state_dict`), and the features are a deterministic function of the
restored weights.

Metrics (`fit`): critic/loss (MSE of the V₋₁ the advantage used, before fitting),
critic/fit_loss (after), critic/value_mean, time/critic (read + fit). The within-batch
variance keys (var/reward, var/residual = Var(r − b), var/ratio) are not computed here:
the step metrics compute them for every algorithm from the baseline b passed to the
advantage, which for this arm is V₋₁, so tracker and critic share one definition.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from spo.algo.critic import ValueHead
from spo.policy.features import prompt_hidden


class Critic:
    """A `ValueHead` on prompt features of `model`, keyed by prompt index."""

    key = "critic"  # its entry in the checkpoint state

    def __init__(
        self,
        model,
        prompt_tokens: Sequence[Sequence[int]],
        *,
        pad_id: int,
        micro_batch_size: int,
        lr: float,
        updates_per_step: int,
        init_value: float,
    ):
        self.model, self.prompt_tokens = model, prompt_tokens
        self.pad_id, self.micro_batch_size = pad_id, micro_batch_size
        self.head = ValueHead(
            model.config.hidden_size,
            lr=lr,
            updates_per_step=updates_per_step,
            init_value=init_value,
        )
        self._read: tuple[torch.Tensor, torch.Tensor, float] | None = None

    def hidden(self, prompt_idx) -> torch.Tensor:
        """h_BD of these prompts under the model's current weights (duplicates computed once)."""
        uniq, inv = np.unique(np.asarray(prompt_idx, dtype=np.int64), return_inverse=True)
        h_UD = prompt_hidden(
            self.model,
            [self.prompt_tokens[i] for i in uniq],
            pad_id=self.pad_id,
            micro_batch_size=self.micro_batch_size,
        )
        return h_UD[torch.from_numpy(inv.reshape(-1))]

    def values(self, prompt_idx) -> torch.Tensor:
        """V of these prompts read together as one batch (current policy and head), (B,)
        float32; the features are centred on the batch (`spo.algo.critic`)."""
        return self.head.value(self.hidden(prompt_idx))

    def read(self, prompt_idx_B) -> torch.Tensor:
        """baseline_B = V₋₁ of the step's samples, before the policy update and the fit;
        the features are kept for `fit`."""
        t0 = time.perf_counter()
        hidden_BD = self.hidden(prompt_idx_B)
        baseline_B = self.head.value(hidden_BD)
        self._read = (hidden_BD, baseline_B, time.perf_counter() - t0)
        return baseline_B

    def fit(self, reward_B: torch.Tensor) -> dict[str, float]:
        """Fit the head to this step's rewards on the features `read` kept; the step's
        critic metrics."""
        if self._read is None:
            raise RuntimeError("Critic.fit needs read() of the same step first")
        (hidden_BD, baseline_B, read_s), self._read = self._read, None
        t0 = time.perf_counter()
        fit = self.head.fit(hidden_BD, reward_B)
        return {
            "critic/loss": fit["loss"],
            "critic/fit_loss": fit["fit_loss"],
            "critic/value_mean": float(baseline_B.mean()),
            "time/critic": read_s + time.perf_counter() - t0,
        }

    def state_dict(self) -> dict:
        return self.head.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state)


def make_critic(cfg, model, prompt_tokens: Sequence[Sequence[int]], pad_id: int) -> Critic:
    """The critic of a TrainConfig: `critic.*` keys, micro-batches of optim.micro_batch_size."""
    c = cfg.critic
    return Critic(
        model,
        prompt_tokens,
        pad_id=pad_id,
        micro_batch_size=cfg.optim.micro_batch_size,
        lr=c.lr,
        updates_per_step=c.updates_per_step,
        init_value=c.init_value,
    )
