"""The built-in `arithmetic_tool` task: multi-digit arithmetic that a Python tool makes easy.

Problems are products and sums of 3-5 digit numbers ("What is 4821 * 937 + 1209?"), too
long for a small model to do reliably in its head and one line of Python with the tool.
The task's system prompt explains the tool: write code in a ```python block, read its
output in the tool message, answer with the number. Train with multi-turn rollouts
(`rollout.max_turns=4` or more, docs/async.md); with `max_turns=1` it is plain (hard)
arithmetic.

Problems are drawn from one seeded stream and de-duplicated; the first `test_size` are
held out and the next `train_size` train, so the splits are disjoint and the held-out set
does not depend on train_size. Reward: the last integer of the final model turn equals the
answer (as in `arithmetic`).

`FEWSHOT`, the task's own few-shot prefix (`spo.tasks.fewshot`; `task.fewshot=[]` turns it
off), is two worked examples: question, a reply that is only a ```python block, the tool's
output as the sandbox formats it, and the final number. The problems have held-out forms'
shapes but are not drawn from the task's stream. Why (measured on 16 held-out prompts x 4
samples, embedded SmolLM2-135M in bf16, temperature 1): with these two examples 49 of 64
replies are a code block and 35 of 64 blocks compute the right number; with one such
example 20 of 64 (14 right); with one example whose reply starts with a sentence ("Let me
compute it with Python.") 0 of 32 — the model copies the reply's first line, not the block.
"""

from __future__ import annotations

import numpy as np

from spo.tasks.arithmetic import arithmetic_answer, arithmetic_verify
from spo.tasks.base import Example, Task, content_id

SYSTEM_PROMPT = (
    "You can run Python code. To run code, write it in a ```python code block and end your "
    "message; the output comes back in a tool message. Use print() to see results. When you "
    "know the answer, reply with only the final number."
)

FEWSHOT = (
    {"role": "user", "content": "What is 3841 * 527 + 2096?"},
    {"role": "assistant", "content": "```python\nprint(3841 * 527 + 2096)\n```"},
    {"role": "tool", "content": "2026303"},
    {"role": "assistant", "content": "2026303"},
    {"role": "user", "content": "What is 61803 + 39887 + 14142?"},
    {"role": "assistant", "content": "```python\nprint(61803 + 39887 + 14142)\n```"},
    {"role": "tool", "content": "115832"},
    {"role": "assistant", "content": "115832"},
)

FORMS = (  # (template, digits of a, b, c)
    ("{a} * {b}", (3, 3, 0)),
    ("{a} * {b}", (4, 3, 0)),
    ("{a} * {b} + {c}", (4, 3, 4)),
    ("{a} + {b} + {c}", (5, 5, 5)),
    ("{a} * {b} - {c}", (3, 3, 5)),
)


def _number(rng: np.random.Generator, digits: int) -> int:
    return int(rng.integers(10 ** (digits - 1), 10**digits)) if digits else 0


def _problem(rng: np.random.Generator) -> Example:
    template, digits = FORMS[int(rng.integers(len(FORMS)))]
    a, b, c = (_number(rng, d) for d in digits)
    expression = template.format(a=a, b=b, c=c)
    answer = str(eval(expression, {"__builtins__": {}}))  # our own digits and + - * only
    prompt = f"What is {expression}?"
    meta = {"form": template, "difficulty": sum(digits)}
    return Example(id=content_id(prompt, answer), prompt=prompt, answer=answer, meta=meta)


def load_arithmetic_tool(*, train_size: int, test_size: int, seed: int) -> Task:
    rng = np.random.default_rng([seed, 0x7001])
    seen: dict[str, Example] = {}
    while len(seen) < test_size + train_size:
        ex = _problem(rng)
        seen.setdefault(ex.id, ex)
    examples = list(seen.values())
    return Task(
        name="arithmetic_tool",
        train=examples[test_size:],
        test=examples[:test_size],
        verifier=arithmetic_verify,
        extractor=arithmetic_answer,
        system_prompt=SYSTEM_PROMPT,
        fewshot=FEWSHOT,
    )
