"""DAPO dynamic sampling as a pure helper (docs/method.md §5.3).

A prompt group whose completions all score the same has zero group-relative advantage and adds only
noise to the token count. Dynamic sampling drops such groups and generates more rounds until the
step has ``prompts_per_step`` informative groups. Generation itself is the caller's callable, so
this module has no model, tokenizer or torch dependency and is tested with plain lists.

"Informative" uses the same rule as :func:`rlready.rl.advantages.group_advantages`: population std
of the group's rewards ``>= tol``, so a kept group never gets all-zero advantages.
"""

from __future__ import annotations

import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["DynamicBatch", "collect_informative_groups", "is_informative"]

G = TypeVar("G")


@dataclass(frozen=True)
class DynamicBatch(Generic[G]):
    """What :func:`collect_informative_groups` gathered for one step.

    ``capped`` is true when ``max_rounds`` ran out before the batch was full; ``groups`` then holds
    fewer than ``prompts_per_step`` groups and the trainer decides whether to train on them or skip.
    """

    groups: list[G]
    rounds: int
    dropped_zero_variance: int
    dropped_surplus: int
    capped: bool


def is_informative(rewards: Sequence[float], tol: float = 1e-6) -> bool:
    """Whether a group's rewards differ enough (population std ``>= tol``) to give a learning signal."""
    if len(rewards) == 0:
        raise ValueError("is_informative: a group has no rewards")
    return statistics.pstdev(float(r) for r in rewards) >= tol


def collect_informative_groups(
    generate_round: Callable[[int], Sequence[G]],
    prompts_per_step: int,
    max_rounds: int,
    tol: float = 1e-6,
    rewards_of: Callable[[G], Sequence[float]] = operator.attrgetter("rewards"),
) -> DynamicBatch[G]:
    """Call ``generate_round`` until ``prompts_per_step`` informative groups are kept or ``max_rounds`` ran.

    Args:
        generate_round: generates and scores one round of prompt groups; it is passed the number of
            informative groups still missing (it may use it to size the round, or ignore it).
        prompts_per_step: informative groups wanted for the step (128 in the paper).
        max_rounds: at most this many calls to ``generate_round`` (verl's ``max_num_gen_batches``).
        tol: population-std threshold below which a group counts as zero-variance.
        rewards_of: reads a group's rewards; by default its ``rewards`` attribute.

    Returns:
        A :class:`DynamicBatch`: exactly ``prompts_per_step`` groups, in generation order, unless
        capped. Informative groups beyond ``prompts_per_step`` in the last round are truncated and
        counted in ``dropped_surplus``.
    """
    if isinstance(prompts_per_step, bool) or not isinstance(prompts_per_step, int) or prompts_per_step < 1:
        raise ValueError(
            f"collect_informative_groups: prompts_per_step must be an int >= 1, got {prompts_per_step!r}"
        )
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
        raise ValueError(f"collect_informative_groups: max_rounds must be an int >= 1, got {max_rounds!r}")
    if tol < 0:
        raise ValueError(f"collect_informative_groups: tol must be >= 0, got {tol}")

    kept: list[G] = []
    dropped_zero = dropped_surplus = rounds = 0
    while len(kept) < prompts_per_step and rounds < max_rounds:
        rounds += 1
        for group in generate_round(prompts_per_step - len(kept)):
            if not is_informative(rewards_of(group), tol):
                dropped_zero += 1
            elif len(kept) < prompts_per_step:
                kept.append(group)
            else:
                dropped_surplus += 1
    return DynamicBatch(
        groups=kept,
        rounds=rounds,
        dropped_zero_variance=dropped_zero,
        dropped_surplus=dropped_surplus,
        capped=len(kept) < prompts_per_step,
    )
