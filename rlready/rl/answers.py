"""The final answer a text commits to, in the two formats the rewards verify.

  * ``####``: the number after the last ``####`` (GSM8K convention; the synthetic world's tasks too);
  * ``\\boxed{}``: the content of the last ``\\boxed{...}`` (MATH convention).

:func:`answer_key` picks the format from the reward's name, so a gold answer read from data, the vote of
Cons@k and a reward's check all extract answers the same way. Pure Python: reward worker processes import
it through :mod:`rlready.rl.rewards`.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["answer_key", "as_number", "boxed_answer", "extract_hash_answer"]


def extract_hash_answer(text: str) -> str | None:
    """The final answer after the last ``####`` in ``text``, normalised; ``None`` when there is none.

    Only the rest of that line counts. Thousands separators and all whitespace are removed and
    trailing periods stripped, so ``"#### 1,234.\\n"`` gives ``"1234"``.
    """
    _, sep, tail = text.rpartition("####")
    if not sep:
        return None
    line = tail.split("\n", 1)[0]
    answer = "".join(line.split()).replace(",", "").rstrip(".")
    return answer or None


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces, whitespace removed); ``None`` when there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth < 0:
            return re.sub(r"\s+", "", text[i:j]) or None
    return None


def answer_key(text: str, reward: str) -> str | None:
    """The final answer ``text`` commits to under the format of ``reward`` (``math``: boxed; any other
    reward: ``####``), or ``None``."""
    return boxed_answer(text) if reward == "math" else extract_hash_answer(text)


def as_number(text: str) -> Fraction | None:
    """``text`` as an exact number, or ``None``.

    Fraction parses integers, decimals, ``a/b`` and exponents exactly, so ``"3.50"``, ``"3.5"`` and
    ``"7/2"`` are equal without float rounding.
    """
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
