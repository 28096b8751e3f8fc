"""Tests for rlready.rl.rewards and the timed scorer.

This module must stay free of torch imports: spawned reward workers import it to unpickle the
test rewards below.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from rlready.rl.rewards import (
    RewardScorer,
    available_rewards,
    get_reward,
    hash_answer_reward,
    math_reward,
    overlong_penalty,
    register_reward,
    score,
)


def flaky_reward(completion: str, answer: str) -> float:
    """Misbehaves on request: hangs, raises, returns NaN or kills its own process."""
    if completion == "hang":
        time.sleep(60)
    if completion == "raise":
        raise RuntimeError("boom")
    if completion == "nan":
        return float("nan")
    if completion == "die":
        os._exit(3)
    return float(completion == answer)


# --- registry -------------------------------------------------------------------------------------


def test_registry_lookup() -> None:
    assert {"arithmetic", "gsm8k", "math"} <= set(available_rewards())
    assert get_reward("arithmetic") is hash_answer_reward
    assert get_reward("gsm8k") is hash_answer_reward
    assert get_reward("math") is math_reward
    with pytest.raises(ValueError, match="unknown reward 'nope'; available: .*arithmetic"):
        get_reward("nope")


def test_register_reward_rejects_duplicates_and_empty_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_reward("math")(flaky_reward)
    with pytest.raises(ValueError, match="empty reward name"):
        register_reward("")
    assert get_reward("math") is math_reward


# --- #### answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("#### 72", "72", 1.0),
        ("#### 72.", "72", 1.0),
        ("#### 72.0", "72", 1.0),
        ("#### 1,000", "1000", 1.0),
        ("#### 7/2", "3.5", 1.0),
        ("#### -3", "3", 0.0),
        ("#### 73", "72", 0.0),
        ("#### seventy-two", "72", 0.0),
        ("the answer is 72", "72", 0.0),
        ("#### 72 apples", "72", 0.0),
    ],
)
def test_hash_answer_reward(completion: str, answer: str, expected: float) -> None:
    assert hash_answer_reward(completion, answer) == expected


def test_hash_answer_reward_rejects_non_numeric_gold() -> None:
    with pytest.raises(ValueError, match="not a number"):
        hash_answer_reward("#### 1", "one")


# --- the overlong penalty -------------------------------------------------------------------------


def test_overlong_penalty_formula() -> None:
    # DAPO: 0 up to L_max - L_cache, then (L_max - L_cache - len) / L_cache, -1 at the limit.
    max_len, buf = 20, 5
    for length in range(0, 26):
        want = 0.0 if length <= 15 else max(-1.0, (15 - length) / 5)
        assert overlong_penalty(length, max_len, buf) == pytest.approx(want)
    assert overlong_penalty(18, max_len, buf, factor=0.5) == pytest.approx(-0.3)
    assert overlong_penalty(20, max_len, 0) == 0.0  # off


# --- math-verify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("Thus the answer is $\\boxed{\\dfrac{1}{2}}$.", "\\frac{1}{2}", 1.0),
        ("We get \\boxed{0.5}", "\\frac12", 1.0),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
        ("\\boxed{x + 1}", "1 + x", 1.0),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0.0),
        ("I do not know.", "\\frac{1}{2}", 0.0),
        ("The final answer is $\\frac{1}{2}$", "\\frac{1}{2}", 0.0),  # not boxed
        ("#### 4", "4", 0.0),
        ("\\boxed{7}", "$7$", 1.0),
    ],
)
def test_math_reward(completion: str, answer: str, expected: float) -> None:
    assert math_reward(completion, answer) == expected


def test_math_reward_rejects_unparseable_gold() -> None:
    with pytest.raises(ValueError, match="could not be parsed"):
        math_reward("\\boxed{1}", "\\boxed{}")


# --- timed scoring --------------------------------------------------------------------------------

MISBEHAVING = ["1", "hang", "raise", "2", "nan", "die", "1"]


@pytest.mark.parametrize("num_workers", [1, 2])
def test_score_survives_hangs_errors_and_crashes(num_workers: int) -> None:
    rewards, failures = score(flaky_reward, MISBEHAVING, ["1"] * 7, timeout_s=2.0, num_workers=num_workers)
    assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert failures == 4  # hang, raise, nan, die; "2" is a plain wrong answer


def test_scorer_is_reusable_and_closes_its_workers() -> None:
    with RewardScorer(get_reward("math"), timeout_s=30.0) as scorer:
        first = scorer.score(["\\boxed{4}", "\\boxed{5}"], ["4", "4"])
        second = scorer.score(["#### 4", "\\boxed{\\frac{8}{2}}"], ["4", "4"])
        processes = [w.process for w in scorer._workers]
    assert first == ([1.0, 0.0], 0)
    assert second == ([0.0, 1.0], 0)
    assert not any(p.is_alive() for p in processes)
    with pytest.raises(ValueError, match="closed"):
        scorer.score([], [])


def test_score_empty_batch() -> None:
    assert score(hash_answer_reward, [], [], timeout_s=1.0) == ([], 0)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((hash_answer_reward, ["a"], [], 1.0), {}, "1 completions but 0 answers"),
        ((hash_answer_reward, [], [], 0.0), {}, "timeout_s must be > 0"),
        ((hash_answer_reward, [], [], 1.0), {"num_workers": 0}, "num_workers"),
        ((lambda c, a: 1.0, [], [], 1.0), {}, "picklable"),
        (("math", [], [], 1.0), {}, "must be callable"),
    ],
)
def test_score_bad_input(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        score(*args, **kwargs)


def test_reward_workers_do_not_import_torch() -> None:
    # Spawned workers import rlready.rl.rewards to unpickle their reward; torch would add ~1 s per start.
    code = "import sys, rlready.rl.rewards; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_users_reward_by_module_and_function() -> None:
    import operator

    from rlready import recipes
    from rlready.config import ConfigError

    assert get_reward("operator:lt") is operator.lt
    for name, why in [("no_such_module_xyz:f", "cannot be imported"), ("operator:nope", "cannot be imported"),
                      ("operator:__doc__", "not a function")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            get_reward(name)
        with pytest.raises(ConfigError, match="rl.reward"):
            recipes.resolve("rl", "tiny", overrides=[("rl.reward", name)])
    # A user's reward works on the synthetic tasks too (registered ones other than arithmetic need rl.data).
    assert recipes.resolve("rl", "tiny", overrides=[("rl.reward", "operator:lt")]).rl.reward == "operator:lt"
