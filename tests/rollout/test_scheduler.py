"""RolloutScheduler with a scripted engine and tools (no model): admission order, group
barriers, staleness drop / reweight, concurrency, hung tools, state round trip."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from spo.rollout import Rollouts
from spo.rollout.multiturn import ToolOutput
from spo.rollout.scheduler import InlineExecutor, RolloutScheduler
from spo.tasks.rewards import RewardResult
from spo.train.checkpoint import read_state, write_state

P = 32


class ScriptedEngine:
    """Every turn is the two tokens [2, 3] ending with eos; log-prob depends on the context."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompt_tokens, *, seed):
        self.calls += 1
        n = len(prompt_tokens)
        return Rollouts(
            prompt_tokens=[list(p) for p in prompt_tokens],
            completion_ids=[[2, 3] for _ in range(n)],
            logp=[torch.tensor([-0.01 * len(p), -0.5]) for p in prompt_tokens],
            finished=[True] * n,
            texts=["turn"] * n,
        )


class ScriptedTool:
    """Sample uid makes `calls[uid]` tool calls, each sleeping `sleep[uid]` seconds."""

    def __init__(self, calls=None, sleep=None, default_calls=0):
        self.calls, self.sleep, self.default_calls = calls or {}, sleep or {}, default_calls

    def call(self, sample, text):
        n = self.calls.get(sample.uid, self.default_calls)
        return str(sample.uid) if sample.tool_calls < n else None

    def run(self, call):
        time.sleep(self.sleep.get(int(call), 0.0))
        return f"out {call}"


class RecordingMessages:
    def __init__(self):
        self.outputs = []

    def ids(self, output, *, ended):
        self.outputs.append(output)
        return [1, 1, 1]


def lowest_free(k, eligible):
    free = np.arange(P) if eligible is None else np.flatnonzero(eligible)
    return free[:k]


def score(samples):
    return RewardResult(np.array([s.prompt_idx % 2 for s in samples], dtype=np.float32), 0, 0)


def make(tool=None, executor=None, **kw):
    args = {
        "engine": ScriptedEngine(),
        "prompt_tokens": [[100 + p] for p in range(P)],
        "draw": lowest_free,
        "score": score,
        "samples_per_step": 4,
        "batch_size": 8,
        "in_flight": 8,
        "max_turns": 4,
        "env": tool or ScriptedTool(),
        "messages": RecordingMessages(),
        "executor": executor or InlineExecutor(),
        **kw,
    }
    return RolloutScheduler(**args)


def invariant(s: RolloutScheduler) -> None:
    acc = s.accounting()
    assert np.array_equal(acc["issued"], acc["trained"] + acc["dropped"] + acc["in_flight"])


def test_async_admits_first_finished_and_keeps_stragglers_in_flight():
    tool = ScriptedTool(calls=dict.fromkeys(range(4), 1), sleep=dict.fromkeys(range(4), 0.6))
    s = make(tool, ThreadPoolExecutor(8))
    try:
        fb = s.next_batch(0)
        # the first finished, not the stragglers (no wall-clock bound: it fails under load)
        assert [x.uid for x in fb.samples] == [4, 5, 6, 7]
        assert fb.group_id_B.tolist() == [0, 1, 2, 3]
        assert fb.reward.reward_B.tolist() == [0, 1, 0, 1]
        acc = s.accounting()
        assert acc["in_flight"][:4].tolist() == [1, 1, 1, 1]  # stragglers still in flight
        invariant(s)
        fb2 = s.next_batch(1)  # refilled slots (never the busy prompts 0-3) finish first
        assert [x.prompt_idx for x in fb2.samples] == [4, 5, 6, 7]
        assert [x.uid for x in fb2.samples] == [8, 9, 10, 11]
        time.sleep(0.7)
        fb3 = s.next_batch(2)  # now the stragglers are done: admitted, staleness 2
        assert [x.uid for x in fb3.samples] == [0, 1, 2, 3]
        assert fb3.staleness_B.tolist() == [2, 2, 2, 2]
        assert all(x.tool_calls == 1 for x in fb3.samples)
        invariant(s)
    finally:
        s.close()


def test_sync_waits_for_the_whole_batch():
    tool = ScriptedTool(calls={0: 1}, sleep={0: 0.4})
    s = make(tool, ThreadPoolExecutor(8), mode="sync", samples_per_step=8)
    try:
        fb = s.next_batch(0)
        assert sorted(x.uid for x in fb.samples) == list(range(8))
        assert fb.stats["rollout/engine_idle_fraction"] > 0.5  # waited on one straggler
        assert s.accounting()["in_flight"].sum() == 0
    finally:
        s.close()


