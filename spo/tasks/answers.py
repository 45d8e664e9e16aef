"""Reading the final answer out of a model's reply.

Small, pure text functions shared by the verifiers and by `Task.extract_answer` (maj@k
votes on what these return). None always means "no answer found", never "".
"""

from __future__ import annotations

import re

# A number: optional sign, digits with optional thousands separators, optional decimals.
# The sign counts only when it does not follow a word character or a digit, so the
# "-" in "10-2" is an operator, not a negative 2; "−" (U+2212) is a minus too.
_NUMBER = re.compile(r"(?<![\w.])([-−]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\d)")
_BOXED = "\\boxed{"
_ANSWER_TAG = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)


def last_number(text: str) -> str | None:
    """The last number in `text`, normalised: "1,234" -> "1234", "−5" -> "-5", "12.0" -> "12".

    Non-integers keep their decimals ("2.5"); None when the text has no number.
    """
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    sign, digits, decimals = m.group(1), m.group(2).replace(",", ""), m.group(3) or ""
    decimals = decimals.rstrip("0").rstrip(".")
    digits = digits.lstrip("0") or "0"
    value = digits + decimals
    return f"-{value}" if sign and value.strip("0.") else value


def last_integer(text: str) -> int | None:
    """The last number in `text` as an int; None when absent or not a whole number."""
    number = last_number(text)
    if number is None or "." in number:
        return None
    return int(number)


def last_boxed(text: str) -> str | None:
    r"""Contents of the last \boxed{...} in `text` (braces balanced), None if absent."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def answer_tag(text: str) -> str | None:
    """Contents of the last <answer>...</answer> in `text` (reasoning-gym's format)."""
    matches = _ANSWER_TAG.findall(text)
    return matches[-1].strip() if matches else None


def last_line(text: str) -> str | None:
    """The last non-empty line of `text`, stripped; None for a blank text."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def final_answer(text: str) -> str | None:
    r"""Best-effort final answer: last \boxed{}, else last <answer> tag, else last number,
    else the last non-empty line."""
    for extract in (last_boxed, answer_tag, last_number, last_line):
        found = extract(text)
        if found:
            return found
    return None
