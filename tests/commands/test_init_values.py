"""`spo init-values` samples through the run's configured rollout engine."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from spo.cli import main


@pytest.mark.parametrize("workers", [1, 2])
def test_init_values_uses_the_configured_engine(tiny_model_dir, tmp_path, monkeypatch, workers):
    """cluster.rollout_workers=2 gives the ShardedEngine a run would use (Ray actors: the
    same shards); each chunk of prompts is one call for n0 samples per prompt at the
    run's own sampling settings."""
    import spo.rollout.factory as factory
    from spo.rollout import SamplingSettings
    from spo.rollout.hf import HFEngine
    from spo.rollout.shard import ShardedEngine

    calls, built = [], []
    make_engine = factory.make_engine

    def spy(cfg, *args, **kwargs):
        engine = make_engine(cfg, *args, **kwargs)
        generate = engine.generate

        def recorded(prompt_tokens, *, seed, sampling=None):
            out = generate(prompt_tokens, seed=seed, sampling=sampling)
            calls.append((len(prompt_tokens), sampling, len(out)))
            return out

        engine.generate = recorded
        built.append(engine)
        return engine

    monkeypatch.setattr(factory, "make_engine", spy)
    out = tmp_path / "values.parquet"
    args = [
        f"model.path={tiny_model_dir}",
        "task.name=arithmetic",
        "task.train_size=10",
        "task.test_size=2",
        "rollout.max_new_tokens=4",
        "rollout.batch_size=8",
        "rollout.temperature=0.7",
        "reward.workers=0",
        f"cluster.rollout_workers={workers}",
    ]
    assert main(["init-values", *args, "--samples", "3", "--out", str(out)]) == 0
    assert len(built) == 1
    engine = built[0]
    if workers == 1:
        assert isinstance(engine, HFEngine)
    else:
        assert isinstance(engine, ShardedEngine) and engine.shards == 2
        engine = engine.engine
    assert engine.sampling == SamplingSettings(0.7, 1.0, 4)
    assert [c[1] for c in calls] == [SamplingSettings(n=3)] * len(calls)
    assert sum(c[0] for c in calls) == 10 and all(c[2] == 3 * c[0] for c in calls)
    table = pq.read_table(out).to_pydict()
    assert table["trials"] == [3.0] * 10
    assert all(0 <= s <= 3 for s in table["successes"])