def test_tool_calls_run_concurrently():
    tool = ScriptedTool(default_calls=1, sleep=dict.fromkeys(range(8), 0.3))
    s = make(tool, ThreadPoolExecutor(8), mode="sync", samples_per_step=8)
    try:
        t = time.perf_counter()
        s.next_batch(0)
        assert time.perf_counter() - t < 1.2  # 8 x 0.3 s one after the other would be 2.4 s
    finally:
        s.close()


def test_group_barrier_waits_for_every_member():
    # group 0 = uids 0, 1; uid 1 is slow: group 0 must not be admitted without it
    tool = ScriptedTool(calls={1: 1}, sleep={1: 0.5})
    s = make(tool, ThreadPoolExecutor(8), group_size=2)
    try:
        fb = s.next_batch(0)
        assert [x.uid for x in fb.samples] == [2, 3, 4, 5]
        assert fb.group_id_B.tolist() == [0, 0, 1, 1]
        assert [x.prompt_idx for x in fb.samples] == [1, 1, 2, 2]
        assert 0 in {x.uid for x in s.done}  # finished, waiting at the barrier
        time.sleep(0.6)
        fb = s.next_batch(1)  # group of prompt 3 (complete since step 1), then prompt 0's
        assert [x.uid for x in fb.samples] == [6, 7, 0, 1]
        assert fb.group_id_B.tolist() == [0, 0, 1, 1]
        invariant(s)
    finally:
        s.close()


def stale_setup(slow=range(4, 8), **kw):
    """Step 1 trains uids 0-3; uids 4-7 decoded one turn at version 0 and stay in flight
    (uids in `slow` make 3 tool calls, the others none)."""
    tool = ScriptedTool(calls=dict.fromkeys(slow, 3))
    s = make(tool, max_staleness=1, **kw)
    fb = s.next_batch(0)
    assert [x.uid for x in fb.samples] == [0, 1, 2, 3]
    assert all(x.turn_versions == [0] for x in s.pool)
    return s


def test_stale_samples_are_dropped_and_their_prompts_reissued():
    s = stale_setup(staleness="drop")
    fb = s.next_batch(2)
    assert fb.stats["rollout/dropped"] == 4
    assert [x.prompt_idx for x in fb.samples] == [4, 5, 6, 7]  # the same prompts, fresh samples
    assert [x.uid for x in fb.samples] == [8, 9, 10, 11]
    assert fb.staleness_B.tolist() == [0, 0, 0, 0] and not fb.stale_B.any()
    acc = s.accounting()
    assert acc["dropped"][4:8].tolist() == [1, 1, 1, 1]
    invariant(s)


def test_stale_samples_are_reweighted_with_behaviour_logp():
    s = stale_setup(range(4, 12), staleness="reweight")  # refills are slower than 4-7
    fb = s.next_batch(2)
    assert [x.uid for x in fb.samples] == [4, 5, 6, 7]
    assert fb.stale_B.all() and fb.staleness_B.tolist() == [2, 2, 2, 2]
    sample = fb.samples[0]
    assert sample.turn_versions == [0, 2, 2, 2]  # 3 tool calls, max_turns 4
    # behaviour log-probs on generated tokens, 0 on tool tokens, mask marks which is which
    assert sample.loss_mask == [1, 1, 0, 0, 0] * 3 + [1, 1]
    lp = fb.rollouts.logp[0]
    assert torch.all(lp[torch.tensor(sample.loss_mask) == 0] == 0)
    assert lp[0] == pytest.approx(-0.01)  # first turn decoded from the 1-token prompt
    invariant(s)


def test_every_tool_hangs_and_the_step_still_finishes():
    tool = ScriptedTool(default_calls=10, sleep=dict.fromkeys(range(64), 2.0))
    s = make(tool, ThreadPoolExecutor(4), tool_timeout=0.2, max_turns=3)
    try:
        t = time.perf_counter()
        fb = s.next_batch(0)
        assert time.perf_counter() - t < 1.5
        assert all(x.stop_reason == "max_turns" and x.tool_calls == 2 for x in fb.samples)
        assert fb.stats["rollout/tools_abandoned"] >= 8
        assert all("abandoned" in o for o in s.messages.outputs)
    finally:
        s.close()


def test_real_sandbox_timeouts_never_deadlock(tiny_model_dir):
    from transformers import AutoTokenizer

    from spo.rollout.multiturn import PythonTool, ToolMessages
    from spo.tools import ToolRunner

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    code = tok("```python\nwhile True: pass\n```", add_special_tokens=False)["input_ids"]

    class CodeEngine(ScriptedEngine):
        def generate(self, prompt_tokens, *, seed):
            out = super().generate(prompt_tokens, seed=seed)
            out.completion_ids = [[*code, tok.eos_token_id] for _ in prompt_tokens]
            out.logp = [torch.zeros(len(code) + 1) for _ in prompt_tokens]
            out.texts = ["```python\nwhile True: pass\n```"] * len(prompt_tokens)
            return out

    runner = ToolRunner(3, timeout_s=0.5, cpu_s=0.5)
    s = make(
        PythonTool(runner),
        ThreadPoolExecutor(4),
        engine=CodeEngine(),
        messages=ToolMessages(tok),
        max_turns=3,
        in_flight=4,
    )
    try:
        fb = s.next_batch(0)
        for x in fb.samples:
            assert x.tool_calls == 2 and x.stop_reason == "max_turns"
            assert tok.decode(x.completion_ids).count("time limit") == 2
    finally:
        s.close()


