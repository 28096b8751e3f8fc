"""Sample-based accuracy metrics for verifiable tasks: Avg@k, Cons@k and the unbiased Pass@k.

The paper reports (docs/method.md §7) Avg@128 (mean accuracy of the samples), Cons@128 (majority vote) and
Pass@64 with the unbiased estimator ``1 - C(n-c, k) / C(n, k)``. Everything here is exact: no
bootstrap resampling, so two runs over the same samples give the same numbers.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

__all__ = ["avg_at_k", "cons_at_k", "curve_ks", "majority_index", "paired_gain", "pass_at_k", "summarize"]

Equal = Callable[[str, str], bool]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of the chance that at least one of ``k`` draws (without replacement) is correct.

    ``n`` samples were drawn, ``c`` of them correct. The estimator is ``1 - C(n-c, k) / C(n, k)``
    (docs/method.md §7); it is evaluated as ``1 - prod_{i=n-c+1..n} (1 - k/i)``, which never forms the huge
    binomials (``C(128, 64)`` is about 2.4e37) and stays accurate in floating point.
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name} must be an int, got {value!r}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        # Every k-subset contains a correct sample.
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean accuracy of the samples (Avg@k with k = ``len(correct)``)."""
    if len(correct) == 0:
        raise ValueError("avg_at_k: no samples")
    return sum(bool(x) for x in correct) / len(correct)


def majority_index(answers: Sequence[str | None], equal: Equal = operator.eq) -> int | None:
    """Index of the first sample of the most voted answer, or ``None`` when no answer parsed.

    ``None`` answers (unparseable) do not vote. Answers are grouped by ``equal`` against the first
    answer of each existing group, in order of appearance; the group with the most votes wins and a
    tie goes to the group seen first, so the result does not depend on dict or sort order.
    """
    reps: list[int] = []  # index of the first answer of each group
    votes: list[int] = []
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        for g, rep in enumerate(reps):
            if equal(answers[rep], ans):
                votes[g] += 1
                break
        else:
            reps.append(i)
            votes.append(1)
    if not reps:
        return None
    best = max(range(len(reps)), key=lambda g: (votes[g], -g))
    return reps[best]


def cons_at_k(answers: Sequence[str | None], gold: str, equal: Equal = operator.eq) -> bool:
    """Whether the exact majority vote over ``answers`` matches ``gold`` (Cons@k, k = ``len(answers)``).

    See :func:`majority_index` for voting rules; no parseable answer counts as incorrect. ``equal`` is
    called as ``equal(gold, answer)`` for the final check (gold first, as math-verify's ``verify``).
    """
    idx = majority_index(answers, equal)
    return idx is not None and bool(equal(gold, answers[idx]))  # type: ignore[arg-type]


def summarize(
    per_problem: list[tuple[list[str | None], list[bool]]],
    ks: int | Sequence[int],
    equal: Equal = operator.eq,
) -> dict[str, float]:
    """Average ``avg@k``, ``cons@k`` and ``pass@k`` over problems for every ``k`` in ``ks``.

    Each problem is ``(answers, correct)``: the extracted answer of every sample (``None`` when
    unparseable) and whether the verifier accepted it. ``avg@k`` and ``cons@k`` use the first ``k``
    samples (samples are i.i.d., so the first ``k`` are a fair draw); the majority answer counts as
    correct when the verifier accepted that sample, so no gold string is needed here. ``pass@k`` uses
    all ``n`` samples through the unbiased estimator. Passing several ``ks`` gives the pass@k curve.
    """
    ks_list = [ks] if isinstance(ks, int) else list(ks)
    if not ks_list:
        raise ValueError("summarize: ks is empty")
    if not per_problem:
        raise ValueError("summarize: no problems")
    for k in ks_list:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"summarize: every k must be a positive int, got {k!r}")
    for p, (answers, correct) in enumerate(per_problem):
        if len(answers) != len(correct):
            raise ValueError(
                f"summarize: problem {p} has {len(answers)} answers but {len(correct)} correctness flags"
            )
        if max(ks_list) > len(correct):
            raise ValueError(
                f"summarize: problem {p} has {len(correct)} samples, fewer than k={max(ks_list)}"
            )

    out: dict[str, float] = {}
    for k in ks_list:
        avg = cons = pas = 0.0
        for answers, correct in per_problem:
            avg += avg_at_k(correct[:k])
            idx = majority_index(answers[:k], equal)
            cons += float(idx is not None and bool(correct[idx]))
            pas += pass_at_k(len(correct), sum(bool(x) for x in correct), k)
        m = len(per_problem)
        out[f"avg@{k}"] = avg / m
        out[f"cons@{k}"] = cons / m
        out[f"pass@{k}"] = pas / m
    return out


def curve_ks(n: int, *extra: int) -> list[int]:
    """The ``k`` of a Pass@k curve over ``n`` samples (docs/method.md §7): every power of two up to ``n``, plus
    ``extra`` (such as the configured ``pass_k``) and ``n`` itself, sorted. ``log2 n`` points reach the large
    ``k`` where the priors of the study differ (the paper reports Pass@64 of 128) at a cost linear in ``n``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"curve_ks: n must be a positive int, got {n!r}")
    return sorted({1 << i for i in range(n.bit_length()) if 1 << i <= n} | {n, *extra})


def paired_gain(before: Sequence[float], after: Sequence[float]) -> tuple[float, float]:
    """Mean per-problem change ``after - before`` and its standard error, over the same problems.

    An RL gain in Avg@k is measured on one fixed set of held-out problems before and after training, so
    the per-problem differences are paired: their spread, not the spread of each accuracy, says whether
    the gain is larger than the sampling noise (``gain > 2 * se`` is the usual reading). ``se`` is
    ``std(diff, ddof=1) / sqrt(n)`` and ``nan`` for a single problem.
    """
    if len(before) != len(after):
        raise ValueError(f"paired_gain: {len(before)} values before but {len(after)} after")
    if not before:
        raise ValueError("paired_gain: no problems")
    diff = [float(a) - float(b) for b, a in zip(before, after, strict=True)]
    n = len(diff)
    mean = sum(diff) / n
    if n < 2:
        return mean, float("nan")
    var = sum((d - mean) ** 2 for d in diff) / (n - 1)
    return mean, math.sqrt(var / n)
