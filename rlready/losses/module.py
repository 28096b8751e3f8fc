"""Thin ``nn.Module`` wrappers around the functional ops, with knobs that may follow a schedule.

A knob given as a schedule (``Linear``, ``Cosine``, or a spec string such as ``"linear:-0.25:0"``) is
evaluated at ``module.progress``, the fraction of training done, which the trainer sets each step. Knobs are
parsed and evaluated as the trainer's are (``parse_schedule``, ``weighting_at``), from the same schedule
objects a run configuration holds.
"""

from __future__ import annotations

import torch
from torch import nn

from .fused_linear import fused_linear_shaped_cross_entropy
from .schedules import Schedule, parse_schedule, weighting_at
from .schemes import TokenWeighting
from .shaped_ce import shaped_cross_entropy
from .stats import LossStats
from .validate import check_reduction


def _knob(name: str, value: float | str | Schedule) -> Schedule:
    try:
        return parse_schedule(value)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


class ShapedCrossEntropy(nn.Module):
    def __init__(
        self,
        beta: float | str | Schedule = 0.0,
        lam_head: float | str | Schedule = 0.0,
        lam_tail: float | str | Schedule = 0.0,
        k: int | float = 100,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.beta = _knob("beta", beta)
        self.lam_head = _knob("lam_head", lam_head)
        self.lam_tail = _knob("lam_tail", lam_tail)
        self.k, self.ignore_index, self.reduction = k, ignore_index, reduction
        self.progress = 0.0
        self.weighting()  # validate k and the knobs now, not at the first step

    def weighting(self) -> TokenWeighting:
        """The knobs at the current ``progress``."""
        return weighting_at(self.progress, self.beta, self.lam_head, self.lam_tail, self.k)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, *, return_stats: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, LossStats]:
        return shaped_cross_entropy(
            logits,
            targets,
            weighting=self.weighting(),
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            return_stats=return_stats,
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, lam_head={self.lam_head}, lam_tail={self.lam_tail}, k={self.k}, "
            f"reduction={self.reduction!r}"
        )


class FusedLinearShapedCrossEntropy(ShapedCrossEntropy):
    """The same knobs, applied to ``(hidden, lm_head_weight)`` without materialising the logits."""

    def __init__(self, *args, chunk_size: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunk_size = chunk_size

    def forward(  # type: ignore[override]
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        return_stats: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, LossStats]:
        return fused_linear_shaped_cross_entropy(
            hidden,
            weight,
            targets,
            bias=bias,
            weighting=self.weighting(),
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            return_stats=return_stats,
            chunk_size=self.chunk_size,
        )