def test_state_round_trip_continues_identically(tmp_path):
    a = stale_setup(staleness="reweight")
    write_state(tmp_path, {"rollout": a.state_dict()})
    b = make(ScriptedTool(calls=dict.fromkeys(range(4, 8), 3)), max_staleness=1)
    b.load_state_dict(read_state(tmp_path)["rollout"])
    for version in (1, 2):
        fa, fb = a.next_batch(version), b.next_batch(version)
        assert [x.to_state() for x in fa.samples] == [x.to_state() for x in fb.samples]
    for key, value in a.accounting().items():
        assert np.array_equal(value, b.accounting()[key]), key


class OutcomeTool:
    """Per uid a list of outcomes, one per call: "ok"/"error"/"timeout"/"killed" as a
    `ToolOutput`, "str" as a plain string, "raise" as an exception, "hang" never returns."""

    def __init__(self, script):
        self.script = script

    def call(self, sample, text):
        plan = self.script.get(sample.uid, [])
        return f"{sample.uid}:{sample.tool_calls}" if sample.tool_calls < len(plan) else None

    def run(self, call):
        uid, i = map(int, call.split(":"))
        outcome = self.script[uid][i]
        if outcome == "raise":
            raise RuntimeError("boom")
        if outcome == "hang":
            time.sleep(5)
        if outcome == "str":
            return f"plain {call}"
        return ToolOutput(f"{outcome} {call}", outcome)


def test_tool_metrics_and_transcripts_of_a_scripted_step():
    script = {0: ["ok", "error"], 1: ["timeout"], 2: [], 3: ["killed", "raise", "str"]}
    s = make(OutcomeTool(script), samples_per_step=4, in_flight=4, max_turns=4)
    fb = s.next_batch(0)
    by_uid = {x.uid: x for x in fb.samples}
    assert sorted(by_uid) == [0, 1, 2, 3]
    # turns: 3, 2, 1, 4 (uid 3's fourth turn calls nothing: the script is done)
    st = fb.stats
    assert st["tools/turns_per_episode"] == pytest.approx((3 + 2 + 1 + 4) / 4)
    assert st["tools/call_rate"] == pytest.approx(6 / 10)
    assert st["tools/episodes_with_calls"] == pytest.approx(3 / 4)
    assert st["tools/episodes_code_ok"] == 0.0  # uid 0 has an error, uid 3 a kill
    assert (st["tools/calls_ok"], st["tools/calls_error"]) == (2.0, 2.0)  # str = ok; raise = error
    assert (st["tools/calls_timeout"], st["tools/calls_killed"]) == (1.0, 1.0)
    assert st["rollout/tool_calls"] == 6.0  # the scheduler's own count agrees
    t3 = by_uid[3].transcript()
    assert [m["role"] for m in t3] == ["assistant", "tool"] * 3 + ["assistant"]
    assert [m["content"] for m in t3 if m["role"] == "tool"] == [
        "killed 3:0",
        "[tool error: RuntimeError: boom]",
        "plain 3:2",
    ]
    assert [m["outcome"] for m in t3 if m["role"] == "tool"] == ["killed", "error", "ok"]
    assert by_uid[2].transcript() == [{"role": "assistant", "content": "turn"}]


def test_abandoned_tool_call_counts_as_timeout_and_all_ok_episodes_count():
    script = {0: ["hang"], 1: ["ok"], 2: ["ok", "ok"], 3: []}
    s = make(
        OutcomeTool(script),
        ThreadPoolExecutor(4),
        samples_per_step=4,
        in_flight=4,
        tool_timeout=0.2,
    )
    try:
        st = s.next_batch(0).stats
    finally:
        s.close()
    assert st["tools/calls_timeout"] == 1.0 and st["tools/calls_ok"] == 3.0
    assert st["tools/episodes_code_ok"] == pytest.approx(2 / 4)  # uids 1, 2
    assert st["rollout/tools_abandoned"] == 1.0


def test_single_turn_runs_log_no_tool_metrics():
    s = make(None, max_turns=1, env=None, messages=None)
    assert not any(k.startswith("tools/") for k in s.next_batch(0).stats)
