"""Reading final answers out of replies: hand cases."""

from __future__ import annotations

import pytest

from spo.tasks.answers import answer_tag, final_answer, last_boxed, last_integer, last_number


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The answer is 1,234.", "1234"),
        ("-5", "-5"),
        ("It is −7", "-7"),  # unicode minus
        ("10-2=8", "8"),
        ("x-3", "3"),  # a hyphen after a word is not a sign
        ("12.0", "12"),
        ("12.50", "12.5"),
        ("1,2,3", "3"),
        ("is 007", "7"),
        ("-0", "0"),
        ("3 + 4 = 7.\n", "7"),
        ("no digits", None),
        ("", None),
    ],
)
def test_last_number(text, number):
    assert last_number(text) == number


def test_last_integer_rejects_fractions():
    assert last_integer("about 2.5") is None
    assert last_integer("5 apples, 1,000 pears") == 1000


def test_boxed_tag_and_fallbacks():
    assert last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{unclosed") is None
    assert answer_tag("<answer> a </answer> and <answer>b</answer>") == "b"
    assert answer_tag("none") is None
    assert final_answer(r"\boxed{x} 5") == "x"
    assert final_answer("<answer>yes</answer> 5") == "yes"
    assert final_answer("it is 42 apples") == "42"
    assert final_answer("hello\n world \n\n") == "world"
    assert final_answer("  \n ") is None
