"""The built-in `arithmetic` task: procedural integer arithmetic with a spread of difficulty.

Each difficulty level is a small family of problems ("1-digit + 1-digit", "2-digit ×
1-digit", ...) whose operands range over a rectangle, so every level has a known, finite
number of distinct problems. For each level we take one seeded permutation of all its
problems: held-out prompts come from the front, training prompts from the back, so the
splits are disjoint by construction, the held-out set does not depend on train_size (and
vice versa), and everything is a pure function of (seed, level, position).

A mix (e.g. the default) names the levels to draw from; prompts are dealt to its levels
round-robin, and a level whose problems run out (1-digit levels have 100) simply stops
taking prompts — at most half of a level's problems are held out, so training always
keeps the other half. Repeating a level in a comma list weights it ("add1,add1,add2").

Calibration (docs/tasks.md): the levels and the default mix were measured on the embedded
SmolLM2-135M-Instruct, sampled at temperature 1.0 and greedy, so that the default mix
starts in the 20-60% sampled-success range (measured: 21% sampled, 78% greedy) with a
real spread across prompts.

Reward: 1 when the last number in the reply equals the answer ("1,234", "−5", "12.0"
are read as 1234, -5, 12), else 0.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spo.tasks.answers import last_integer
from spo.tasks.base import Example, Task, TaskError, content_id

PROMPT = "What is {a} {op} {b}? Reply with only the number."


@dataclass(frozen=True)
class Level:
    """A family of problems `a op b` for x in x_range, y in y_range, (a, b) = make(x, y)."""

    name: str
    description: str
    op: str
    x_range: tuple[int, int]  # inclusive
    y_range: tuple[int, int]  # inclusive
    make: Callable[[int, int], tuple[int, int]] = lambda x, y: (x, y)

    @property
    def size(self) -> int:
        """Number of distinct problems."""
        return (self.x_range[1] - self.x_range[0] + 1) * (self.y_range[1] - self.y_range[0] + 1)

    def problem(self, index: int) -> tuple[int, int]:
        """Operands (a, b) of problem `index` in [0, size)."""
        width = self.y_range[1] - self.y_range[0] + 1
        return self.make(self.x_range[0] + index // width, self.y_range[0] + index % width)


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


# Ordered from easiest to hardest for the embedded model (measured; docs/tasks.md); an
# example's meta["difficulty"] is the 1-based position here.
LEVELS: tuple[Level, ...] = (
    Level("add0", "n + 0, n with 2-3 digits", "+", (10, 999), (0, 0)),
    Level("times1", "n * 1, n with 2-3 digits", "*", (10, 999), (1, 1)),
    Level("sub0", "n - 0, n with 2-3 digits", "-", (10, 999), (0, 0)),
    Level("add1", "1-digit + 1-digit", "+", (0, 9), (0, 9)),
    Level("mul1", "1-digit * 1-digit", "*", (0, 9), (0, 9)),
    Level(
        "sub1",
        "a - b with b and the result 1-digit",
        "-",
        (0, 9),
        (0, 9),
        make=lambda result, b: (result + b, b),
    ),
    Level("add2x1", "2-digit + 1-digit", "+", (10, 99), (1, 9)),
    Level("add2", "2-digit + 2-digit", "+", (10, 99), (10, 99)),
    Level("sub2x1", "2-digit - 1-digit, a >= 20", "-", (20, 99), (1, 9)),
    Level("mul2x1", "2-digit * 1-digit", "*", (10, 99), (2, 9)),
    Level("add3", "3-digit + 3-digit", "+", (100, 999), (100, 999)),
)
LEVEL_BY_NAME = {level.name: level for level in LEVELS}
DIFFICULTY_OF = {level.name: rank for rank, level in enumerate(LEVELS, 1)}

MIXES: dict[str, tuple[str, ...]] = {
    "easy": ("add0", "times1", "sub0", "add1", "mul1"),
    "default": ("add0", "times1", "sub0", "add1", "mul1", "add2"),
    "hard": ("add2x1", "add2", "sub2x1", "mul2x1", "add3"),
    "all": tuple(level.name for level in LEVELS),
}


def parse_difficulty(difficulty: str | None) -> tuple[str, ...]:
    """Level names of a mix: a preset name, or a comma list of level names / ranks."""
    if difficulty is None or difficulty.strip() == "":
        return MIXES["default"]
    if difficulty in MIXES:
        return MIXES[difficulty]
    names = []
    for item in (part.strip() for part in difficulty.split(",")):
        if item.isdigit() and 1 <= int(item) <= len(LEVELS):
            names.append(LEVELS[int(item) - 1].name)
        elif item in LEVEL_BY_NAME:
            names.append(item)
        else:
            raise TaskError(
                f"unknown arithmetic difficulty {item!r}; use one of {', '.join(MIXES)} or a "
                f"comma list of levels ({', '.join(LEVEL_BY_NAME)}) or ranks 1-{len(LEVELS)}"
            )
    return tuple(names)


def _permutation(level: Level, seed: int) -> np.ndarray:
    # Keyed by the level's name, not its rank, so adding a level never reshuffles the others.
    return np.random.default_rng([seed, zlib.crc32(level.name.encode())]).permutation(level.size)


def _deal(size: int, mix: tuple[str, ...], room: dict[str, int]) -> list[str]:
    """Level of each of `size` prompts: round-robin over `mix`, skipping full levels."""
    taken = dict.fromkeys(room, 0)
    order: list[str] = []
    for name in itertools.cycle(mix):
        if len(order) == size:
            return order
        if all(taken[n] >= room[n] for n in mix):
            raise TaskError(
                f"arithmetic levels {', '.join(dict.fromkeys(mix))} have only "
                f"{sum(room[n] for n in set(mix))} distinct problems left for this split, "
                f"{size} wanted; lower train_size/test_size or add levels via difficulty"
            )
        if taken[name] < room[name]:
            taken[name] += 1
            order.append(name)
    raise AssertionError("unreachable")


def _example(level: Level, index: int) -> Example:
    a, b = level.problem(index)
    prompt = PROMPT.format(a=a, op=level.op, b=b)
    answer = str(_apply(level.op, a, b))
    meta = {"difficulty": DIFFICULTY_OF[level.name], "level": level.name}
    return Example(id=content_id(prompt, answer), prompt=prompt, answer=answer, meta=meta)


def load_arithmetic(*, train_size: int, test_size: int, seed: int, difficulty: str | None) -> Task:
    """The arithmetic task over the levels of `difficulty` (see module docstring)."""
    mix = parse_difficulty(difficulty)
    levels = {name: LEVEL_BY_NAME[name] for name in mix}
    test_levels = _deal(test_size, mix, {n: lvl.size // 2 for n, lvl in levels.items()})
    test_taken = {n: test_levels.count(n) for n in levels}
    train_levels = _deal(
        train_size, mix, {n: lvl.size - test_taken[n] for n, lvl in levels.items()}
    )

    perms = {name: _permutation(level, seed) for name, level in levels.items()}
    test, train = [], []
    position = dict.fromkeys(levels, 0)
    for name in test_levels:
        test.append(_example(levels[name], int(perms[name][position[name]])))
        position[name] += 1
    position = dict.fromkeys(levels, 0)
    for name in train_levels:
        position[name] += 1
        train.append(_example(levels[name], int(perms[name][-position[name]])))
    return Task(
        name="arithmetic",
        train=train,
        test=test,
        verifier=arithmetic_verify,
        extractor=arithmetic_answer,
    )


def arithmetic_answer(completion: str) -> str | None:
    """The last integer of the reply, as text ("1,234." -> "1234"); None if there is none."""
    value = last_integer(completion)
    return None if value is None else str(value)


def arithmetic_verify(completion: str, example: Example) -> float:
    """1.0 when the last integer of the reply equals the reference answer, else 0.0."""
    value = last_integer(completion)
    return float(value is not None and value == int(example.answer))
