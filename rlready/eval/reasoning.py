"""Held-out reasoning evaluation, one for every stage: Avg@k, Cons@k and Pass@k (docs/method.md §7).

``evaluate_reasoning`` takes a *sampler* (a :class:`rlready.rl.rollout.RolloutBackend`: ``n`` completions per
prompt) and a *scorer* (``score(completions, answers) -> (rewards, failures)``: a
:class:`rlready.rl.scoring.RewardScorer`, or :class:`InProcessScorer`) and gives, for ``eval.samples`` = n
samples per problem at ``eval.temperature`` / ``eval.top_p``:

- ``avg@j``, ``cons@j``, ``pass@j`` for every power of two j <= n, ``eval.pass_k`` and n
  (:func:`rlready.metrics.curve_ks`; :func:`rlready.metrics.summarize`: Cons@j votes on the answers
  :func:`rlready.rl.answers.answer_key` extracts, Pass@j is the unbiased estimator), the Pass@k curve a report
  draws; and the configured ones under generic names: ``avg@k`` = Avg@n, ``cons@k`` = Cons@n,
  ``pass@k`` = Pass@``pass_k``;
- ``avg@k_per_problem`` (each problem's Avg@n, in problem order), for gains paired by problem
  (:func:`rlready.metrics.paired_gain`);
- ``n``, ``k``, ``problems`` and ``reward_failures`` (rewards that raised or overran, counted as wrong).

Each problem's samples come from their own random stream (``stream_seed("eval", seed, i)`` for problem i), so
the numbers do not depend on how problems are batched or split across processes: with ``shard`` (the
``torchrun`` processes) each process samples and scores every ``world_size``-th problem and the results are
gathered, giving every process the one-process numbers.

The LM stages evaluate their final model with RL's sampler (:func:`local_sampler`) and RL's evaluation seed
(:func:`eval_seed`), so the mid-trained numbers and the RL stage's ``initial`` numbers are one measurement
of the same model whenever problems and ``eval.*`` settings agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from rlready.metrics import curve_ks, summarize
from rlready.rl.answers import answer_key
from rlready.rl.rollout import CachedSampler, HFRollout, RolloutBackend, stream_seed

if TYPE_CHECKING:
    from rlready.config import EvalConfig, RLConfig

__all__ = ["InProcessScorer", "Scorer", "Shard", "eval_seed", "evaluate_reasoning", "local_sampler"]


class Shard(Protocol):
    """The processes an evaluation is split across (``rlready.train.dist.Dist``)."""

    rank: int
    world_size: int

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order."""
        ...


class Scorer(Protocol):
    def score(self, completions: Sequence[str], answers: Sequence[str]) -> tuple[list[float], int]:
        """Reward of every completion against its gold answer, and how many reward calls failed."""
        ...


class InProcessScorer:
    """A reward called in this process, with :class:`rlready.rl.scoring.RewardScorer`'s results (a reward that
    raises or is not finite gives 0.0 and counts as failed) but no timeout: for rewards that cannot hang, such
    as the synthetic world's arithmetic check, where worker processes would only add their start-up time."""

    def __init__(self, reward_fn: Callable[[str, str], float]) -> None:
        self.reward_fn = reward_fn

    def score(self, completions: Sequence[str], answers: Sequence[str]) -> tuple[list[float], int]:
        if len(completions) != len(answers):
            raise ValueError(
                f"score: {len(completions)} completions but {len(answers)} answers; they must pair up"
            )
        rewards, failures = [], 0
        for completion, answer in zip(completions, answers, strict=True):
            try:
                value = float(self.reward_fn(completion, answer))
            except Exception:  # a failing reward is one wrong sample, as in the worker processes
                value = math.nan
            ok = math.isfinite(value)
            rewards.append(value if ok else 0.0)
            failures += not ok
        return rewards, failures


def eval_seed(run_seed: int) -> int:
    """The sampling seed of the held-out evaluation of a run seeded ``run_seed`` (the RL stage's, which
    every stage of a study shares through ``--seed``)."""
    return run_seed + 1


