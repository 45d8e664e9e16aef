"""Tasks: prompt sources with their verifiers.

A task is a list of training prompts, a disjoint list of held-out prompts, and a verifier
`verifier(completion, example) -> reward in [0, 1]` that the reward pool (`spo.tasks.rewards`)
runs in worker processes — so every verifier is picklable: a module-level function or a
`functools.partial` of one, never a closure or a lambda.

`load_task(name, ...)` understands three kinds of names:

- `arithmetic` — built in, procedural and seeded, with a spread of difficulty levels
  (`spo.tasks.arithmetic`, calibrated for the embedded SmolLM2-135M-Instruct; see
  docs/tasks.md).
- `arithmetic_tool` — built in: multi-digit arithmetic with a system prompt that explains
  the ```python tool, for multi-turn tool-integrated rollouts (`spo.tasks.arithmetic_tool`).
- `reasoning_gym:<dataset>` — any reasoning-gym dataset, scored by its own
  `score_answer` (`spo.tasks.gym`).
- a path to a `.jsonl` / `.json` / `.parquet` / `.csv` file or a `datasets.save_to_disk`
  directory with `prompt`, `answer` and optional `id` columns (`spo.tasks.files`); answers
  are checked with math-verify unless `reward_fn` says otherwise (`spo.tasks.verifiers`).

Every prompt has a stable id: the explicit id column when there is one, else a content
hash of (prompt, answer) — never its list position, so reordering a file, or resuming
with a different train_size, keeps each prompt's tracker statistics attached to it.
"""

from __future__ import annotations

from spo.tasks.base import Example, Extractor, Task, TaskError, Verifier, content_id

"""`verifier(completion, example) -> reward in [0, 1]` (bools are accepted as 1/0)."""

"""`extract(completion) -> final answer as text`, None when there is none (for maj@k)."""


BUILTIN_TASKS = ("arithmetic", "arithmetic_tool")
GYM_PREFIX = "reasoning_gym:"
VALID_NAMES = (
    "arithmetic, arithmetic_tool, reasoning_gym:<dataset> (e.g. reasoning_gym:leg_counting), "
    "or a path to a .jsonl/.json/.parquet/.csv file or a datasets.save_to_disk directory"
)
DEFAULT_PROCEDURAL_TRAIN_SIZE = 256
DEFAULT_PROCEDURAL_TEST_SIZE = 128
"""Procedural tasks have no "all": train_size / test_size None mean these many prompts.
Files: train_size None = every row not held out; test_size None = min(128, 10%)."""


def load_task(
    name: str,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    prompt_column: str = "prompt",
    answer_column: str = "answer",
    id_column: str = "id",
    test_path: str | None = None,
    reward_fn: str | None = None,
    difficulty: str | None = None,
    skip_bad_rows: bool = False,
) -> Task:
    """Build the task called `name` (see the module docstring); deterministic given the args.

    train_size: training prompts (None = every row of a file that is not held out; 256
        for procedural tasks).
    test_size: held-out prompts, disjoint from train (None = min(128, 10%) of a file, split
        off it unless test_path; 128 for procedural tasks).
    seed: seeds procedural generation and the train/test split of files.
    test_path: a separate held-out file for file tasks.
    reward_fn: None (task default), "exact", "math", or "pkg.module:function" /
        "/path/file.py:function" for `f(completion, answer) -> float | bool`.
    difficulty: arithmetic only — "easy" / "default" / "hard" or a comma list of levels.
    skip_bad_rows: files only — skip (and count) rows without a prompt or answer and lines
        of invalid JSON instead of stopping at the first.
    Raises TaskError with one line saying what is wrong and how to fix it.
    """
    if not isinstance(name, str) or not name.strip():
        raise TaskError(f"task name is empty; valid tasks: {VALID_NAMES}")
    if train_size is not None and train_size < 1:
        raise TaskError(f"train_size must be at least 1 (or null for all), got {train_size}")
    if test_size is not None and test_size < 0:
        raise TaskError(f"test_size must be 0 or more (or null for the default), got {test_size}")
    file_only = {
        "test_path": test_path,
        "reward_fn": reward_fn,
        "skip_bad_rows": skip_bad_rows or None,
    }
    sizes = {  # procedural tasks: their defaults for null
        "train_size": train_size or DEFAULT_PROCEDURAL_TRAIN_SIZE,
        "test_size": DEFAULT_PROCEDURAL_TEST_SIZE if test_size is None else test_size,
        "seed": seed,
    }

    if name == "arithmetic":
        from spo.tasks.arithmetic import load_arithmetic

        _reject(name, **file_only)
        return load_arithmetic(**sizes, difficulty=difficulty)
    if name == "arithmetic_tool":
        from spo.tasks.arithmetic_tool import load_arithmetic_tool

        _reject(name, **file_only, difficulty=difficulty)
        return load_arithmetic_tool(**sizes)
    if name.startswith(GYM_PREFIX):
        from spo.tasks.gym import load_gym

        _reject(name, **file_only, difficulty=difficulty)
        return load_gym(name[len(GYM_PREFIX) :], **sizes)

    from spo.tasks.files import load_file_task, looks_like_path

    if not looks_like_path(name):
        raise TaskError(f"unknown task {name!r}; valid tasks: {VALID_NAMES}")
    _reject(name, difficulty=difficulty)
    return load_file_task(
        name,
        train_size=train_size,
        test_size=test_size,
        seed=seed,
        prompt_column=prompt_column,
        answer_column=answer_column,
        id_column=id_column,
        test_path=test_path,
        reward_fn=reward_fn,
        skip_bad_rows=skip_bad_rows,
    )


def _reject(task_name: str, **options: str | bool | None) -> None:
    """Options that a task kind does not use are errors, not silently ignored."""
    for option, value in options.items():
        if value is not None:
            raise TaskError(
                f"task {task_name!r} does not take {option}={value!r}; remove it "
                f"({option} applies to {_OPTION_SCOPE[option]})"
            )


_OPTION_SCOPE = {
    "test_path": "dataset files",
    "reward_fn": "dataset files",
    "difficulty": "the built-in arithmetic task",
    "skip_bad_rows": "dataset files",
}

__all__ = [
    "BUILTIN_TASKS",
    "Example",
    "Extractor",
    "Task",
    "TaskError",
    "Verifier",
    "content_id",
    "load_task",
]
