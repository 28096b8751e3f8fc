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
    head_mass_sum: torch.Tensor  # sum of the probability mass M inside the top-k (tail mass: 1 - M)
    head_entropy_sum: torch.Tensor  # sum of the entropy of the top-k renormalised, -sum_K (p_a/M) log(p_a/M)
    count: torch.Tensor  # number of non-ignored tokens (the last field: the rows' math stacks them in order)

    def __add__(self, other: LossStats) -> LossStats:
        return LossStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_tensor(self) -> torch.Tensor:
        return torch.stack([getattr(self, f.name).detach().double() for f in fields(self)])

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> LossStats:
        return cls(*t.unbind(0))

    def means(self) -> dict[str, float]:
        """Means over tokens as Python floats (one host sync; call on logging steps only)."""
        s = dict(zip((f.name for f in fields(self)), self.as_tensor().tolist(), strict=True))
        count = max(s["count"], 1.0)
        ce = s["ce_sum"] / count
        return {
            "ce": ce,
            "ppl": math.exp(min(ce, 700.0)),
            "entropy": s["entropy_sum"] / count,
            "accuracy": s["correct_sum"] / count,
            "head_mass": s["head_mass_sum"] / count,
            # 1 - head mass, clamped: at k = V the fp32 head mass may round a hair above 1.
            "tail_mass": max(0.0, (s["count"] - s["head_mass_sum"]) / count),
            "head_entropy": s["head_entropy_sum"] / count,
            "tokens": s["count"],
        }


# The number of fields: the length of ``as_tensor()`` and of the rows' per-token statistics.
NUM_STATS = len(fields(LossStats))
