"""TRL's ``GRPOTrainer`` with the paper's RL recipe (docs/method.md §5.3) and the rewards of ``rlready rl``.

``grpo_config(**kwargs)`` is a ``trl.GRPOConfig`` with the recipe's settings; ``reward_function(name)`` (and the
ready-made ``arithmetic_reward``, ``gsm8k_reward``, ``math_reward``) are reward functions in TRL's signature
``(prompts, completions, **columns) -> list[float]`` that score with the verifiers of ``rlready rl``
(``rlready.rl.rewards.get_reward``). ``synthetic_prompts`` and ``jsonl_prompts`` give dataset rows
``{"prompt", "answer"}`` in the prompt format of ``rlready rl``.

What TRL does not do: **dynamic sampling**. ``rlready rl`` drops prompt groups whose rewards all agree (zero
advantage, no learning signal) and samples more until a step holds ``rl.prompts_per_step`` informative groups
(DAPO; docs/method.md §5.3). ``GRPOTrainer`` trains on every group it sampled, so a step's effective batch shrinks
as problems become all-solved or all-failed, and the gradient of the token-level (``dapo``) loss is diluted by
the zero-advantage tokens it still counts. Also: TRL standardises rewards with the sample std and eps 1e-4
(``rlready rl``: the population std and ``rl.adv_eps`` 1e-6), and ``steps_per_generation`` plays the part of
``rl.minibatches`` (optimizer updates per rollout batch; the clip acts only when it is above 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlready.rl.answers import answer_key, boxed_answer
from rlready.rl.rewards import get_reward
from rlready.rl.scoring import RewardScorer

__all__ = [
    "GRPO_RECIPE",
    "RewardFunction",
    "arithmetic_reward",
    "grpo_config",
    "gsm8k_reward",
    "jsonl_prompts",
    "math_reward",
    "reward_function",
    "synthetic_prompts",
]

# The paper's recipe (docs/method.md §5.3, §6) in GRPOConfig's terms: no KL term and no reference model,
# clip-higher 0.2 / 0.28, token-level loss over the accumulated batch, 16 samples per prompt at temperature 1,
# a constant learning rate of 1e-6 without weight decay.
GRPO_RECIPE: dict[str, Any] = {
    "loss_type": "dapo",
    "beta": 0.0,
    "epsilon": 0.2,
    "epsilon_high": 0.28,
    "temperature": 1.0,
    "top_p": 1.0,
    "num_generations": 16,
    # TRL needs every generation batch to hold whole groups; one group per micro-batch works anywhere. The
    # paper's 128 prompts x 16 samples per step: gradient_accumulation_steps x devices = 128.
    "per_device_train_batch_size": 16,
    "scale_rewards": "group",
    "learning_rate": 1e-6,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
}


def _trl() -> Any:
    try:
        import trl
    except ImportError:
        raise ImportError('the GRPO helpers need TRL: pip install "rlready[trl]"') from None
    return trl


def grpo_config(**kwargs: Any) -> Any:
    """``trl.GRPOConfig`` with the paper's RL recipe (``GRPO_RECIPE``); ``kwargs`` override it or add any other
    field (``output_dir``, ``per_device_train_batch_size``, ``max_completion_length``, ``steps_per_generation``...).

    TRL has no dynamic sampling (see the module docstring): groups whose rewards all agree stay in the batch
    with zero advantage, where ``rlready rl`` replaces them with informative ones.
    """
    return _trl().GRPOConfig(**{**GRPO_RECIPE, **kwargs})


def _completion_text(completion: Any) -> str:
    """A completion as TRL passes it: text, or (conversational datasets) a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else ""
    raise ValueError(
        f"reward: a completion must be text or a list of messages, got {type(completion).__name__}"
    )


def _gold(answer: Any, name: str) -> str:
    """The gold answer in the form the verifier compares against, as ``rlready.rl.tasks.load_jsonl`` reads it:
    a GSM8K worked answer gives its ``#### n``, a MATH solution its boxed answer."""
    if not isinstance(answer, str):
        answer = str(answer)
    if name == "math":
        return (boxed_answer(answer) or answer) if "\\boxed" in answer else answer
    return (answer_key(answer, name) or answer) if "####" in answer else answer


