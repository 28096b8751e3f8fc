"""Reasoning: arithmetic word problems with step-by-step solutions ending in ``#### <answer>``.

These stand in for the paper's maths data (docs/method.md §5): present in small amounts in pre-training,
raised in mid-training, and the verifiable task of the RL stage. Problems are short on purpose so that
prompt + solution fits in 128 tokens for small models.

A solution retells the question one sentence at a time and writes each operation's arithmetic after its
sentence (``Mia has 7 apples. She buys 3 more. 7 + 3 = 10. ...``): every number it needs is then a copy of
the token after a phrase it has just repeated (what an induction head does) or of a number a few tokens
back. Solutions that list the steps alone make the model find "the number after the one used last" in the
question, a multi-hop retrieval that a ~1M-parameter model learns late and only in some seeds
(docs/method.md §5.1).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from rlready.data._sampling import in_heldout

PEOPLE = [
    ("Mia", "she"), ("Tom", "he"), ("Ava", "she"), ("Leo", "he"), ("Zoe", "she"), ("Sam", "he"),
    ("Ivy", "she"), ("Max", "he"), ("Eva", "she"), ("Ben", "he"), ("Nora", "she"), ("Omar", "he"),
]  # fmt: skip
ITEMS = ["apples", "coins", "books", "marbles", "stickers", "shells", "cards", "pencils", "stamps", "eggs"]
ADD_PHRASES = ["{p} buys {b} more.", "{p} finds {b} more.", "{p} is given {b} more.", "{p} wins {b} more."]
SUB_PHRASES = ["{p} gives away {b}.", "{p} loses {b}.", "{p} sells {b}.", "{p} uses {b}."]
MUL_PHRASES = ["Then the number of {items} is multiplied by {b}.", "Then {p} ends up with {b} times as many."]
PHRASES = {"+": ADD_PHRASES, "-": SUB_PHRASES, "*": MUL_PHRASES}
OPERATIONS = ("+", "-", "*")


@dataclass(frozen=True)
class ReasoningConfig:
    """Difficulty knobs: number of operations per problem, operand range and allowed operations."""

    min_steps: int = 1
    max_steps: int = 3
    max_operand: int = 20
    max_multiplier: int = 3
    operations: tuple[str, ...] = OPERATIONS

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if self.max_operand < 2:
            raise ValueError(f"max_operand must be >= 2, got {self.max_operand}")
        if self.max_multiplier < 2:
            raise ValueError(f"max_multiplier must be >= 2, got {self.max_multiplier}")
        bad = set(self.operations) - set(OPERATIONS)
        if not self.operations or bad:
            raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}, got {self.operations}")


@dataclass(frozen=True)
class Problem:
    """A word problem. ``prompt`` ends with ``A:``; ``solution`` is the step-by-step completion (the question
    retold with each operation's arithmetic after its sentence), including the final ``#### n`` line;
    ``answer`` is ``n`` as a string; ``key`` is the canonical arithmetic (e.g. ``"5+3-2"``), shared by
    problems that differ only in names and objects."""

    prompt: str
    solution: str
    answer: str
    key: str

    @property
    def short_solution(self) -> str:
        """The answer alone (`` #### n``): training text mixes it with the step-by-step form, so the length of
        a response is the model's choice, which RL can change (docs/method.md §5.2)."""
        return f" #### {self.answer}"

    @property
    def story(self) -> str:
        """The question's sentences without the closing question (``Mia has 7 apples. She buys 3 more.``)."""
        return self.prompt[len("Q: ") : self.prompt.rindex(" How many")]


def make_problem(rng: random.Random, config: ReasoningConfig) -> Problem:
    """One random problem. Subtraction never goes below zero, so every answer is a non-negative integer."""
    name, pronoun = rng.choice(PEOPLE)
    items = rng.choice(ITEMS)
    value = rng.randint(1, config.max_operand)
    story = [f"{name} has {value} {items}."]
    steps = list(story)
    key = str(value)
    for _ in range(rng.randint(config.min_steps, config.max_steps)):
        op = rng.choice(config.operations)
        if op == "-" and value < 2:
            op = "+"  # nothing sensible to take away; keep the step count
        b, new = _operation(rng, config, op, value)
        text = rng.choice(PHRASES[op]).format(p=pronoun, b=b, items=items)
        story.append(text[0].upper() + text[1:])
        steps += [story[-1], f"{value} {op} {b} = {new}."]
        key += f"{op}{b}"
        value = new
    prompt = f"Q: {' '.join(story)} How many {items} does {name} have now?\nA:"
    solution = f" {' '.join(steps)}\n#### {value}"
    return Problem(prompt, solution, str(value), key)


def copy_drill(
    rng: random.Random, config: ReasoningConfig, problem: Callable[[random.Random], Problem]
) -> str:
    """Drills of the one skill every solution needs first: copying numbers from the question.

    Three kinds of item: a list of numbers or a problem's story repeated (``Copy: 4 8 1. Again: 4 8 1.``), a
    problem with its step-by-step solution (``problem(rng)``: the caller's training problems, so that drills
    never show held-out arithmetic), and one operation's arithmetic (``7 + 3 = 10.``). Repeating a story and
    retelling it copy every operand after the phrase that precedes it, not only the first one after ``has``:
    the lookup a solution needs at each step, which with generator 6's drills (one-sentence stories) a tiny
    model formed late in mid-training, and in 3 runs of 24 not at all (docs/method.md §5.1).
    """
    lines = []
    for _ in range(rng.randint(3, 6)):
        kind = rng.choice((0, 1, 2, 2))  # arithmetic twice as often: its facts are many, each seen rarely
        if kind == 0:
            if rng.random() < 0.5:
                text = (
                    " ".join(str(rng.randint(0, config.max_operand)) for _ in range(rng.randint(2, 6))) + "."
                )
            else:
                text = problem(rng).story
            lines.append(f"Copy: {text} Again: {text}")
        elif kind == 1:
            p = problem(rng)
            lines.append(p.prompt + p.solution)
        else:
            lines.append(_arithmetic_line(rng, config))
    return "\n".join(lines)


def _arithmetic_line(rng: random.Random, config: ReasoningConfig) -> str:
    """One operation as a solution writes it. The first operand is, half of the time, up to ``max_operand *
    max_multiplier``: the range of most results carried from an earlier step, whose facts problems alone
    show too rarely to learn (a product of carried results can go higher)."""
    carried = config.max_operand * config.max_multiplier
    a = rng.randint(1, carried if rng.random() < 0.5 else config.max_operand)
    op = rng.choice(config.operations)
    b, value = _operation(rng, config, op, a)
    return f"{a} {op} {b} = {value}."


def _operation(rng: random.Random, config: ReasoningConfig, op: str, a: int) -> tuple[int, int]:
    """The second operand of ``a op b`` within the difficulty knobs, and the result; subtraction takes away
    at most ``a``, so results never go below zero."""
    if op == "+":
        b = rng.randint(1, config.max_operand)
        return b, a + b
    if op == "-":
        b = rng.randint(1, min(a, config.max_operand))
        return b, a - b
    b = rng.randint(2, config.max_multiplier)
    return b, a * b


def is_heldout_problem(salt: str, problem: Problem, fraction: float) -> bool:
    """Whether the problem's arithmetic belongs to the evaluation split (keyed by ``Problem.key``)."""
    return in_heldout(salt, f"reasoning:{problem.key}", fraction)
