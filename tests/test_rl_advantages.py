"""Tests for rlready.rl.group_advantages against a per-group statistics reference."""

from __future__ import annotations

import statistics

import pytest
import torch

from rlready.rl import group_advantages


def test_matches_population_std_reference() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0], [0.5, 2.0, -1.0, 0.0, 3.0]], dtype=torch.float64)
    adv, zero = group_advantages(rewards, eps=1e-6)
    for g, row in enumerate(rewards.tolist()):
        mu, sd = statistics.fmean(row), statistics.pstdev(row)
        expected = torch.tensor([(r - mu) / (sd + 1e-6) for r in row], dtype=torch.float64)
        torch.testing.assert_close(adv[g], expected)
    assert zero.tolist() == [False, False]
    assert adv.shape == rewards.shape and adv.dtype == torch.float64


def test_binary_group_values() -> None:
    # 1 of 4 correct: mean 0.25, population std sqrt(3)/4.
    adv, _ = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), eps=0.0, std_tol=1e-6)
    s = 3**0.5 / 4
    torch.testing.assert_close(adv, torch.tensor([[0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s]]))


def test_zero_variance_groups_are_exactly_zero() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.3, 0.3 + 1e-9, 0.3], [0.0, 1.0, 0.0]])
    adv, zero = group_advantages(rewards, std_tol=1e-6)
    assert zero.tolist() == [True, True, True, False]
    assert (adv[:3] == 0).all()
    assert adv[3].abs().sum() > 0


def test_group_of_one_and_integer_rewards() -> None:
    adv, zero = group_advantages(torch.tensor([[3], [5]]))
    assert zero.tolist() == [True, True]
    assert adv.dtype == torch.float32 and (adv == 0).all()
    adv, zero = group_advantages(torch.tensor([[0, 1]]))
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 1.0]]), atol=1e-5, rtol=0)


def test_rms_is_one_for_any_group_size() -> None:
    g = torch.Generator().manual_seed(0)
    for size in (2, 5, 16, 64):
        adv, _ = group_advantages(torch.rand(8, size, generator=g, dtype=torch.float64), eps=0.0)
        torch.testing.assert_close(adv.pow(2).mean(dim=1), torch.ones(8, dtype=torch.float64))
        torch.testing.assert_close(adv.mean(dim=1), torch.zeros(8, dtype=torch.float64))


@pytest.mark.parametrize(
    ("rewards", "kwargs", "match"),
    [
        (torch.zeros(4), {}, "num_prompts, group_size"),
        (torch.zeros(2, 0), {}, "num_prompts, group_size"),
        (torch.zeros(2, 2, 2), {}, "num_prompts, group_size"),
        (torch.tensor([[0.0, float("nan")]]), {}, "NaN or inf"),
        (torch.tensor([[0.0, float("inf")]]), {}, "NaN or inf"),
        (torch.zeros(2, 2), {"eps": -1.0}, "must be >= 0"),
        (torch.zeros(2, 2), {"std_tol": -1.0}, "must be >= 0"),
        (torch.zeros(2, 2), {"eps": 0.0, "std_tol": 0.0}, "both 0"),
    ],
)
def test_bad_input(rewards: torch.Tensor, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, **kwargs)
