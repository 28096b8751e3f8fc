"""Per-token weighting schemes: every objective here is one surrogate loss with stop-gradient weights.

The reward-shaped objective (docs/method.md §4.1) is ``L_t = -sum_a w_a log p_a`` with ``w_a = sg(p_a r_a)``.
Several well-known objectives are the same surrogate with other weights, so one ``TokenWeighting`` covers
them all (``x`` = ground truth, ``K`` = the top-``k`` tokens of ``p`` over the whole vocabulary ``V``)::

    w_a = (1 - eps) * [a = x] * p_x ** (alpha + 1 - (1 - p_x) ** beta) * (1 - p_x) ** gamma
        + [a != x] * p_a * (lam_head * [a in K] + lam_tail * [a not in K])
        + eps / V

=================  ==========================================  ===========================================
instance           knobs                                        published formula (value)
=================  ==========================================  ===========================================
cross-entropy      all zero                                     ``-log p_x``
paper (§3)         ``beta``, ``lam_head``, ``lam_tail``, ``k``  ``r_pos = (1/p_x) ** ((1-p_x) ** beta)``,
                                                                ``r_neg = lam_head / lam_tail``
label smoothing    ``label_smoothing = eps``                    ``(1-eps) (-log p_x) + eps mean_a(-log p_a)``
focal-style        ``gamma``                                    ``-(1 - p_x) ** gamma log p_x`` (Lin et al.)
DFT                ``alpha = 1``                                ``-sg(p_x) log p_x`` (Wu et al., 2025)
=================  ==========================================  ===========================================

The weights are always under stop-gradient (the policy-gradient view), so the gradient with respect to the
logits is ``p_j * S - w_j`` with ``S = sum_a w_a``. For focal-style weighting this means the value equals
the focal loss while the gradient is that of the detached weight, not of the full focal expression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenWeighting:
    """Knobs of the per-token weighting (see the module docstring for the formula)."""

    beta: float = 0.0
    gamma: float = 0.0
    alpha: float = 0.0
    lam_head: float = 0.0
    lam_tail: float = 0.0
    k: int = 100
    label_smoothing: float = 0.0
    # Derived flags, fixed at construction so that the hot path branches on Python constants only
    # (torch.compile guards on them instead of tracing data-dependent control flow).
    uses_topk: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("beta", "gamma", "alpha", "lam_head", "lam_tail", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0 (focal exponent), got {self.gamma!r}")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {self.label_smoothing!r}")
        object.__setattr__(self, "uses_topk", self.lam_head != self.lam_tail)

    @property
    def is_cross_entropy(self) -> bool:
        return self == TokenWeighting()


def cross_entropy() -> TokenWeighting:
    """Plain cross-entropy: ``r_CE = sg(1[a = x] / p_x)`` (docs/method.md §2)."""
    return TokenWeighting()


def shaped(beta: float = 0.0, lam_head: float = 0.0, lam_tail: float = 0.0, k: int = 100) -> TokenWeighting:
    """The paper's reward (docs/method.md §3): ``beta`` global, ``lam_head``/``lam_tail`` local entropy."""
    return TokenWeighting(beta=beta, lam_head=lam_head, lam_tail=lam_tail, k=k)


def label_smoothing(eps: float) -> TokenWeighting:
    """Label smoothing (Szegedy et al., 2016), identical to ``F.cross_entropy(label_smoothing=eps)``."""
    return TokenWeighting(label_smoothing=eps)


def focal(gamma: float) -> TokenWeighting:
    """Focal-style weighting ``sg((1 - p_x) ** gamma)`` (Lin et al., 2017), weight under stop-gradient."""
    return TokenWeighting(gamma=gamma)


def dft() -> TokenWeighting:
    """Dynamic Fine-Tuning (Wu et al., 2025): ``-sg(p_x) log p_x``."""
    return TokenWeighting(alpha=1.0)
