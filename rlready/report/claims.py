"""The paper's claims (docs/method.md §8) as data: what the report checks, on which configurations, how.

Each claim names the configurations it compares; the names are those of ``rlready.study.DEFAULT_CONFIGS``.
A study run with other configurations (``--configs``) lacks them, and the report says which are missing
instead of evaluating the claim on nothing. ``rlready.report.report.claims`` evaluates any such list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["above", "below", "comparable", "gain"]


@dataclass(frozen=True)
class Claim:
    """One claim, checked on the evaluation (``eval.json``) of one stage.

    ``kind``:

    - ``above`` / ``below``: ``configs == (a, b)``; the mean over seeds of ``a`` lies above (below) ``b``'s.
    - ``comparable``: the means of every configuration in ``configs`` lie within ``tolerance`` of each
      other (max/min - 1).
    - ``gain``: per run, the metric minus its value on the starting model (``initial/<metric>``) is above
      zero; ``configs`` empty means every configuration of the study.

    ``metric`` is a key of the stage's ``eval.json`` (``/`` for nested ones); several keys are averaged per
    run. ``label`` names what the report's "measured" column shows.
    """

    text: str
    stage: str
    metric: str | tuple[str, ...]
    configs: tuple[str, ...]
    kind: Kind
    label: str = ""
    tolerance: float = 0.10

    def __post_init__(self) -> None:
        if self.kind in ("above", "below") and len(self.configs) != 2:
            raise ValueError(
                f"claim {self.text!r}: {self.kind!r} compares two configurations, got {self.configs}"
            )
        if self.kind not in ("above", "below", "comparable", "gain"):
            raise ValueError(f"claim {self.text!r}: unknown kind {self.kind!r}")

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.metric,) if isinstance(self.metric, str) else self.metric


PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "Lower entropy after pre-training with beta=-0.25 than CE",
        "pretrain",
        "entropy",
        ("beta=-0.25", "CE"),
        "below",
        "entropy",
    ),
    Claim(
        "Higher entropy after pre-training with beta=0.5 than CE",
        "pretrain",
        "entropy",
        ("beta=0.5", "CE"),
        "above",
        "entropy",
    ),
    Claim(
        "Perplexity converges to comparable values for every beta",
        "pretrain",
        "ppl",
        ("CE", "beta=-0.25", "beta=0.5"),
        "comparable",
        tolerance=0.10,
    ),
    Claim(
        "Pre-training average: beta=-0.25 above CE",
        "pretrain",
        ("knowledge", "reasoning"),
        ("beta=-0.25", "CE"),
        "above",
        "mean of knowledge and reasoning",
    ),
    Claim(
        "Mid-training knowledge: beta=-0.25 at least CE's",
        "midtrain",
        "knowledge",
        ("beta=-0.25", "CE"),
        "above",
        "knowledge",
    ),
    Claim(
        "Mid-training reasoning: beta=-0.25 above CE",
        "midtrain",
        "reasoning",
        ("beta=-0.25", "CE"),
        "above",
        "reasoning",
    ),
    Claim("RL Avg@k: beta=-0.25 above CE", "rl", "avg@k", ("beta=-0.25", "CE"), "above", "Avg@k after RL"),
    Claim(
        "RL Avg@k: lam_tail=-0.1 above CE", "rl", "avg@k", ("lam_tail=-0.1", "CE"), "above", "Avg@k after RL"
    ),
    Claim(
        "RL Pass@k: lam_head=0.1 keeps Pass@k at least CE's",
        "rl",
        "pass@k",
        ("lam_head=0.1", "CE"),
        "above",
        "Pass@k after RL",
    ),
    Claim(
        "RL raises Avg@k over the starting model (all configurations)",
        "rl",
        "avg@k",
        (),
        "gain",
        "Avg@k gain",
    ),
)
