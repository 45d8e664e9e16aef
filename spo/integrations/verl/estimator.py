"""verl advantage estimator `single_stream_spo`: SPO's advantage (spo-spec.md §4) in verl.

    r_B  = Σ_t token_level_rewards_BT          (the outcome reward, as verl's GRPO reads it)
    A_B  = r_B − reward_baselines_B           (v̂₋₁ of each sample's prompt, in reward units)
    Ã_B  = (A_B − mean A)/(std A + 1e-8)      over the batch's real rows, unbiased std
    adv_BT = Ã_B · response_mask_BT           (broadcast over response tokens); returns = adv

verl's `compute_advantage` passes `reward_baselines` from the batch when present; the
`single_stream_spo` trainer mode fills it from the tracker before the advantage. Rows
without response tokens (verl's synthetic padding rows, `padding_utils`) are left out of
the mean/std and get 0, so padding a batch to a multiple of the data-parallel size does
not change the real rows' advantages. Same numbers as `SPOState.advantages` (the contract
test checks it through verl's own `compute_advantage`); with a `reward_range` other than
(0, 1) they differ only by the scale of the 1e-8 guard.

The name is not "spo": other verl add-ons register that name for *Segment* Policy
Optimization (docs/integrations.md, "Which SPO?").
"""

from __future__ import annotations

import torch
from verl.trainer.ppo.core_algos import register_adv_est

from spo.algo.advantages import SPO_EPS
from spo.integrations.verl.version import require_supported_verl

ESTIMATOR_NAME = "single_stream_spo"


class MissingBaselinesError(ValueError):
    """The estimator ran without the tracker's baselines (one line for people)."""


@register_adv_est(ESTIMATOR_NAME)
def single_stream_spo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    reward_baselines: torch.Tensor | None = None,
    config=None,
    index=None,
    **_ignored,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages_BT, returns_BT) for verl: token_level_rewards (B, T), response_mask (B, T),
    reward_baselines (B,) tracker values in reward units. `config`/`index` (verl's uids) are
    accepted and unused: the baseline already carries the prompt's identity."""
    require_supported_verl()
    if reward_baselines is None:
        raise MissingBaselinesError(
            f"algorithm.adv_estimator={ESTIMATOR_NAME} needs the tracker's baselines "
            "(batch['reward_baselines']); run it with "
            f"trainer.v1.trainer_mode={ESTIMATOR_NAME}, which fills them"
        )
    mask_BT = response_mask.to(token_level_rewards.dtype)
    reward_B = token_level_rewards.sum(dim=-1)
    baseline_B = reward_baselines.to(device=reward_B.device, dtype=reward_B.dtype).reshape(-1)
    if baseline_B.shape != reward_B.shape:
        raise MissingBaselinesError(
            f"reward_baselines has {baseline_B.numel()} values for {reward_B.numel()} rows; "
            "give one baseline per row"
        )
    with torch.no_grad():
        adv_B = reward_B - baseline_B
        real_B = response_mask.bool().any(dim=-1)
        norm_B = torch.zeros_like(adv_B)
        if int(real_B.sum()) >= 2:  # std of one sample is undefined: no signal, not NaN
            a = adv_B[real_B]
            norm_B[real_B] = (a - a.mean()) / (a.std() + SPO_EPS)
        adv_BT = norm_B.unsqueeze(-1) * mask_BT
    return adv_BT, adv_BT
