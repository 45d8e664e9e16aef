"""Episodes outside training (evaluation, calibration, init-values): every episode runs to
its end through the same turn / tool functions as the scheduler; seeds per turn; hung tools."""

from __future__ import annotations

import time

import torch

from spo.rollout import Rollouts, SamplingSettings
from spo.rollout.multiturn import Episodes, ToolOutput, sample_texts, turn_seed


class TurnEngine:
    """Turn t of an episode (t = tool messages in its context so far) writes "call" while
    the episode wants more calls, else "answer <prompt>"; records every call."""

    def __init__(self, wants: dict[int, int]):
        self.wants, self.calls = wants, []

    def generate(self, prompt_tokens, *, seed, sampling=None):
        self.calls.append((len(prompt_tokens), seed, sampling))
        prompt_tokens = (sampling or SamplingSettings()).repeat(prompt_tokens)
        texts = []
        for p in prompt_tokens:
            made = p.count(1) // 3  # each tool message adds three 1s
            texts.append("call" if made < self.wants.get(p[0], 0) else f"answer {p[0]}")
        n = len(prompt_tokens)
        return Rollouts(
            [list(p) for p in prompt_tokens],
            [[7, 8] for _ in range(n)],
            [torch.tensor([-0.1, -0.2]) for _ in range(n)],
            [True] * n,
            texts,
        )


class Tool:
    def __init__(self, sleep: float = 0.0, outcome: str = "ok"):
        self.sleep, self.outcome, self.ran = sleep, outcome, []

    def call(self, sample, text):
        return f"{sample.prompt_tokens[0]}" if text == "call" else None

    def run(self, call):
        self.ran.append(call)
        time.sleep(self.sleep)
        return ToolOutput(f"out {call}", self.outcome)


class Messages:
    def ids(self, output, *, ended):
        return [1, 1, 1]


def test_episodes_run_every_row_to_its_end_one_decode_per_turn():
    engine = TurnEngine({10: 2, 11: 0, 12: 5})
    episodes = Episodes(Tool(), Messages(), max_turns=4, tool_timeout=5.0)
    sampling = SamplingSettings(temperature=0.5, max_new_tokens=9, n=2)
    done = episodes.run(engine, [[10], [11], [12]], seed=3, sampling=sampling)
    assert [s.prompt_tokens for s in done] == [[10], [10], [11], [11], [12], [12]]
    assert [len(s.turn_texts) for s in done] == [3, 3, 1, 1, 4, 4]
    assert [s.stop_reason for s in done] == ["answer"] * 4 + ["max_turns"] * 2
    assert [s.tool_calls for s in done] == [2, 2, 0, 0, 3, 3]  # the last turn's call never runs
    assert done[0].tool_outputs == ["out 10", "out 10"] and done[0].final_text == "answer 10"
    assert done[0].loss_mask == [1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    # one decode per turn over the episodes still going, n=1 rows, a seed per turn
    assert [(rows, seed) for rows, seed, _ in engine.calls] == [
        (6, 3),
        (4, turn_seed(3, 1)),
        (4, turn_seed(3, 2)),
        (2, turn_seed(3, 3)),
    ]
    assert {s for _, _, s in engine.calls} == {SamplingSettings(0.5, None, 9, n=1)}
    assert len({turn_seed(3, t) for t in range(8)}) == 8 and turn_seed(3, 0) == 3


def test_sample_texts_is_plain_generation_without_a_tool_and_last_turns_with_one():
    engine = TurnEngine({10: 1})
    sampling = SamplingSettings(n=2)
    texts, episodes = sample_texts(engine, [[10], [11]], seed=0, sampling=sampling)
    assert episodes is None and texts == ["call", "call", "answer 11", "answer 11"]
    assert engine.calls == [(2, 0, sampling)]  # one call, n rows per prompt asked of the engine
    one_turn = Episodes(Tool(), Messages(), max_turns=1)
    assert sample_texts(engine, [[10]], seed=0, sampling=sampling, episodes=one_turn)[1] is None
    tools = Episodes(Tool(), Messages(), max_turns=3)
    texts, episodes = sample_texts(engine, [[10], [11]], seed=0, sampling=sampling, episodes=tools)
    assert texts == ["answer 10", "answer 10", "answer 11", "answer 11"]
    assert [s.tool_outcomes for s in episodes] == [["ok"], ["ok"], [], []]


def test_a_hung_tool_is_abandoned_as_timeout_and_a_raising_tool_is_an_error():
    class Raising(Tool):
        def run(self, call):
            raise RuntimeError("boom")

    engine = TurnEngine({10: 1})
    hung = Episodes(Tool(sleep=3.0), Messages(), max_turns=2, tool_timeout=0.2)
    t0 = time.perf_counter()
    done = hung.run(engine, [[10]], seed=0, sampling=SamplingSettings())
    assert time.perf_counter() - t0 < 2.5  # did not wait for the hung call
    assert done[0].tool_outcomes == ["timeout"]
    assert done[0].tool_outputs == ["[tool call abandoned: no result after 0.2 s]"]
    done = Episodes(Raising(), Messages(), max_turns=2).run(
        TurnEngine({10: 1}), [[10]], seed=0, sampling=SamplingSettings()
    )
    assert done[0].tool_outcomes == ["error"] and "RuntimeError: boom" in done[0].tool_outputs[0]