class RewardFunction:
    """A verifier of ``rlready rl`` as a TRL reward function: ``(prompts, completions, **columns)``.

    ``columns[answer_field]`` holds the gold answers (one per completion; TRL repeats a dataset's columns for
    every generation). A reward that raises or is not finite scores 0, as in ``rlready rl``. With ``timeout_s``
    every completion is scored in a worker process that is killed when it overruns
    (``rlready.rl.scoring.RewardScorer``, kept for the life of this object; ``close()`` ends it), which is how
    ``rlready rl`` scores; without it, in this process.
    """

    def __init__(
        self, name: str, *, answer_field: str = "answer", timeout_s: float | None = None, num_workers: int = 1
    ) -> None:
        self.reward = get_reward(name)
        self.name, self.answer_field = name, answer_field
        self.timeout_s, self.num_workers = timeout_s, num_workers
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"reward_function: timeout_s must be > 0, got {timeout_s!r}")
        self.__name__ = f"{name}_reward"  # TRL logs each reward under its function's name
        self._scorer: RewardScorer | None = None
        self.failures = 0  # reward calls that raised, overran or were not finite, over this object's life

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any) -> list[float]:
        if self.answer_field not in columns:
            raise ValueError(
                f"{self.__name__}: the dataset has no {self.answer_field!r} column (columns: "
                f"{', '.join(sorted(k for k in columns if k not in ('trainer_state', 'log_extra', 'log_metric')))})"
            )
        answers = [_gold(a, self.name) for a in columns[self.answer_field]]
        texts = [_completion_text(c) for c in completions]
        if len(answers) != len(texts):
            raise ValueError(f"{self.__name__}: {len(texts)} completions but {len(answers)} answers")
        if self.timeout_s is None:
            rewards, failures = self._in_process(texts, answers)
        else:
            if self._scorer is None:
                self._scorer = RewardScorer(self.reward, self.timeout_s, num_workers=self.num_workers)
            rewards, failures = self._scorer.score(texts, answers)
        self.failures += failures
        return rewards

    def _in_process(self, texts: list[str], answers: list[str]) -> tuple[list[float], int]:
        rewards, failures = [], 0
        for text, answer in zip(texts, answers, strict=True):
            try:
                value = float(self.reward(text, answer))
            except Exception:  # a verifier failing on odd model output costs that completion, not the run
                value = math.nan
            ok = math.isfinite(value)
            rewards.append(value if ok else 0.0)
            failures += not ok
        return rewards, failures

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def __repr__(self) -> str:
        return (
            f"RewardFunction({self.name!r}, answer_field={self.answer_field!r}, timeout_s={self.timeout_s})"
        )


def reward_function(
    name: str = "arithmetic",
    *,
    answer_field: str = "answer",
    timeout_s: float | None = None,
    num_workers: int = 1,
) -> RewardFunction:
    """The reward ``name`` of ``rlready rl`` (``arithmetic``, ``gsm8k``, ``math``; ``rlready.rl.rewards``) for
    ``GRPOTrainer(reward_funcs=...)``. Give ``timeout_s`` for verifiers that can hang on odd output (``math``)."""
    return RewardFunction(name, answer_field=answer_field, timeout_s=timeout_s, num_workers=num_workers)


# Ready-made: the synthetic world's and GSM8K's checks cannot hang, so they run in this process; math-verify can,
# so ``math_reward`` scores in a worker process under ``rlready rl``'s default limit (rl.reward_timeout_s, 10 s).
arithmetic_reward = reward_function("arithmetic")
gsm8k_reward = reward_function("gsm8k")
math_reward = reward_function("math", timeout_s=10.0)


def synthetic_prompts(
    n: int, split: str = "train", *, world_seed: int = 0, max_steps: int = 3, max_operand: int = 20
) -> list[dict[str, str]]:
    """``n`` arithmetic problems of the synthetic world as ``{"prompt", "answer"}`` rows, the prompts of
    ``rlready rl`` (``rlready.rl.tasks.load_tasks``): pass the run's ``data.world_seed``, ``rl.task_max_steps``
    and ``rl.task_max_operand``. ``split="eval"`` gives the held-out problems."""
    from rlready.data.reasoning import ReasoningConfig
    from rlready.data.world import World, WorldConfig

    world = World(
        WorldConfig(seed=world_seed, reasoning=ReasoningConfig(max_steps=max_steps, max_operand=max_operand))
    )
    return [{"prompt": p.prompt, "answer": p.answer} for p in world.reasoning_problems(n, split)]  # type: ignore[arg-type]


def jsonl_prompts(path: str | Path, reward: str = "gsm8k") -> list[dict[str, str]]:
    """A GSM8K- or MATH-style JSONL file as ``{"prompt", "answer"}`` rows, read and prompted as ``rlready rl
    --rl.data FILE`` reads it (``question``/``problem``; the answer in the format of ``reward``)."""
    from rlready.rl.tasks import load_jsonl, qa_prompt

    return [{"prompt": qa_prompt(q), "answer": a} for q, a in load_jsonl(path, reward)]
