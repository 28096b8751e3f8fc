"""The reward-shaped next-token objective on logits (docs/method.md §3–4).

``shaped_cross_entropy`` returns the surrogate ``-sum_a sg(p_a r_a) log p_a`` reduced like
``F.cross_entropy``; its gradient is the shaped one-step policy gradient. With the defaults it is
cross-entropy, in value and gradient.

Memory: like ``F.cross_entropy`` (which keeps ``log_softmax``), the op keeps one ``[N, V]`` tensor for the
backward pass: the softmax, in the compute dtype. For large vocabularies use
``fused_linear_shaped_cross_entropy``, which never holds the ``[N, V]`` logits.
"""

from __future__ import annotations

import torch

from .rows import Rows, logit_grad, shaped_rows
from .schemes import TokenWeighting
from .stats import NUM_STATS, LossStats
from .validate import check_reduction, check_targets, compute_dtype, resolve_weighting


def reduce_rows(loss: torch.Tensor, valid: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced loss and the per-row gradient scale of the reduction (0 on ignored rows).

    ``mean`` divides by the number of non-ignored tokens, clamped to 1 so that a batch with every token
    ignored gives 0 rather than ``F.cross_entropy``'s NaN; the count stays a tensor (no host sync).
    """
    vf = valid.to(loss.dtype)
    if reduction == "none":
        return loss, vf
    total = loss.sum()
    if reduction == "sum":
        return total, vf
    count = vf.sum().clamp(min=1.0)
    return total / count, vf / count


class _ShapedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, targets, w, ignore_index, reduction, need_stats):  # type: ignore[override]
        in_dtype = z.dtype
        V = z.shape[-1]
        z2 = z.reshape(-1, V).to(compute_dtype(in_dtype))
        rows = shaped_rows(z2, targets.reshape(-1), ignore_index, w, need_stats=need_stats)
        loss, scale = reduce_rows(rows.loss, rows.valid, reduction)
        if reduction == "none":
            loss = loss.reshape(targets.shape)
        ctx.rows = rows._replace(loss=None, stats=None)
        ctx.scale, ctx.w, ctx.reduction, ctx.shape, ctx.in_dtype = scale, w, reduction, z.shape, in_dtype
        stats = rows.stats.sum(1) if need_stats else z2.new_zeros(NUM_STATS)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):  # type: ignore[override]
        rows: Rows = ctx.rows
        g = grad_loss.to(rows.p.dtype)
        scale = ctx.scale * (g.reshape(-1) if ctx.reduction == "none" else g)
        grad = logit_grad(rows, scale, ctx.w, inplace=False)
        return grad.to(ctx.in_dtype).reshape(ctx.shape), None, None, None, None, None


def shaped_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    beta: float = 0.0,
    lam_head: float = 0.0,
    lam_tail: float = 0.0,
    k: int | float = 100,
    ignore_index: int = -100,
    reduction: str = "mean",
    weighting: TokenWeighting | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, LossStats]:
    """Reward-shaped cross-entropy on ``logits [..., V]`` and ``targets [...]`` (docs/method.md §4).

    ``beta`` scales the ground-truth reward ``r_pos = (1/p_x) ** ((1 - p_x) ** beta)``; negatives get
    ``lam_head`` inside the top-``k`` of ``p`` (over all tokens) and ``lam_tail`` outside it; ``k`` is a count
    (capped at ``V``) or, as a float in ``(0, 1)``, a fraction of ``V`` (docs/method.md §1). ``weighting``
    (a ``TokenWeighting``) replaces the four knobs, e.g. for label smoothing, focal or DFT weighting.
    Inputs in fp32/bf16/fp16 are computed in fp32, fp64 in fp64; the loss is returned in the compute dtype.
    With ``return_stats`` the result is ``(loss, LossStats)`` from the same pass (head statistics over the
    same top-``k``).
    """
    w = resolve_weighting(weighting, beta, lam_head, lam_tail, k)
    check_reduction(reduction)
    if logits.dim() < 1:
        raise ValueError("logits must have at least one dimension [..., V]")
    V = logits.shape[-1]
    if V < 1:
        raise ValueError("logits have an empty vocabulary dimension")
    compute_dtype(logits.dtype)
    check_targets(targets, logits.shape[:-1], V, ignore_index)
    loss, stats = _ShapedCrossEntropy.apply(logits, targets, w, ignore_index, reduction, return_stats)
    if return_stats:
        return loss, LossStats.from_tensor(stats)
    return loss
