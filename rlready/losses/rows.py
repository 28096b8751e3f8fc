"""Row math shared by the logits op and the fused linear op (docs/method.md §4).

For one block of logit rows ``z [n, V]`` (already in the compute dtype) it computes, in a fixed small number
of passes over ``[n, V]``:

1. ``softmax``                   ``p`` (one fused ATen kernel, also the buffer the gradient is written into);
2. the head (only if needed)    ``K_t`` and its sums, when ``lam_head != lam_tail`` or statistics are
                                 requested (``select.head_terms``: on CPU one numba kernel that also forms
                                 ``p . z`` of step 6, elsewhere ``torch.topk`` and ``[n, k]`` ops);
3. ``amax`` of ``z`` and ``p``   only without the head (which holds the row maximum): the log-sum-exp is
                                 ``lse = z_max - log(max p)``, exact to rounding, without a separate
                                 log-sum-exp pass (``max p = 1 / sum exp(z - z_max)``);
4. (the target gather and everything below are per row or per head entry)
5. ``sum(z)`` (label smoothing)  for ``sum_a log p_a``;
6. ``p . z``  (if needed)        ``sum_a p_a z_a`` for the tail term of the value and the entropy, unless the
                                 head kernel formed it; with ``scratch_z`` it is formed in ``z``'s own memory
                                 (``z *= p``, then a row sum) instead of a new ``[n, V]`` product:
                                 ``torch.linalg.vecdot`` allocates one on CPU.

Everything else is per row (``[n]``) or per head entry (``[n, k]``). The logit gradient
``dL/dz_j = p_j S - w_j`` is then one in-place scaling of ``p`` plus two scatters (``logit_grad``): every
non-target entry is ``p_j`` times a per-row constant, ``S - lam_head`` in the head and ``S - lam_tail`` in
the tail (docs/method.md §4.2).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .schemes import TokenWeighting
from .select import head_terms


class Rows(NamedTuple):
    p: torch.Tensor  # [n, V] softmax probabilities (becomes the gradient in logit_grad)
    targets: torch.Tensor  # [n] targets with ignored rows mapped to 0
    valid: torch.Tensor  # [n] bool
    loss: torch.Tensor  # [n] surrogate value, 0 on ignored rows
    coef: torch.Tensor  # [n] S - lam_tail: the gradient factor of every tail entry
    target_fix: torch.Tensor  # [n] added at the target:  p_x * lam_x - (1 - eps) f(p_x)
    head_idx: torch.Tensor | None  # [n, k] indices of the top-k
    head_fix: torch.Tensor | None  # [n, k] added at the head: p_j * (lam_tail - lam_head)
    stats: torch.Tensor | None  # [NUM_STATS, n]: ce, entropy, correct, head mass, head entropy, valid


def log_target_weight(logp_x: torch.Tensor, w: TokenWeighting) -> torch.Tensor:
    """``log f(p_x)`` with ``f = p_x ** (alpha + 1 - (1 - p_x) ** beta) * (1 - p_x) ** gamma``.

    ``1 - (1 - p)**beta`` is computed as ``-expm1(beta * log1m)`` with ``log1m = log(-expm1(log p))``: exact
    at ``p -> 0`` (where it is ``~ beta * p``) and at ``p -> 1``. For ``beta < -1`` the reward has no bound as
    ``p_x -> 1`` (docs/method.md §4.3); ``log f`` is capped at ``log(finfo.max) / 2`` there so that it stays
    finite.
    For ``-1 <= beta < 0`` the limit at ``p_x = 1`` is finite (``e`` at ``beta = -1``) and is kept.
    """
    cap = math.log(torch.finfo(logp_x.dtype).max) / 2.0
    log_f = logp_x * w.alpha if w.alpha != 0.0 else torch.zeros_like(logp_x)
    if w.beta != 0.0 or w.gamma != 0.0:
        tiny = torch.finfo(logp_x.dtype).tiny
        log1m = torch.log(-torch.expm1(logp_x.clamp(max=-tiny)))  # log(1 - p_x), finite
        if w.beta != 0.0:
            # log p_x * (1 - (1-p_x)**beta) = -log p_x * expm1(x),  x = beta * log(1 - p_x).
            # Small x: the expm1 form is exact (p_x -> 0). Large x (p_x -> 1, beta < 0): the product of a
            # huge expm1 and a tiny -log p_x is formed in log space, which keeps its finite limit
            # (e.g. e at beta = -1) instead of overflowing.
            x = w.beta * log1m
            neg_logp = (-logp_x).clamp(min=tiny)
            big = torch.exp((x + torch.log(neg_logp)).clamp(max=cap)) - neg_logp
            log_f = log_f + torch.where(x > 1.0, big, neg_logp * torch.expm1(x.clamp(max=1.0)))
        if w.gamma != 0.0:
            log_f = log_f + w.gamma * log1m
    return log_f.clamp(max=cap)


def shaped_rows(
    z: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int,
    w: TokenWeighting,
    *,
    need_stats: bool,
    scratch_z: bool = False,
) -> Rows:
    """The per-row terms of the shaped loss for logits ``z [n, V]``; ``scratch_z=True`` lets it overwrite ``z``."""
    n, V = z.shape
    valid = targets != ignore_index
    t = torch.where(valid, targets, torch.zeros_like(targets))
    eps = w.label_smoothing

    p = torch.softmax(z, dim=-1)
    need_topk = w.uses_topk or need_stats
    head = head_terms(z, p, t, w.head_size(V)) if need_topk else None
    if head is not None:  # the row maximum comes with the head: no separate pass over [n, V]
        z_max, p_max = head.z_max, head.p_max
    else:
        z_max = z.amax(dim=-1)
        p_max = p.amax(dim=-1)
    lse = z_max - torch.log(p_max)
    z_x = z.gather(1, t[:, None]).squeeze(1)
    logp_x = (z_x - lse).clamp(max=0.0)
    p_x = logp_x.exp()

    # Target weight w_x = (1 - eps) f(p_x) (+ eps / V, handled with the uniform part below).
    f_x = log_target_weight(logp_x, w).exp() * (1.0 - eps)
    # S = sum_a w_a, start from the target and the uniform label-smoothing mass.
    S = f_x + eps
    loss = -f_x * logp_x

    head_fix = None
    # sum_a log p_a = sum_a z_a - V lse (label smoothing), read before z may be overwritten below
    sum_logp = z.sum(-1) - V * lse if eps != 0.0 else None
    need_entropy = w.lam_tail != 0.0 or need_stats
    if need_entropy:
        # sum_a p_a log p_a = sum_a p_a z_a - lse: the last use of z
        if head is not None and head.pz_all is not None:
            pz_all = head.pz_all
        else:
            pz_all = z.mul_(p).sum(-1) if scratch_z else torch.linalg.vecdot(p, z)
        plogp_all = pz_all - lse
    target_plogp = p_x * logp_x
    # sum over the head of p_a log p_a = sum_K p_a z_a - M lse (docs/method.md §4.2), from the head's sums
    plogp_head = head.pz - lse * head.mass if head is not None else None

    if w.uses_topk:
        x_head = head.in_head.to(z.dtype)
        neg_head_mass = head.mass - p_x * x_head
        neg_tail_mass = (1.0 - head.mass).clamp(min=0.0) - p_x * (1.0 - x_head)
        S = S + w.lam_head * neg_head_mass + w.lam_tail * neg_tail_mass
        lam_x = w.lam_tail + (w.lam_head - w.lam_tail) * x_head
        if w.lam_head != 0.0:
            loss = loss - w.lam_head * (plogp_head - x_head * target_plogp)
        if w.lam_tail != 0.0:
            loss = loss - w.lam_tail * (plogp_all - plogp_head - (1.0 - x_head) * target_plogp)
        head_fix = head.p * (w.lam_tail - w.lam_head)
    else:
        lam = w.lam_tail  # == lam_head: one weight for every negative, no top-k needed
        if lam != 0.0:
            S = S + lam * (1.0 - p_x)
            loss = loss - lam * (plogp_all - target_plogp)
        lam_x = torch.full_like(p_x, lam)

    if sum_logp is not None:
        loss = loss - (eps / V) * sum_logp

    stats = None
    if need_stats:
        vf = valid.to(z.dtype)
        entropy = (-plogp_all).clamp(min=0.0)
        correct = (z_x >= z_max).to(z.dtype)
        # Entropy of the head renormalised, -sum_K (p_a/M) log(p_a/M) = log M - (sum_K p_a log p_a) / M
        # (docs/method.md §7); M >= max p >= 1/V, so the division is safe. Clamped like the entropy: at k = 1
        # it is 0 up to rounding.
        head_entropy = (torch.log(head.mass) - plogp_head / head.mass).clamp(min=0.0)
        stats = torch.stack([-logp_x, entropy, correct, head.mass, head_entropy, torch.ones_like(p_x)]) * vf

    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    return Rows(
        p=p,
        targets=t,
        valid=valid,
        loss=torch.where(valid, loss, zero),
        coef=S - w.lam_tail,
        target_fix=p_x * lam_x - f_x,
        head_idx=head.idx if w.uses_topk else None,
        head_fix=head_fix,
        stats=stats,
    )


def logit_grad(rows: Rows, scale: torch.Tensor, w: TokenWeighting, *, inplace: bool) -> torch.Tensor:
    """``dL/dz = (p S - w) * scale`` per row; ``scale`` is 0 on ignored rows.

    ``inplace=True`` overwrites ``rows.p`` (the fused op owns it); otherwise a new tensor is returned so
    that a retained graph can be differentiated again.
    """
    p = rows.p
    row = rows.coef * scale
    g = p.mul_(row[:, None]) if inplace else p * row[:, None]
    if w.label_smoothing != 0.0:
        g.sub_((w.label_smoothing / p.shape[1]) * scale[:, None])
    if rows.head_idx is not None:
        g.scatter_add_(1, rows.head_idx, rows.head_fix * scale[:, None])
    g.scatter_add_(1, rows.targets[:, None], (rows.target_fix * scale)[:, None])
    return g
