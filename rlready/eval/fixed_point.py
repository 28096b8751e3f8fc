"""Where the shaped objective settles on data whose next-token distribution is known (docs/method.md §10).

For one context with true next-token distribution ``q``, the expected gradient of the surrogate of §4.1 with
respect to the logits vanishes when, for every token ``j``,

    p_j * S = q_j * f(p_j) + (1 - q_j) * lam_j * p_j ,      S = sum_j (right-hand side)

with ``f`` the ground-truth weight of §4.1 (``p ** (1 - (1 - p) ** beta)``) and ``lam_j`` = ``lam_head`` for
the top-``k`` tokens of ``p`` and ``lam_tail`` for the rest. Cross-entropy gives ``p = q``. The solution is
found by fixed-point iteration ``p <- normalise(rhs(p))`` (damped for rows that have not settled after a
while); it contracts quickly for the paper's knob values because ``f`` varies slowly and the ``lam`` terms
enter with a factor ``|lam| < 1``.

A token the data never continues with (``q_j = 0``) gets no mass under any knob setting, so each context is
solved on its support only: ``q`` is a ``[contexts, S]`` array padded with zeros.

Label smoothing spreads mass over the whole vocabulary, which this support-only form cannot express; it is
refused rather than answered wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlready.losses.rows import log_target_weight
from rlready.losses.schemes import TokenWeighting

# The plain iteration converges in a few steps for most contexts; rows still moving after _UNDAMPED steps
# (an oscillation, e.g. beta far below -1) continue with the geometric mean of old and new iterate.
_UNDAMPED = 50
_DAMPING = 0.5


@dataclass(frozen=True)
class ShapeStats:
    """Per-context quantities of a distribution ``p`` (each ``[contexts]``): entropy (nats), the mass
    outside the top-``k`` and the entropy of the renormalised top-``k`` (docs/method.md §7)."""

    entropy: torch.Tensor
    tail_mass: torch.Tensor
    head_entropy: torch.Tensor


def fixed_point(
    q: torch.Tensor, weighting: TokenWeighting, *, max_iters: int = 2000, tol: float = 1e-12
) -> torch.Tensor:
    """The distribution the objective ``weighting`` converges to on contexts with true distributions ``q``.

    ``q``: ``[contexts, S]`` non-negative rows summing to 1 (zeros pad the support). Returns ``p`` of the
    same shape, zero wherever ``q`` is. Raises ``ValueError`` for label smoothing or a bad ``q``, and
    ``RuntimeError`` if the iteration has not converged after ``max_iters`` steps.
    """
    if weighting.label_smoothing != 0.0:
        raise ValueError("fixed_point: label smoothing moves mass off the data's support; not supported")
    q = _check_rows(q)
    if weighting.is_cross_entropy:
        return q.clone()
    p = q.clone()
    active = torch.arange(q.shape[0])  # rows still moving; most contexts settle in a few steps
    for it in range(max_iters):
        if active.numel() == 0:
            return p
        qa = q[active]
        new = _step(p[active], qa, qa > 0, weighting, 1.0 if it < _UNDAMPED else _DAMPING)
        moved = (new - p[active]).abs().amax(-1) >= tol
        p[active] = new
        active = active[moved]
    raise RuntimeError(f"fixed_point: no convergence in {max_iters} iterations for {weighting}")


def _step(
    p: torch.Tensor, q: torch.Tensor, support: torch.Tensor, w: TokenWeighting, damping: float
) -> torch.Tensor:
    tiny = torch.finfo(p.dtype).tiny
    f = torch.where(support, log_target_weight(p.clamp(min=tiny).log(), w).exp(), 0.0)
    rhs = q * f
    if w.lam_head != 0.0 or w.lam_tail != 0.0:
        lam = torch.where(_head_mask(p, w.k), w.lam_head, w.lam_tail)
        rhs = rhs + (1.0 - q) * lam * p
    rhs = torch.where(support, rhs.clamp(min=tiny), 0.0)
    new = rhs / rhs.sum(-1, keepdim=True)
    if damping == 1.0:
        return new
    # Damped in log space: p^(1-d) * new^d, renormalised.
    mixed = torch.where(support, (p.clamp(min=tiny).log() * (1 - damping) + new.log() * damping).exp(), 0.0)
    return mixed / mixed.sum(-1, keepdim=True)


def _head_mask(p: torch.Tensor, k: int) -> torch.Tensor:
    """The top-``k`` entries of each row (the head, §1). Zero-mass padding only enters the head when the
    support has fewer than ``k`` tokens, where it carries no mass and changes nothing."""
    k = min(k, p.shape[-1])
    idx = p.topk(k, dim=-1).indices
    return torch.zeros_like(p, dtype=torch.bool).scatter_(-1, idx, True)


def shape_stats(p: torch.Tensor, k: int) -> ShapeStats:
    """Entropy, tail mass and within-head entropy of each row of ``p`` (rows sum to 1)."""
    plogp = torch.where(p > 0, p * p.clamp(min=torch.finfo(p.dtype).tiny).log(), 0.0)
    head = _head_mask(p, k)
    mass = torch.where(head, p, 0.0).sum(-1)
    head_plogp = torch.where(head, plogp, 0.0).sum(-1)
    # H of p restricted to K and renormalised: -(1/M) sum_K p log p + log M.
    head_entropy = -head_plogp / mass + mass.log()
    return ShapeStats(
        entropy=-plogp.sum(-1), tail_mass=(1.0 - mass).clamp(min=0.0), head_entropy=head_entropy
    )


def _check_rows(q: torch.Tensor) -> torch.Tensor:
    if q.dim() != 2 or q.shape[-1] < 1:
        raise ValueError(f"fixed_point: q must be [contexts, S] with S >= 1, got shape {tuple(q.shape)}")
    q = q.double()
    if not torch.isfinite(q).all() or (q < 0).any():
        raise ValueError("fixed_point: q must be finite and non-negative")
    sums = q.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-6):
        raise ValueError(
            f"fixed_point: each row of q must sum to 1 (found sums {sums.min():.6g}..{sums.max():.6g})"
        )
    return q
