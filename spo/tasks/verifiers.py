"""Verifiers for dataset tasks: math-verify equivalence, exact match, user functions.

Each verifier is `verifier(completion, example) -> float | bool` and picklable (a
module-level function, or a `functools.partial` of one) because `spo.tasks.rewards.RewardPool`
runs it in worker processes. A user function given as "pkg.module:function" or
"/path/file.py:function" is therefore not pickled itself: the worker re-imports it from the
spec string on first use and caches it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path

from spo.tasks.answers import answer_tag, final_answer, last_boxed
from spo.tasks.base import Example, TaskError, Verifier

UserFunction = Callable[[str, str], "float | bool"]

REWARD_FN_HELP = (
    "use null (math-verify), 'exact', 'math', 'pkg.module:function' or "
    "'/path/file.py:function' naming f(completion: str, answer: str) -> float | bool"
)


# --- math-verify ---------------------------------------------------------------------------


def _math_timeout() -> int | None:
    # math-verify times itself out with SIGALRM, which only works in the main thread; off the
    # main thread the reward pool's own per-call timeout is the only guard.
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str) -> tuple:
    """Parse a reference answer; bare LaTeX like "x+1" needs $...$ to be recognised."""
    from math_verify import parse

    for text in (answer, f"${answer}$"):
        gold = parse(text, parsing_timeout=_math_timeout())
        if gold:
            return tuple(gold)
    return ()


def math_verify(completion: str, example: Example) -> float:
    """1.0 when the reply's final answer is mathematically equal to the reference.

    Uses math-verify (boxed answers first, then LaTeX and plain expressions, so "0.5" equals
    "\\frac{1}{2}"); a reference it cannot parse falls back to exact text comparison.
    """
    from math_verify import parse, verify

    gold = _parse_gold(example.answer.strip())
    if not gold:
        return float(exact_match(completion, example))
    pred = parse(completion, parsing_timeout=_math_timeout())
    if not pred:
        return 0.0
    return float(verify(list(gold), pred, timeout_seconds=_math_timeout()))


def math_answer(completion: str) -> str | None:
    """The final answer math-verify reads from `completion`, as text (None if none)."""
    from math_verify import parse

    pred = parse(completion, parsing_timeout=_math_timeout())
    return str(pred[-1]) if pred else None


# --- exact match ---------------------------------------------------------------------------


def exact_match(completion: str, example: Example) -> float:
    r"""1.0 when the reply's final answer equals the reference exactly (whitespace-trimmed).

    The final answer is the last \boxed{...}, else the last <answer>...</answer>, else the
    whole reply.
    """
    found = last_boxed(completion) or answer_tag(completion) or completion
    return float(found.strip() == example.answer.strip())


def exact_answer(completion: str) -> str | None:
    """What `exact_match` compares: boxed / tagged answer, else the whole reply."""
    found = last_boxed(completion) or answer_tag(completion) or completion.strip()
    return found or None


# --- user functions ------------------------------------------------------------------------

_USER_FUNCTIONS: dict[str, UserFunction] = {}


def load_user_function(spec: str) -> UserFunction:
    """Import the function named by "pkg.module:function" or "/path/file.py:function".

    Raises TaskError (one line) when the spec is malformed, the file or module is missing
    or fails to import, or the attribute is missing or not callable.
    """
    if spec in _USER_FUNCTIONS:
        return _USER_FUNCTIONS[spec]
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr or not attr.isidentifier():
        raise TaskError(f"reward_fn {spec!r} is not a verifier spec; {REWARD_FN_HELP}")
    try:
        if where.endswith(".py") or "/" in where or "\\" in where:
            path = Path(where).expanduser()
            if not path.is_file():
                raise TaskError(f"reward_fn {spec!r}: file {str(path)!r} does not exist")
            module_name = (
                "spo_user_reward_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
            )
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            if module_spec is None or module_spec.loader is None:
                raise TaskError(f"reward_fn {spec!r}: cannot import {str(path)!r} as Python")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except TaskError:
        raise
    except Exception as e:  # the user's module failed to import: say so, with its error
        raise TaskError(
            f"reward_fn {spec!r}: importing {where!r} failed with {type(e).__name__}: {e}"
        ) from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise TaskError(f"reward_fn {spec!r}: {where!r} has no attribute {attr!r}")
    if not callable(fn):
        raise TaskError(f"reward_fn {spec!r}: {attr!r} is not callable")
    _USER_FUNCTIONS[spec] = fn
    return fn


def user_verify(completion: str, example: Example, *, spec: str) -> float | bool:
    """Call the user function `spec` as f(completion, example.answer); the pool checks the
    returned value (number or bool in [0, 1])."""
    return load_user_function(spec)(completion, example.answer)


# --- choosing one --------------------------------------------------------------------------

NAMED_VERIFIERS: dict[str, tuple[Verifier, Callable[[str], str | None]]] = {
    "math": (math_verify, math_answer),
    "exact": (exact_match, exact_answer),
}


def resolve_reward_fn(reward_fn: str | None) -> tuple[Verifier, Callable[[str], str | None]]:
    """(verifier, answer extractor) for a dataset task; None means math-verify.

    A user function is imported here once, so a bad spec fails at load time, not in a worker.
    """
    if reward_fn is None:
        return NAMED_VERIFIERS["math"]
    if reward_fn in NAMED_VERIFIERS:
        return NAMED_VERIFIERS[reward_fn]
    if ":" not in reward_fn:
        valid = ", ".join(repr(k) for k in NAMED_VERIFIERS)
        raise TaskError(
            f"reward_fn {reward_fn!r} is neither a built-in verifier ({valid}) nor a "
            f"'module:function' spec; {REWARD_FN_HELP}"
        )
    load_user_function(reward_fn)
    return functools.partial(user_verify, spec=reward_fn), final_answer
