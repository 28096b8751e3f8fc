"""Per-batch statistics returned by the losses from the same pass over the vocabulary.

Fields are sums over non-ignored tokens (plus their count), so micro-batches and ranks combine by
addition (``+`` or one ``all_reduce`` of ``as_tensor()``) before taking means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch


@dataclass
class LossStats:
    ce_sum: torch.Tensor  # sum of -log p_x  (perplexity = exp(mean))
    entropy_sum: torch.Tensor  # sum of H(p) = -sum_a p_a log p_a
    correct_sum: torch.Tensor  # number of tokens whose argmax is the target (top-1 accuracy)
    head_mass_sum: torch.Tensor  # sum of the probability mass inside the top-k
    count: torch.Tensor  # number of non-ignored tokens

    def __add__(self, other: LossStats) -> LossStats:
        return LossStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([getattr(self, f.name).detach().double() for f in fields(self)])

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> LossStats:
        return cls(*t.unbind(0))

    def means(self) -> dict[str, float]:
        """Means over tokens as Python floats (one host sync; call on logging steps only)."""
        values = self.as_tensor().tolist()
        count = max(values[-1], 1.0)
        ce = values[0] / count
        return {
            "ce": ce,
            "ppl": math.exp(min(ce, 700.0)),
            "entropy": values[1] / count,
            "accuracy": values[2] / count,
            "head_mass": values[3] / count,
            "tokens": values[-1],
        }
