"""The trainer with the rollout scheduler: async SPO / GRPO, staleness, multi-turn tools,
exactly-once tracker updates and lossless resume of in-flight samples (tiny random Llama)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import test_trainer
import torch
from test_trainer import params_of, tiny_overrides

import spo.train.trainer as trainer_module
import spo.train.update as update_module
from spo.policy.batch import pack
from spo.policy.logprobs import completion_logp
from spo.rollout import Rollouts
from spo.train.config import load_config
from spo.train.trainer import Trainer

task_files = test_trainer.task_files  # the fixture, shared

ASYNC = {
    "rollout.mode": "async",
    "samples_per_step": 6,
    "rollout.batch_size": 4,
    "rollout.in_flight": 14,
    "tracker.rho": "constant",
    "tracker.rho_constant": 1.0,  # then tracker count = prior + number of updates, exactly
}


def make(tiny_model_dir, task_files, run_dir, **extra) -> Trainer:
    overrides = tiny_overrides(tiny_model_dir, task_files, run_dir, **{**ASYNC, **extra})
    return Trainer(load_config(None, overrides))


def check_accounting(trainer: Trainer) -> dict[str, np.ndarray]:
    acc = trainer.scheduler.accounting()
    assert np.array_equal(acc["issued"], acc["trained"] + acc["dropped"] + acc["in_flight"])
    assert int(acc["trained"].sum()) == trainer.samples_seen
    return acc


def test_async_spo_trains_and_updates_tracker_once_per_sample(tiny_model_dir, task_files, tmp_path):
    trainer = make(tiny_model_dir, task_files, tmp_path / "run", steps=3)
    before = params_of(trainer.model)
    try:
        trainer.run()
        acc = check_accounting(trainer)
        assert trainer.samples_seen == 18
        assert acc["in_flight"].sum() > 0  # unfinished samples stay in flight
        # exactly one tracker update per trained sample (rho = 1: N = prior + updates)
        n = len(trainer.train_examples)
        counts = trainer.tracker.count(np.arange(n)) - trainer.cfg.tracker.prior_count
        np.testing.assert_allclose(counts, acc["trained"], atol=1e-5)
        after = params_of(trainer.model)
        assert any(not torch.equal(before[k], after[k]) for k in before)
        lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        assert '"rollout/engine_idle_fraction"' in lines[-1]
    finally:
        trainer.close()


def test_async_grpo_admits_whole_groups(tiny_model_dir, task_files, tmp_path, monkeypatch):
    trainer = make(
        tiny_model_dir, task_files, tmp_path / "run", algo="grpo", steps=2, samples_per_step=8
    )
    seen = []
    real = trainer.scheduler.next_batch

    def spy(version):
        fb = real(version)
        seen.append(fb)
        return fb

    monkeypatch.setattr(trainer.scheduler, "next_batch", spy)
    try:
        trainer.run()
        for fb in seen:
            assert len(fb.samples) == 8
            for g in range(2):  # two complete groups of 4, one prompt each
                members = [
                    s for s, gid in zip(fb.samples, fb.group_id_B.tolist(), strict=True) if gid == g
                ]
                assert len(members) == 4 and len({s.prompt_idx for s in members}) == 1
                assert len({s.group for s in members}) == 1
        check_accounting(trainer)
    finally:
        trainer.close()


def test_resume_keeps_in_flight_samples(tiny_model_dir, task_files, tmp_path):
    """k steps + checkpoint + resume == N straight steps: same tracker, same accounting,
    every issued sample trained once, dropped-and-counted, or still in flight."""

    def run(run_dir, steps, resume=False):
        trainer = make(tiny_model_dir, task_files, run_dir, steps=steps, resume=resume)
        try:
            trainer.run()
            return trainer, check_accounting(trainer)
        finally:
            trainer.close()

    straight, acc_a = run(tmp_path / "a", 4)
    _, acc_first = run(tmp_path / "b", 2)
    assert acc_first["in_flight"].sum() > 0  # the checkpoint really held in-flight samples
    resumed, acc_b = run(tmp_path / "b", 4, resume=True)
    for key in acc_a:
        assert np.array_equal(acc_a[key], acc_b[key]), key
    for key, value in straight.tracker.state_dict().items():
        assert np.array_equal(np.asarray(value), np.asarray(resumed.tracker.state_dict()[key])), key
    a, b = params_of(straight.model), params_of(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_stale_samples_train_against_behaviour_logp(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    trainer = make(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        steps=3,
        **{"rollout.max_staleness": 0, "rollout.staleness": "reweight"},
    )
    captured = []
    real_loss = update_module.ppo_clip_loss

    def spy(logp, old, adv, mask, **kw):
        captured.append((logp.detach().clone(), old.clone(), mask.clone()))
        return real_loss(logp, old, adv, mask, **kw)

    real_next = trainer.scheduler.next_batch
    batches = []

    def next_spy(version):
        fb = real_next(version)
        batches.append(fb)
        return fb

    monkeypatch.setattr(update_module, "ppo_clip_loss", spy)
    monkeypatch.setattr(trainer.scheduler, "next_batch", next_spy)
    try:
        trainer.run()
    finally:
        trainer.close()
    stale_seen = False
    micro = trainer.cfg.optim.micro_batch_size
    for step, fb in enumerate(batches):
        # micro-batches take rows in order of sequence length (PackedBatch.micro_batches)
        pairs = zip(fb.rollouts.prompt_tokens, fb.rollouts.completion_ids, strict=True)
        seq_len = torch.tensor([len(p) + len(c) for p, c in pairs])
        order = torch.argsort(seq_len, stable=True).tolist()
        for row, is_stale in enumerate(fb.stale_B.tolist()):
            pos = order.index(row)
            logp, old, _ = captured[step * 2 + pos // micro]  # 6 rows = 2 micro-batches
            r = pos % micro
            n = len(fb.rollouts.logp[row])
            if is_stale:
                stale_seen = True
                assert fb.staleness_B[row] > 0
                assert torch.equal(old[r, :n], fb.rollouts.logp[row])  # behaviour log-probs
            else:  # on-policy: old_logp is the current policy's own (detached) log-prob
                assert torch.equal(old[r, :n], logp[r, :n])
    assert stale_seen


def test_stale_samples_are_dropped_and_reissued(tiny_model_dir, task_files, tmp_path):
    trainer = make(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        steps=4,
        **{"rollout.max_staleness": 0, "rollout.staleness": "drop", "rollout.in_flight": 16},
    )
    try:
        trainer.run()
        acc = check_accounting(trainer)
        assert acc["dropped"].sum() > 0
    finally:
        trainer.close()


TOOL_TURN = "<|im_start|>tool\n"


class ForcedTurns:
    """Wraps an engine: `write(context text)` gives a model turn to teacher-force (with its
    true log-probs under the model), or None to sample it normally."""

    def __init__(self, engine, model, tokenizer, write):
        self.engine, self.model, self.tokenizer, self.write = engine, model, tokenizer, write

    def generate(self, prompt_tokens, *, seed, sampling=None):
        if sampling is not None:  # n rows per prompt, each generated as one
            prompt_tokens = sampling.repeat(prompt_tokens)
            sampling = dataclasses.replace(sampling, n=1)
        written = {}
        for i, ctx in enumerate(prompt_tokens):
            text = self.write(self.tokenizer.decode(ctx))
            if text is not None:
                written[i] = text
        free = [i for i in range(len(prompt_tokens)) if i not in written]
        free_tokens = [prompt_tokens[i] for i in free]
        out = self.engine.generate(free_tokens, seed=seed, sampling=sampling) if free else None
        ids, logp = [None] * len(prompt_tokens), [None] * len(prompt_tokens)
        fin, texts = [True] * len(prompt_tokens), [""] * len(prompt_tokens)
        if written:
            forced = sorted(written)
            turn_ids = [
                self.tokenizer(written[i], add_special_tokens=False)["input_ids"]
                + [self.tokenizer.eos_token_id]
                for i in forced
            ]
            batch = pack(
                [prompt_tokens[i] for i in forced], turn_ids, pad_id=self.tokenizer.pad_token_id
            )
            with torch.no_grad():
                lp = completion_logp(self.model, batch)
            for row, i in enumerate(forced):
                ids[i], logp[i], texts[i] = turn_ids[row], lp[row, : len(turn_ids[row])], written[i]
        for row, i in enumerate(free):
            ids[i], logp[i] = out.completion_ids[row], out.logp[row]
            fin[i], texts[i] = out.finished[row], out.texts[row]
        return Rollouts([list(p) for p in prompt_tokens], ids, logp, fin, texts)


def tool_turns_of_episode(trainer, context: str) -> int:
    """Tool messages in `context` after the prompt (the few-shot prefix has its own)."""
    prefix = trainer.tokenizer.decode(trainer.prompt_tokens[0]).count(TOOL_TURN)
    return context.count(TOOL_TURN) - prefix


def needs_sandbox() -> None:
    from spo.tools.sandbox import available_isolation

    if all(reason is not None for reason in available_isolation().values()):
        pytest.skip(f"no isolated sandbox level works here: {available_isolation()}")


def tool_trainer(tiny_model_dir, task_files, run, **extra) -> Trainer:
    """arithmetic_tool, 3 turns, the real sandbox, on the tiny model."""
    tool = {
        "task.name": "arithmetic_tool",
        "task.reward_fn": None,
        "rollout.max_turns": 3,
        "rollout.tool_timeout": 10,
    }
    return Trainer(
        load_config(None, tiny_overrides(tiny_model_dir, task_files, run, **tool, **extra))
    )


def even_answers(trainer, preamble: str = ""):
    """A forced episode: turn 1 runs the question's expression, turn 2 answers with the
    tool's output when it is even and with output + 1 when odd (so exactly the even answers
    score 1)."""
    import re

    def write(ctx: str) -> str | None:
        calls = tool_turns_of_episode(trainer, ctx)
        if calls == 0:
            expression = re.findall(r"What is ([^?]+)\?", ctx)[-1]
            return f"{preamble}```python\nprint({expression})\n```"
        if calls == 1:
            out = int(ctx.rsplit(TOOL_TURN, 1)[1].split("<|im_end|>")[0])
            return str(out if out % 2 == 0 else out + 1)
        return None

    return write


def test_tool_task_trains_with_masked_tool_tokens(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    """arithmetic_tool, 3 turns, the real sandbox: tool tokens are context only, and the
    training log-probs of the generated ids equal the behaviour log-probs."""
    overrides = tiny_overrides(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        **{
            **ASYNC,
            "task.name": "arithmetic_tool",
            "task.reward_fn": None,
            "rollout.max_turns": 3,
            "rollout.tool_timeout": 10,
            "steps": 2,
        },
    )
    trainer = Trainer(load_config(None, overrides))
    sched = trainer.scheduler
    code = "```python\nprint(6*7)\n```"
    sched.engine = ForcedTurns(
        trainer.engine,
        trainer.model,
        trainer.tokenizer,
        lambda ctx: code if tool_turns_of_episode(trainer, ctx) == 0 else None,
    )
    batches = []
    real_next = sched.next_batch

    def next_spy(version):
        fb = real_next(version)
        batches.append(fb)
        return fb

    monkeypatch.setattr(sched, "next_batch", next_spy)
    try:
        metrics = trainer.run()
    finally:
        trainer.close()
    assert metrics["rollout/tool_calls_per_sample"] == 1.0
    fb = batches[0]
    s = fb.samples[0]
    decoded = trainer.tokenizer.decode(s.completion_ids)
    assert "<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n" in decoded
    # the mask is 0 exactly on the tool message, 1 on both model turns
    n_code = len(trainer.tokenizer("```python\nprint(6*7)\n```")["input_ids"]) + 1
    tool_ids = trainer.engine.tokenizer(
        "\n<|im_start|>tool\n42<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False
    )["input_ids"]
    assert s.loss_mask == [1] * n_code + [0] * len(tool_ids) + [1] * (
        len(s.completion_ids) - n_code - len(tool_ids)
    )
    assert s.completion_ids[n_code : n_code + len(tool_ids)] == tool_ids
    # log-probs of the packed multi-turn batch at generated ids == behaviour log-probs
    # (first policy version: the weights that sampled step 1 are gone, so re-create them)
    model0, _ = trainer_module.load_policy(str(tiny_model_dir), dtype="bfloat16")
    batch = pack(
        fb.rollouts.prompt_tokens, fb.rollouts.completion_ids, pad_id=0, loss_mask=fb.loss_mask
    )
    with torch.no_grad():
        lp = completion_logp(model0, batch)
    mask = batch.completion_mask_BT
    assert torch.all(lp[mask == 0] == 0)
    for row in range(len(fb.samples)):
        n = len(fb.rollouts.logp[row])
        m = mask[row, :n] > 0
        torch.testing.assert_close(lp[row, :n][m], fb.rollouts.logp[row][m], atol=0.05, rtol=0)


def test_tool_episode_scores_and_trains_end_to_end_with_fewshot_prefix(
    tiny_model_dir, task_files, tmp_path, monkeypatch
):
    """arithmetic_tool with its few-shot prefix and the real sandbox: each episode's first
    turn runs the question's expression, the second answers with the tool's output when it
    is even and with output + 1 when odd, so exactly the even answers score 1; the tool
    metrics say so in metrics.jsonl, samples.jsonl holds the transcripts with the tool
    output as the model saw it, the weights move, and the few-shot prefix sits in the
    prompt tokens, outside the trained completion mask."""
    import json

    needs_sandbox()
    run = tmp_path / "run"
    trainer = tool_trainer(
        tiny_model_dir, task_files, run, **ASYNC, steps=2, **{"log.samples_per_step": 2}
    )
    write = even_answers(trainer, "I will run it.\n")

    trainer.scheduler.engine = ForcedTurns(trainer.engine, trainer.model, trainer.tokenizer, write)
    packed = []
    real_pack = trainer_module.pack

    def pack_spy(*args, **kw):
        packed.append(real_pack(*args, **kw))
        return packed[-1]

    monkeypatch.setattr(trainer_module, "pack", pack_spy)
    batches = []
    real_next = trainer.scheduler.next_batch

    def next_spy(version):
        batches.append(real_next(version))
        return batches[-1]

    monkeypatch.setattr(trainer.scheduler, "next_batch", next_spy)
    before = params_of(trainer.model)
    fewshot = trainer.task.fewshot
    try:
        trainer.run()
    finally:
        trainer.close()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "tools/calls_ok" in r]
    assert len(train_rows) == 2
    by_prompt = {ex.prompt: ex for ex in trainer.train_examples}
    for r, fb in zip(train_rows, batches, strict=True):
        answers = [int(trainer.train_examples[s.prompt_idx].answer) for s in fb.samples]
        want = [float(a % 2 == 0) for a in answers]
        assert fb.reward.reward_B.tolist() == want
        assert r["reward/mean"] == pytest.approx(np.mean(want))
        assert r["tools/calls_ok"] == 6.0 and r["tools/calls_error"] == 0.0
        assert r["tools/calls_timeout"] == 0.0 and r["tools/calls_killed"] == 0.0
        assert r["tools/turns_per_episode"] == 2.0 and r["tools/call_rate"] == 0.5
        assert r["tools/episodes_with_calls"] == 1.0 and r["tools/episodes_code_ok"] == 1.0
    after = params_of(trainer.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    train = [x for x in samples if x["split"] == "train"]
    assert len(train) == 4
    for x in train:
        answer = int(by_prompt[x["prompt"]].answer)
        said = str(answer if answer % 2 == 0 else answer + 1)
        code, tool, final = x["transcript"]
        assert code["role"] == "assistant" and "```python" in code["content"]
        assert tool == {"role": "tool", "content": str(answer), "outcome": "ok"}
        assert final == {"role": "assistant", "content": said} and x["completion"] == said
        assert x["reward"] == float(answer % 2 == 0)
    # the few-shot prefix is prompt: before each row's completion start, never in the mask
    shot = trainer.tokenizer(fewshot[1]["content"], add_special_tokens=False)["input_ids"]
    for batch in packed:
        for b in range(len(batch)):
            start = int(batch.seq_start_B[b])
            prompt = batch.input_ids_BL[b, start : int(batch.completion_start_B[b])].tolist()
            assert any(prompt[i : i + len(shot)] == shot for i in range(len(prompt)))
            trained = batch.completion_ids_BT[b][batch.completion_mask_BT[b] > 0].tolist()
            assert fewshot[1]["content"] not in trainer.tokenizer.decode(trained)
            assert "print(" in trainer.tokenizer.decode(trained)  # the episode's own code


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_config_rejects_replay_with_tools(tiny_model_dir, task_files, tmp_path, mode):
    from spo.train.config import ConfigError

    overrides = tiny_overrides(
        tiny_model_dir,
        task_files,
        tmp_path / "run",
        **{"rollout.mode": mode, "rollout.max_turns": 2, "tracker.rho": "replay"},
    )
    with pytest.raises(ConfigError, match="replay"):
        load_config(None, overrides)


def test_evaluation_runs_tool_episodes_with_the_real_sandbox(tiny_model_dir, task_files, tmp_path):
    """Held-out evaluation of a tool run plays whole episodes, as training does: the first
    turn runs the question's expression in the sandbox, the second answers with the tool
    output when it is even (output + 1 when odd), so greedy and avg@k are the share of even
    answers; tools/* describe the episodes; eval rows in samples.jsonl hold transcripts.
    With tools=False (the reference) the same model answers in one turn: the code itself,
    never a number, scores 0 and no tool runs."""
    import json

    needs_sandbox()
    run = tmp_path / "run"
    trainer = tool_trainer(tiny_model_dir, task_files, run, **{"log.samples_per_step": 3})
    write = even_answers(trainer)

    trainer.engine = ForcedTurns(trainer.engine, trainer.model, trainer.tokenizer, write)
    try:
        with_tool = trainer.evaluate(k=2)
        without = trainer.evaluate(k=2, tools=False)
    finally:
        trainer.close()
    even = np.mean([int(ex.answer) % 2 == 0 for ex in trainer.eval_examples])
    assert 0 < even < 1
    assert with_tool["greedy"] == pytest.approx(even)
    assert with_tool["avg@2"] == pytest.approx(even)
    assert with_tool["tools/turns_per_episode"] == 2.0
    assert with_tool["tools/episodes_code_ok"] == 1.0 and with_tool["tools/calls_ok"] == 2 * len(
        trainer.eval_examples
    )
    assert without["greedy"] == 0.0 and without["avg@2"] == 0.0
    assert not any(key.startswith("tools/") for key in without)
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    episodes = [r for r in rows if r["split"] == "eval" and "transcript" in r]
    assert len(episodes) == 3
    for r in episodes:
        code, tool, final = r["transcript"]
        assert "```python" in code["content"] and tool["outcome"] == "ok"
        assert r["completion"] == final["content"]


def test_tool_output_clip_reaches_the_runner_and_is_validated(tiny_model_dir, tmp_path):
    """rollout.tool_output_chars bounds every tool message (and so the context a long
    print() can build); 0 is a one-line config error."""
    from transformers import AutoTokenizer

    from spo.train.config import ConfigError, tool_episodes

    base = [f"model.path={tiny_model_dir}", "task.name=arithmetic_tool", "rollout.max_turns=2"]
    cfg = load_config(None, [*base, "rollout.tool_output_chars=100"])
    episodes = tool_episodes(cfg, AutoTokenizer.from_pretrained(tiny_model_dir))
    assert episodes.env.runner.max_output_chars == 100
    assert tool_episodes(load_config(None, base[:2]), None) is None  # no tool, no sandbox
    with pytest.raises(ConfigError, match=r"rollout\.tool_output_chars must be > 0"):
        load_config(None, [*base, "rollout.tool_output_chars=0"])
