"""verl reward function for the spo-rl arithmetic task (`reward.custom_reward_function`).

1.0 when the last integer of the reply equals the reference answer, else 0.0 — the
verifier `spo train` uses for `task.name=arithmetic` (spo.tasks.arithmetic).
"""

from __future__ import annotations

from spo.tasks.arithmetic import arithmetic_answer


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **_ignored) -> float:
    return float(arithmetic_answer(solution_str) == str(ground_truth))
