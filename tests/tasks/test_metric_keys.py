"""Per-difficulty metric keys are readable and stable: plain labels as difficulty=<d>,
structured metadata (reasoning-gym's parameter ranges) as name=lo-hi pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spo.commands.eval import print_table
from spo.eval import level_suffix, split_level_key, summarize

GYM_LEVEL = {"num_terms": (2, 6), "num_digits": (1, 4)}


def test_structured_difficulty_key():
    m = summarize(np.ones((2, 1)), [["1"], ["2"]], difficulty_E=[GYM_LEVEL, GYM_LEVEL])
    assert m["avg@1/num_terms=2-6,num_digits=1-4"] == 1.0
    assert m["n_prompts/num_terms=2-6,num_digits=1-4"] == 2.0
    assert not any("{" in key or "(" in key or "'" in key for key in m)


def test_key_is_stable_across_a_json_round_trip_and_plain_labels_keep_their_form():
    assert level_suffix(json.loads(json.dumps(GYM_LEVEL))) == level_suffix(GYM_LEVEL)
    assert level_suffix("add2") == "difficulty=add2"
    assert level_suffix(3) == "difficulty=3" and level_suffix(3.0) == "difficulty=3"
    assert level_suffix({"range": [0.5, 1.5]}) == "range=0.5-1.5"
    assert split_level_key("avg@4/num_terms=2-6,num_digits=1-4") == (
        "avg@4",
        "num_terms=2-6,num_digits=1-4",
    )
    assert split_level_key("avg@4") is None


def test_print_table_shows_structured_levels(capsys):
    m = summarize(np.ones((2, 1)), [["1"], ["2"]], difficulty_E=[GYM_LEVEL, None])
    print_table([{"label": "model", "metrics": m}], 1)
    out = capsys.readouterr().out
    assert "num_terms=2-6,num_digits=1-4" in out


def test_reasoning_gym_task_gives_readable_keys():
    pytest.importorskip("reasoning_gym")
    from spo.eval import difficulties
    from spo.tasks import load_task

    task = load_task("reasoning_gym:chain_sum", train_size=4, test_size=4, seed=0)
    levels = difficulties(task.test)
    m = summarize(np.zeros((4, 1)), [[None]] * 4, difficulty_E=levels)
    level_keys = sorted(k for k in m if k.startswith("avg@1/"))
    assert level_keys == ["avg@1/num_terms=2-6,num_digits=1-4"], level_keys
