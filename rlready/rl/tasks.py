"""RL tasks: prompts with a gold answer, from the synthetic world or from a JSONL file, and the stream of
training prompts.

One JSONL reader serves every reward: a record holds a ``problem`` (or ``question``) and an answer in the
format of the reward (:func:`rlready.rl.answers.answer_key`):
  * ``math``: MATH-style, ``answer`` or a ``solution`` with ``\\boxed{}``;
  * any other (``gsm8k``, ``arithmetic``): GSM8K-style, ``answer`` ending in ``#### <number>``.
A bad record is a :class:`rlready.config.ConfigError` (it comes from ``rl.data``), ``rl.data PATH:LINE: ...``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlready.config import ConfigError, RunConfig
from rlready.rl.answers import answer_key, as_number

__all__ = ["PromptStream", "Task", "load_jsonl", "load_tasks", "qa_prompt"]


@dataclass(frozen=True)
class Task:
    prompt: str
    answer: str


def qa_prompt(question: str) -> str:
    return f"Q: {question}\nA:"  # the synthetic world's format, so mid-trained models know where to answer


def load_jsonl(path: str | Path, reward: str) -> list[tuple[str, str]]:
    """``(question, gold answer)`` pairs of a JSONL file, one record a line (blank lines skipped), the answer
    in the format of ``reward``: a GSM8K answer gives its normalised final number (what the reward compares
    against), a MATH record its ``answer`` or else the boxed answer of its ``solution``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"rl.data {str(path)!r} does not exist (no such file)")
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                pairs.append(_record(line, reward, f"rl.data {path}:{lineno}"))
    if not pairs:
        raise ConfigError(f"rl.data {path} holds no records")
    return pairs


def _record(line: str, reward: str, where: str) -> tuple[str, str]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where}: invalid JSON ({err.msg})") from None
    if not isinstance(rec, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    question = rec.get("problem", rec.get("question"))
    if not isinstance(question, str):
        raise ConfigError(f"{where}: missing string field 'question' (or 'problem')")
    answer = rec.get("answer")
    if reward == "math":
        if not answer:  # MATH records may carry the answer only inside the worked solution
            solution = rec.get("solution")
            answer = answer_key(solution, reward) if isinstance(solution, str) else None
        if not isinstance(answer, str):
            raise ConfigError(f"{where}: missing string field 'answer' (or a boxed 'solution')")
        return question.strip(), answer
    if not isinstance(answer, str):
        raise ConfigError(f"{where}: missing string field 'answer'")
    final = answer_key(answer, reward)
    if final is None or as_number(final) is None:
        raise ConfigError(f"{where}: answer has no '#### <number>' final line")
    return question.strip(), final


def load_tasks(cfg: RunConfig) -> tuple[list[Task], list[Task]]:
    """(training prompts, held-out evaluation prompts) of the run."""
    rc = cfg.rl
    if rc.data is None:
        from rlready.data.reasoning import ReasoningConfig
        from rlready.data.world import World, WorldConfig

        # Same world seed (hence the same held-out split rule) as pre-/mid-training; the difficulty knobs
        # let a small model start RL with non-zero success, without which GRPO has no signal.
        difficulty = ReasoningConfig(max_steps=rc.task_max_steps, max_operand=rc.task_max_operand)
        world = World(WorldConfig(seed=cfg.data.world_seed, reasoning=difficulty))
        train = [Task(p.prompt, p.answer) for p in world.reasoning_problems(rc.train_problems, split="train")]
        held = [
            Task(p.prompt, p.answer) for p in world.reasoning_problems(cfg.eval.reasoning_problems, "eval")
        ]
        return train, held
    tasks = [Task(qa_prompt(q), a) for q, a in load_jsonl(rc.data, rc.reward)]
    # The last records are held out (at most a tenth), never used as training prompts.
    n_eval = min(cfg.eval.reasoning_problems, len(tasks) // 10)
    if n_eval < 1:
        raise ConfigError(f"rl.data {rc.data!r} has {len(tasks)} records; need at least 10")
    return tasks[:-n_eval], tasks[-n_eval:]


class PromptStream:
    """Training prompts in shuffled epochs; its state (epoch, cursor) is checkpointed for exact resume."""

    def __init__(self, tasks: Sequence[Task], seed: int) -> None:
        self.tasks, self.seed = list(tasks), seed
        self.epoch = self.cursor = 0
        self._order = self._perm()

    def _perm(self) -> list[int]:
        order = list(range(len(self.tasks)))
        random.Random(f"{self.seed}:rl:{self.epoch}").shuffle(order)
        return order

    def take(self, n: int) -> list[Task]:
        out = []
        for _ in range(n):
            if self.cursor == len(self._order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._perm()
            out.append(self.tasks[self._order[self.cursor]])
            self.cursor += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._perm()
