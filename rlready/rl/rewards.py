"""Verifiable rewards for RLVR (docs/method.md §5.3: maths problems with verifiable answers), by name.

A reward is a plain ``(completion, answer) -> float`` callable, 1.0 for a correct final answer and
0.0 otherwise. They are module-level functions so that :class:`rlready.rl.scoring.RewardScorer` can
send them to a worker process, which is where their timeout is enforced (see :func:`score`).

Registered rewards:
  * ``arithmetic``: the embedded synthetic tasks, answer after the last ``####`` (GSM8K convention);
  * ``gsm8k``: the same check for GSM8K-style data (read by :func:`rlready.rl.tasks.load_jsonl`);
  * ``math``: MATH-style ``\\boxed{}`` answers, checked with math-verify.

A user's verifier is named ``MODULE:FUNCTION`` (e.g. ``my_rewards:exact``): an importable module-level
``(completion, answer) -> float``, used wherever a registered name is (answers in the ``####`` format).

Answers are extracted by :mod:`rlready.rl.answers`. :func:`overlong_penalty` is DAPO's length term,
added to a verifier's reward by the trainer.
"""

from __future__ import annotations

from collections.abc import Callable

from rlready.rl.answers import as_number, extract_hash_answer
from rlready.rl.scoring import RewardScorer, score

__all__ = [
    "RewardFn",
    "RewardScorer",
    "available_rewards",
    "get_reward",
    "hash_answer_reward",
    "math_reward",
    "overlong_penalty",
    "register_reward",
    "score",
]

RewardFn = Callable[[str, str], float]

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward under ``name``; the function itself is returned unchanged."""
    if not name:
        raise ValueError("register_reward: empty reward name")

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            raise ValueError(f"register_reward: a reward named {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def get_reward(name: str) -> RewardFn:
    """The reward registered under ``name``, or the function ``MODULE:FUNCTION`` names."""
    if ":" in name:
        return _import_reward(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown reward {name!r}; available: {', '.join(available_rewards())} or MODULE:FUNCTION"
        ) from None


def _import_reward(name: str) -> RewardFn:
    import importlib

    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"reward {name!r} cannot be imported ({err})") from None
    if not callable(fn):
        raise ValueError(f"reward {name!r} is not a function")
    return fn


def available_rewards() -> list[str]:
    """Names of all registered rewards, sorted."""
    return sorted(_REGISTRY)


@register_reward("arithmetic")
@register_reward("gsm8k")
def hash_answer_reward(completion: str, answer: str) -> float:
    """1.0 when the number after the completion's last ``####`` equals ``answer`` exactly, else 0.0."""
    gold = as_number("".join(answer.split()).replace(",", "").rstrip("."))
    if gold is None:
        raise ValueError(f"hash_answer_reward: gold answer {answer!r} is not a number")
    pred = extract_hash_answer(completion)
    return float(pred is not None and as_number(pred) == gold)


@register_reward("math")
def math_reward(completion: str, answer: str) -> float:
    """1.0 when math-verify finds the completion's ``\\boxed{}`` answer equivalent to ``answer``, else 0.0.

    math-verify's own timeouts use ``signal.alarm``, which only works on the main thread and would
    clash with the caller's signal handlers, so they are disabled here (``parsing_timeout=None``,
    ``timeout_seconds=None``); the time limit is ours, enforced by :func:`score` in a worker process
    that is killed on timeout. Call it through :func:`score` on untrusted completions.
    """
    from math_verify import parse, verify  # lazy: imports sympy, not needed by the other rewards

    gold_text = answer if ("\\boxed" in answer or "$" in answer) else f"\\boxed{{{answer}}}"
    gold = parse(gold_text, parsing_timeout=None)
    if not gold:
        raise ValueError(f"math_reward: gold answer {answer!r} could not be parsed")
    # Only a boxed answer counts (the MATH format): math-verify would otherwise fall back to the last
    # number in the text and reward completions that never committed to an answer.
    if "\\boxed" not in completion:
        return 0.0
    pred = parse(completion, parsing_timeout=None)
    if not pred:
        return 0.0
    return float(verify(gold, pred, timeout_seconds=None))  # gold first: verify is not symmetric


def overlong_penalty(length: int, max_len: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment: 0 up to ``max_len - buffer`` tokens, then falling linearly to
    ``-factor`` at ``max_len`` (and beyond). ``buffer`` 0 turns it off."""
    if buffer <= 0 or length <= max_len - buffer:
        return 0.0
    return -factor * min(1.0, (length - (max_len - buffer)) / buffer)
