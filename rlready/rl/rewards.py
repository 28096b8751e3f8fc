"""Verifiable rewards for RLVR (PAPER.md §4: maths problems with verifiable answers), by name.

A reward is a plain ``(completion, answer) -> float`` callable, 1.0 for a correct final answer and
0.0 otherwise. They are module-level functions so that :class:`rlready.rl.scoring.RewardScorer` can
send them to a worker process, which is where their timeout is enforced (see :func:`score`).

Registered rewards:
  * ``arithmetic``: the embedded synthetic tasks, answer after the last ``####`` (GSM8K convention);
  * ``gsm8k``: the same check for GSM8K-style data read by :func:`load_gsm8k_jsonl`;
  * ``math``: MATH-style ``\\boxed{}`` answers, checked with math-verify.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from rlready.rl.scoring import RewardScorer, score

__all__ = [
    "RewardFn",
    "RewardScorer",
    "available_rewards",
    "extract_hash_answer",
    "get_reward",
    "hash_answer_reward",
    "load_gsm8k_jsonl",
    "math_reward",
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
    """The reward registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; available: {', '.join(available_rewards())}") from None


def available_rewards() -> list[str]:
    """Names of all registered rewards, sorted."""
    return sorted(_REGISTRY)


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


def _as_number(text: str) -> Fraction | None:
    # Fraction parses integers, decimals, "a/b" and exponents exactly, so "3.50" == "3.5" == "7/2"
    # without float rounding.
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


@register_reward("arithmetic")
@register_reward("gsm8k")
def hash_answer_reward(completion: str, answer: str) -> float:
    """1.0 when the number after the completion's last ``####`` equals ``answer`` exactly, else 0.0."""
    gold = _as_number("".join(answer.split()).replace(",", "").rstrip("."))
    if gold is None:
        raise ValueError(f"hash_answer_reward: gold answer {answer!r} is not a number")
    pred = extract_hash_answer(completion)
    return float(pred is not None and _as_number(pred) == gold)


def load_gsm8k_jsonl(path: str | Path) -> list[tuple[str, str]]:
    """Read GSM8K-style JSONL (one ``{"question": ..., "answer": "... #### n"}`` per line).

    Returns ``(prompt, answer)`` pairs: the question text and the normalised final number of the
    answer field (what :func:`hash_answer_reward` compares against). Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"load_gsm8k_jsonl: no such file {str(path)!r}")
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"load_gsm8k_jsonl: {where}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"load_gsm8k_jsonl: {where}: expected a JSON object")
            for key in ("question", "answer"):
                if not isinstance(record.get(key), str):
                    raise ValueError(f"load_gsm8k_jsonl: {where}: missing string field {key!r}")
            final = extract_hash_answer(record["answer"])
            if final is None or _as_number(final) is None:
                raise ValueError(f"load_gsm8k_jsonl: {where}: answer has no '#### <number>' final line")
            pairs.append((record["question"].strip(), final))
    if not pairs:
        raise ValueError(f"load_gsm8k_jsonl: {path} holds no records")
    return pairs


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
