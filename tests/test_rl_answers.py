"""Tests for rlready.rl.answers: ``####`` and ``\\boxed{}`` answers, picked by the reward's name."""

from __future__ import annotations

import pytest

from rlready.rl.answers import answer_key, as_number, boxed_answer, extract_hash_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 3 + 4 = 7\n#### 7", "7"),
        ("#### 1,234.\nmore text", "1234"),
        ("#### 5 #### 6", "6"),  # the last marker wins
        ("####   -12 .", "-12"),
        ("#### 3.50", "3.50"),
        ("no marker", None),
        ("####   \n42", None),  # the answer must be on the marker's line
        ("####...", None),
    ],
)
def test_extract_hash_answer(text: str, expected: str | None) -> None:
    assert extract_hash_answer(text) == expected


def test_answer_keys() -> None:
    assert boxed_answer(r"so \boxed{\frac{1}{2}} and \boxed{ 3 }") == "3"
    assert boxed_answer(r"x = \boxed{\frac{a}{b}}.") == r"\frac{a}{b}"
    assert boxed_answer("no box") is None
    assert boxed_answer(r"\boxed{unclosed") is None
    assert answer_key("2 + 3 = 5.\n#### 5\n\nQ:", "arithmetic") == "5"
    assert answer_key(r"\boxed{7}", "math") == "7"


@pytest.mark.parametrize(
    ("text", "reward", "expected"),
    [
        ("3 + 4 = <<3+4=7>>7\n#### 1,200", "gsm8k", "1200"),
        ("#### 7", "arithmetic", "7"),
        ("#### 7\nso \\boxed{8}", "gsm8k", "7"),  # the format follows the reward, not the text
        ("#### 7\nso \\boxed{ 8 }", "math", "8"),
        (r"\boxed{7}", "gsm8k", None),
        ("#### 7", "math", None),
    ],
)
def test_answer_key_follows_the_reward_format(text: str, reward: str, expected: str | None) -> None:
    assert answer_key(text, reward) == expected


def test_as_number_is_exact() -> None:
    assert as_number("3.50") == as_number("7/2") == as_number("3.5")
    assert as_number("1/0") is None and as_number("x") is None
