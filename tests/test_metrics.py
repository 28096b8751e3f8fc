"""Tests for rlready.metrics against exact combinatorial references."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlready.metrics import (
    avg_at_k,
    cons_at_k,
    curve_ks,
    majority_index,
    paired_gain,
    pass_at_k,
    summarize,
)


def comb_reference(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def enumeration_reference(n: int, c: int, k: int) -> float:
    correct = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_subset_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(enumeration_reference(n, c, k), abs=1e-12)


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_comb_formula(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(comb_reference(n, c, k), rel=1e-9, abs=1e-12)


def test_pass_at_k_large_binomials() -> None:
    # C(128, 64) ~ 2.4e37: the product form must agree with exact integer arithmetic.
    exact = 1 - math.comb(120, 64) / math.comb(128, 64)
    assert pass_at_k(128, 8, 64) == pytest.approx(exact, rel=1e-12)


def test_pass_at_k_edge_cases() -> None:
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0  # n == c
    assert pass_at_k(5, 1, 5) == 1.0  # k == n, one correct
    assert pass_at_k(5, 0, 5) == 0.0  # k == n, none correct
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the accuracy
    assert pass_at_k(4, 2, 3) == 1.0  # n - c < k


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (0, 0, 1), (5.0, 2, 1), (5, 2, True)],
)
def test_pass_at_k_bad_input(n: object, c: object, k: object) -> None:
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)  # type: ignore[arg-type]


def test_avg_at_k() -> None:
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k([False]) == 0.0
    with pytest.raises(ValueError, match="no samples"):
        avg_at_k([])


def test_cons_at_k_majority_and_none() -> None:
    assert cons_at_k(["4", "5", "4", None, None, None], "4")
    assert not cons_at_k(["5", "4", "5"], "4")
    # None never votes, even when it is the most frequent "answer".
    assert cons_at_k([None, None, None, "4"], "4")
    assert not cons_at_k([None, None], "4")
    assert not cons_at_k([], "4")


def test_cons_at_k_tie_goes_to_first_seen() -> None:
    assert cons_at_k(["4", "5", "5", "4"], "4")
    assert not cons_at_k(["5", "4", "4", "5"], "4")
    assert majority_index([None, "b", "a", "a", "b"]) == 1


def test_cons_at_k_custom_equality() -> None:
    def same_number(a: str, b: str) -> bool:
        return float(a) == float(b)

    # Numerically "2.0" and "2" pool their 2 votes and beat "3"; as strings all three tie and "3" wins.
    assert cons_at_k(["3", "2.0", "2"], "2", equal=same_number)
    assert not cons_at_k(["3", "2.0", "2"], "2")


def test_summarize_hand_made() -> None:
    problems = [
        (["1", "1", "2", None], [True, True, False, False]),
        (["7", "8", "8", "8"], [True, False, False, False]),
    ]
    out = summarize(problems, [1, 4])
    assert out["avg@4"] == pytest.approx((0.5 + 0.25) / 2)
    assert out["cons@4"] == pytest.approx(0.5)  # problem 1 majority "1" correct, problem 2 majority "8" wrong
    assert out["pass@4"] == pytest.approx(1.0)
    assert out["avg@1"] == pytest.approx(1.0)  # the first sample of each problem is correct
    assert out["cons@1"] == pytest.approx(1.0)
    assert out["pass@1"] == pytest.approx((0.5 + 0.25) / 2)  # unbiased pass@1 uses all n samples
    assert set(out) == {f"{m}@{k}" for m in ("avg", "cons", "pass") for k in (1, 4)}


def test_summarize_pass_curve_is_monotone_and_matches_reference() -> None:
    problems = [([None] * 8, [i < c for i in range(8)]) for c in (0, 1, 3, 8)]
    out = summarize(problems, range(1, 9))
    curve = [out[f"pass@{k}"] for k in range(1, 9)]
    assert curve == sorted(curve)
    for k in range(1, 9):
        ref = sum(comb_reference(8, c, k) for c in (0, 1, 3, 8)) / 4
        assert out[f"pass@{k}"] == pytest.approx(ref)
    assert summarize(problems, 2) == summarize(problems, [2])


@pytest.mark.parametrize(
    ("problems", "ks", "match"),
    [
        ([(["1"], [True])], [], "ks is empty"),
        ([], [1], "no problems"),
        ([(["1"], [True])], [0], "positive int"),
        ([(["1", "2"], [True])], [1], "answers but"),
        ([(["1"], [True])], [2], "fewer than k=2"),
    ],
)
def test_summarize_bad_input(problems: list, ks: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        summarize(problems, ks)


@pytest.mark.parametrize(
    ("n", "extra", "want"),
    [
        (1, (1,), [1]),
        (8, (4,), [1, 2, 4, 8]),
        (32, (32,), [1, 2, 4, 8, 16, 32]),
        (48, (5,), [1, 2, 4, 5, 8, 16, 32, 48]),
        (128, (64,), [1, 2, 4, 8, 16, 32, 64, 128]),
        (6, (), [1, 2, 4, 6]),
    ],
)
def test_curve_ks_are_powers_of_two_plus_pass_k_and_n(
    n: int, extra: tuple[int, ...], want: list[int]
) -> None:
    assert curve_ks(n, *extra) == want


@pytest.mark.parametrize("n", [0, -4, 2.0, True])
def test_curve_ks_bad_input(n: object) -> None:
    with pytest.raises(ValueError, match="curve_ks"):
        curve_ks(n)  # type: ignore[arg-type]


def test_paired_gain_matches_hand_computation() -> None:
    before = [0.0, 0.5, 0.25, 1.0]
    after = [0.5, 0.5, 0.75, 1.0]
    # differences 0.5, 0, 0.5, 0: mean 0.25, sample std sqrt(1/12), se sqrt(1/12) / 2
    gain, se = paired_gain(before, after)
    assert gain == pytest.approx(0.25, abs=1e-12)
    assert se == pytest.approx(math.sqrt(1 / 12) / 2, abs=1e-12)


def test_paired_gain_is_paired_not_pooled() -> None:
    # A constant shift over very different problems has no spread: se 0, unlike two independent means.
    before = [0.0, 0.25, 0.5, 0.75]
    gain, se = paired_gain(before, [b + 0.125 for b in before])
    assert gain == pytest.approx(0.125, abs=1e-12)
    assert se == pytest.approx(0.0, abs=1e-12)


def test_paired_gain_edge_cases_and_bad_input() -> None:
    gain, se = paired_gain([0.5], [1.0])
    assert gain == 0.5 and math.isnan(se)
    with pytest.raises(ValueError, match="no problems"):
        paired_gain([], [])
    with pytest.raises(ValueError, match="2 values before but 1 after"):
        paired_gain([0.0, 1.0], [1.0])
