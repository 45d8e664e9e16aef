"""reasoning-gym tasks: `reasoning_gym:<dataset>`, scored by the dataset's own scorer.

Train and held-out prompts come from two generators seeded from (seed, "train") and
(seed, "test"); duplicates within and across the splits are dropped, so the splits are
disjoint. The user message is the question plus one line asking for the answer inside
<answer></answer> tags (reasoning-gym's answer format, normally asked for by its system
prompt, which the trainer does not impose). The verifier reads the last tagged answer —
falling back to the reply's last line when there is no tag — and calls
`dataset.score_answer(answer, entry)`, which may give partial credit.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

import numpy as np

from spo.tasks.answers import answer_tag, last_line
from spo.tasks.base import Example, Task, TaskError, content_id

ANSWER_FORMAT = "Give only your final answer, inside <answer></answer> tags."
_SPLIT_STREAM = {"train": 0, "test": 1}
_OVERSAMPLE = 4  # generate up to this many entries per wanted prompt before giving up on dups


def gym_names() -> list[str]:
    """Registered reasoning-gym dataset names."""
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _split_seed(seed: int, split: str) -> int:
    return int(np.random.SeedSequence([seed, _SPLIT_STREAM[split]]).generate_state(1)[0])


@functools.lru_cache(maxsize=16)
def _dataset(name: str, seed: int, size: int) -> Any:
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size)


def load_gym(dataset: str, *, train_size: int, test_size: int, seed: int) -> Task:
    """Task for reasoning-gym dataset `dataset` (see module docstring)."""
    names = gym_names()
    if dataset not in names:
        close = difflib.get_close_matches(dataset, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise TaskError(
            f"unknown reasoning-gym dataset {dataset!r}; {hint}valid ones include "
            f"{', '.join(names[:8])}, ... ({len(names)} in all: "
            "python -c 'import reasoning_gym.factory as f; print(sorted(f.DATASETS))')"
        )
    test = _generate(dataset, _split_seed(seed, "test"), test_size, exclude=set())
    train = _generate(dataset, _split_seed(seed, "train"), train_size, exclude={e.id for e in test})
    verifier = functools.partial(
        gym_verify, dataset=dataset, seed=_split_seed(seed, "train"), size=_OVERSAMPLE * train_size
    )
    return Task(
        name=f"reasoning_gym:{dataset}",
        train=train,
        test=test,
        verifier=verifier,
        extractor=gym_answer,
    )


def _generate(dataset: str, seed: int, size: int, *, exclude: set[str]) -> list[Example]:
    """`size` distinct entries not in `exclude`, from the generator seeded with `seed`."""
    if size == 0:
        return []
    try:
        source = _dataset(dataset, seed, _OVERSAMPLE * size)
    except Exception as e:  # the dataset's own config validation: report it in one line
        raise TaskError(
            f"reasoning-gym dataset {dataset!r} failed to build ({type(e).__name__}: {e})"
        ) from e
    examples: dict[str, Example] = {}
    for index in range(len(source)):
        entry = source[index]
        prompt = f"{entry['question'].rstrip()}\n\n{ANSWER_FORMAT}"
        answer = str(entry["answer"])
        ex_id = content_id(prompt, answer)
        if ex_id in exclude or ex_id in examples:
            continue
        examples[ex_id] = Example(
            id=ex_id, prompt=prompt, answer=answer, meta=dict(entry.get("metadata", {}))
        )
        if len(examples) == size:
            return list(examples.values())
    raise TaskError(
        f"reasoning-gym dataset {dataset!r} yielded only {len(examples)} distinct prompts "
        f"out of {len(source)} generated, {size} wanted; lower the train_size or test_size"
    )


def gym_answer(completion: str) -> str | None:
    """The last <answer>...</answer> of the reply, else its last non-empty line."""
    return answer_tag(completion) or last_line(completion)


def gym_verify(completion: str, example: Example, *, dataset: str, seed: int, size: int) -> float:
    """The dataset's own `score_answer` on the reply's final answer."""
    entry = {
        "question": example.prompt,
        "answer": example.answer,
        "metadata": dict(example.meta),
    }
    return float(_dataset(dataset, seed, size).score_answer(gym_answer(completion), entry))
