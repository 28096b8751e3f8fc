"""Tests for DAPO dynamic sampling (rlready.rl.sampling) with scripted rounds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from rlready.rl import group_advantages
from rlready.rl.sampling import collect_informative_groups, is_informative


@dataclass
class Group:
    name: str
    rewards: list[float]


MIXED = [1.0, 0.0, 0.0, 1.0]
FLAT = [1.0, 1.0, 1.0, 1.0]


class Script:
    """Returns pre-written rounds one after the other and records what it was asked for."""

    def __init__(self, rounds: list[list[Group]]) -> None:
        self.rounds = rounds
        self.asked: list[int] = []

    def __call__(self, missing: int) -> list[Group]:
        self.asked.append(missing)
        return self.rounds[len(self.asked) - 1]


def test_all_informative_single_round() -> None:
    script = Script([[Group(f"g{i}", MIXED) for i in range(3)]])
    batch = collect_informative_groups(script, prompts_per_step=3, max_rounds=5)
    assert [g.name for g in batch.groups] == ["g0", "g1", "g2"]
    assert (batch.rounds, batch.dropped_zero_variance, batch.dropped_surplus, batch.capped) == (
        1,
        0,
        0,
        False,
    )
    assert script.asked == [3]


def test_refill_path_truncates_surplus() -> None:
    script = Script(
        [
            [Group("a", MIXED), Group("b", FLAT), Group("c", [0.0, 0.0]), Group("d", MIXED)],
            [Group("e", FLAT), Group("f", MIXED), Group("g", MIXED), Group("h", FLAT), Group("i", MIXED)],
        ]
    )
    batch = collect_informative_groups(script, prompts_per_step=3, max_rounds=5)
    assert [g.name for g in batch.groups] == ["a", "d", "f"]
    assert batch.rounds == 2
    assert batch.dropped_zero_variance == 4  # b, c, e, h
    assert batch.dropped_surplus == 2  # g, i
    assert not batch.capped
    assert script.asked == [3, 1]


def test_cap_path_returns_what_there_is() -> None:
    script = Script([[Group("a", FLAT), Group("b", MIXED)], [], [Group("c", FLAT)]])
    batch = collect_informative_groups(script, prompts_per_step=4, max_rounds=3)
    assert [g.name for g in batch.groups] == ["b"]
    assert (batch.rounds, batch.dropped_zero_variance, batch.dropped_surplus, batch.capped) == (3, 2, 0, True)
    assert script.asked == [4, 3, 3]


def test_tolerance_and_custom_reader() -> None:
    rounds = [[{"r": [0.5, 0.5 + 1e-9]}, {"r": [0.5, 0.6]}]]
    batch = collect_informative_groups(
        Script(rounds), prompts_per_step=1, max_rounds=1, tol=1e-6, rewards_of=lambda g: g["r"]
    )
    assert batch.groups == [{"r": [0.5, 0.6]}]
    assert batch.dropped_zero_variance == 1


@pytest.mark.parametrize("rewards", [[1.0], [0.0, 0.0], [0.2, 0.2 + 1e-8], [0.0, 1.0], [3.0, 1.0, 2.0]])
def test_informative_agrees_with_group_advantages(rewards: list[float]) -> None:
    _, zero = group_advantages(torch.tensor([rewards], dtype=torch.float64), std_tol=1e-6)
    assert is_informative(rewards, tol=1e-6) == (not zero.item())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompts_per_step": 0}, "prompts_per_step"),
        ({"prompts_per_step": 2.0}, "prompts_per_step"),
        ({"max_rounds": 0}, "max_rounds"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    args = {"generate_round": Script([[]]), "prompts_per_step": 1, "max_rounds": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        collect_informative_groups(**args)


def test_group_without_rewards_is_an_error() -> None:
    with pytest.raises(ValueError, match="no rewards"):
        collect_informative_groups(Script([[Group("a", [])]]), prompts_per_step=1, max_rounds=1)
