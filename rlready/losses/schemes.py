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
    k: int | float = 100  # head size: an int >= 1 is a count, a float in (0, 1) a fraction of V (head_size)
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
        error = check_k(self.k)
        if error:
            raise ValueError(error)
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0 (focal exponent), got {self.gamma!r}")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {self.label_smoothing!r}")
        object.__setattr__(self, "uses_topk", self.lam_head != self.lam_tail)

    @property
    def is_cross_entropy(self) -> bool:
        return self == TokenWeighting()

    def head_size(self, V: int) -> int:
        """The number of head tokens over a vocabulary of ``V`` (see ``head_size``)."""
        return head_size(self.k, V)


def check_k(k: object, name: str = "k") -> str | None:
    """Why ``k`` is not a head size, or None when it is (docs/method.md §1); ``name`` starts the message.

    An ``int >= 1`` is a count and a ``float`` in ``(0, 1)`` a fraction of the vocabulary. Every other float is
    refused: ``1.0`` reads as one token and as the whole vocabulary alike, and a float count such as ``100.0``
    or ``2.5`` is more likely a slip than a choice.
    """
    message = (
        f"{name} must be an integer count >= 1 or a float fraction of the vocabulary in (0, 1), got {k!r}"
    )
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        return message
    if isinstance(k, int):
        return None if k >= 1 else message
    if k == 1.0:
        return message + " (1.0 is ambiguous: write 1 for one token, or an integer >= V for all of them)"
    return None if 0.0 < k < 1.0 else message  # NaN fails the comparison too


def head_size(k: int | float, V: int) -> int:
    """The head's size for ``k`` over ``V`` tokens (docs/method.md §1): a count is capped at ``V``; a fraction
    gives ``max(1, round(k * V))`` (Python's ``round``: halves to even), which is at most ``V``."""
    if isinstance(k, float):
        return max(1, min(V, round(k * V)))
    return min(k, V)


def cross_entropy() -> TokenWeighting:
    """Plain cross-entropy: ``r_CE = sg(1[a = x] / p_x)`` (docs/method.md §2)."""
    return TokenWeighting()


def shaped(
    beta: float = 0.0, lam_head: float = 0.0, lam_tail: float = 0.0, k: int | float = 100
) -> TokenWeighting:
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
