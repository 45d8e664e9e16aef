"""Fixtures for the verl contract tests: real verl (imported, never mocked), real
TransferQueue on a local CPU Ray, verl's own Hydra config, tiny parquet datasets.

These tests need `pip install 'spo-rl[verl]'` (its own virtualenv: `make test-verl`); in
the default environment every module here skips with that hint.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def verl_config(*overrides: str):
    """verl's ppo_trainer config, composed by Hydra as `main_ppo` does, plus overrides."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=list(overrides))


def write_parquet(path, rows: list[dict]) -> str:
    """verl's RL data layout: data_source, prompt (chat messages), reward_model, extra_info."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def verl_rows(n: int, *, index=lambda i: i, start: int = 0) -> list[dict]:
    """n distinct arithmetic prompts; index(i) -> extra_info.index (None leaves it out)."""
    rows = []
    for i in range(start, start + n):
        extra = {"split": "train"} if index(i) is None else {"split": "train", "index": index(i)}
        rows.append(
            {
                "data_source": "arithmetic",
                "prompt": [{"role": "user", "content": f"What is {i} + {2 * i}?"}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(3 * i)},
                "extra_info": extra,
            }
        )
    return rows


@pytest.fixture(scope="session")
def transfer_queue():
    """verl's TransferQueue on a local Ray (CPU only): the store verl's v1 trainer reads."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    # Logical CPUs: TQ's controller and storage actors ask for one each.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()
    ray.shutdown()
