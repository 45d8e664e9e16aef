"""Write an spo-rl task as verl RL parquet files, keyed like `spo init-values` keys it.

    python examples/verl/make_data.py configs/demo.yaml --out data/verl-arithmetic

Reads the task of an spo-rl config (the `task:` block, as `spo train` and `spo
init-values` do) and writes `train.parquet` / `test.parquet` in verl's layout: chat
`prompt`, `reward_model.ground_truth`, and `extra_info.index` = the task's stable prompt id.
The verl plug-in keys its tracker by `extra_info.index`, `spo init-values` writes the same
ids, so `trainer.v1.single_stream_spo.init_values=values.parquet` initialises by key.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def verl_rows(examples, data_source: str, system_prompt: str | None) -> list[dict]:
    rows = []
    for ex in examples:
        prompt = [{"role": "user", "content": ex.prompt}]
        if system_prompt:
            prompt.insert(0, {"role": "system", "content": system_prompt})
        rows.append(
            {
                "data_source": data_source,
                "prompt": prompt,
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": ex.answer},
                "extra_info": {"index": ex.id},
            }
        )
    return rows


def main() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spo.tasks import load_task
    from spo.train.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="an spo-rl config whose task: block names the prompts")
    parser.add_argument("--out", default="data/verl-task", help="output directory")
    parser.add_argument(
        "overrides", nargs="*", help="spo config overrides, e.g. task.train_size=64"
    )
    args = parser.parse_intermixed_args()

    cfg = load_config(args.config, args.overrides)
    task_kwargs = {k: v for k, v in dataclasses.asdict(cfg.task).items() if k != "system_prompt"}
    task = load_task(**task_kwargs)
    source = f"spo:{cfg.task.name}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, examples in (("train", task.train), ("test", task.test)):
        rows = verl_rows(examples, source, cfg.task.system_prompt or task.system_prompt)
        pq.write_table(pa.Table.from_pylist(rows), out / f"{split}.parquet")
        print(f"{out / f'{split}.parquet'}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