def local_sampler(model: Any, tokenizer: Any, rc: RLConfig) -> RolloutBackend:
    """RL's rollout backend on a model held in this process: ``rl.backend`` with ``rl.gen_batch`` sequences per
    call, since both decide which samples a seed draws. vLLM keeps its own copy of the weights, loaded from a
    saved model, so the cached sampler stands in for it here (the two never draw the same samples)."""
    backend = HFRollout if rc.backend == "hf" else CachedSampler
    return backend(model, tokenizer, gen_batch=rc.gen_batch)


def evaluate_reasoning(
    sampler: RolloutBackend,
    scorer: Scorer,
    problems: Sequence[Any],
    ec: EvalConfig,
    *,
    seed: int,
    reward: str,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Avg@k, Cons@k, Pass@k and per-problem Avg@n of ``ec.samples`` samples per problem (see the module doc).

    ``problems`` have a ``prompt`` and a gold ``answer``; ``reward`` names the reward ``scorer`` checks with,
    which fixes the answer format Cons@k votes on. A sample is correct when its reward is at least 1.
    Problem i samples from the stream ``stream_seed("eval", seed, i)``: the same weights give the same numbers,
    and torch's global RNG is left as it was. ``shard``: split the problems across processes (see the module
    doc); every process must call this and gets the whole result.
    """
    if not problems:
        raise ValueError("evaluate_reasoning: no problems")
    n, k = ec.samples, ec.pass_k
    rank, world = (0, 1) if shard is None else (shard.rank, shard.world_size)
    mine = list(range(rank, len(problems), world))
    part = _sample_and_score(sampler, scorer, [problems[i] for i in mine], mine, ec, seed, reward)
    parts = shard.all_gather_object(part) if shard is not None and world > 1 else [part]
    scored = {i: row for rows, _ in parts for i, row in rows.items()}
    per_problem = [scored[i] for i in range(len(problems))]
    failures = sum(f for _, f in parts)
    result: dict[str, Any] = summarize(per_problem, curve_ks(n, k))
    # Generic keys hold the configured metrics (Avg@n, Cons@n, Pass@k), so a study reads them by name.
    result.update({"avg@k": result[f"avg@{n}"], "cons@k": result[f"cons@{n}"], "pass@k": result[f"pass@{k}"]})
    result.update(n=n, k=k, problems=len(problems), reward_failures=failures)
    # Each problem's Avg@n: a gain between two evaluations is measured pairwise on the same problems.
    result["avg@k_per_problem"] = [sum(correct) / n for _, correct in per_problem]
    return result


def _sample_and_score(
    sampler: RolloutBackend,
    scorer: Scorer,
    problems: Sequence[Any],
    index: Sequence[int],
    ec: EvalConfig,
    seed: int,
    reward: str,
) -> tuple[dict[int, tuple[list[str | None], list[bool]]], int]:
    """``{number: (answer keys, correct flags)}`` of ``ec.samples`` samples of each problem, and the failed
    rewards; ``problems[j]`` is problem number ``index[j]`` of the evaluation, which names its random stream."""
    if not problems:
        return {}, 0
    n = ec.samples
    outs = sampler.generate(
        [p.prompt for p in problems],
        n,
        ec.max_new_tokens,
        max(ec.temperature, 1e-5),  # generate() refuses temperature 0 when sampling; a tiny one is greedy
        top_p=ec.top_p,
        seeds=[stream_seed("eval", seed, i) for i in index],
    )
    texts = [c.text for group in outs for c in group]
    rewards, failures = scorer.score(texts, [p.answer for p in problems for _ in range(n)])
    rows = {}
    for j, group in enumerate(outs):
        keys = [answer_key(c.text, reward) for c in group]
        rows[index[j]] = (keys, [r >= 1.0 for r in rewards[j * n : (j + 1) * n]])
    return rows, failures
