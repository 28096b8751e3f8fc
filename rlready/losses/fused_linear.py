"""Fused "LM head + shaped loss": the same value and gradients as
``shaped_cross_entropy(hidden @ weight.T + bias, targets)`` without ever holding the ``[N, V]`` logits.

Tokens are processed in chunks of whole vocabulary rows (so ``torch.topk`` per row stays direct). For
``mean``/``sum`` the logit gradient ``dL/dz = p S - w`` (docs/method.md §4.2) is formed inside the forward
pass and immediately turned into ``grad_hidden = G W`` and ``grad_weight += G^T h``; backward only scales
them by the (scalar) upstream gradient, as Liger-Kernel's fused linear cross-entropy does. For ``reduction="none"`` the
upstream gradient differs per token and must be applied before the rows are summed into ``grad_weight``, so
the forward pass keeps nothing but its inputs and backward recomputes each chunk.

Chunk size: by default the larger of Liger's rule, ``ceil(N / ceil(V / H))`` rows (a chunk of logits is then
about the size of ``hidden`` itself), and ``2**20 / V`` rows (4 MiB of fp32 logits), rounded up to a power of
two. The floor matters for small vocabularies, where Liger's rule gives chunks so small that per-call
overhead (``topk``, kernel launches) dominates; the loss still adds only O(N H + V H + 2**20) memory.
"""

from __future__ import annotations

import math

import torch

from .rows import logit_grad, shaped_rows
from .schemes import TokenWeighting
from .shaped_ce import reduce_rows
from .stats import NUM_STATS, LossStats
from .validate import check_reduction, check_targets, compute_dtype, resolve_weighting

MIN_CHUNK_ELEMENTS = 1 << 20


def default_chunk_size(N: int, V: int, H: int) -> int:
    rows = max(math.ceil(N / max(1, math.ceil(V / max(H, 1)))), MIN_CHUNK_ELEMENTS // max(V, 1), 1)
    return min(1 << (rows - 1).bit_length(), max(N, 1))


def _chunked(h2, weight, bias, t, w, ignore_index, chunk, *, scale, need_stats, want):
    """One pass over token chunks. ``scale [N]`` (None: no gradients) is the per-row gradient factor."""
    N = h2.shape[0]
    cdt = compute_dtype(h2.dtype)
    loss_rows = torch.empty(N, dtype=cdt, device=h2.device)
    stats = torch.zeros(NUM_STATS, dtype=cdt, device=h2.device)
    want_h, want_w, want_b = want if scale is not None else (False, False, False)
    grad_h = torch.empty_like(h2) if want_h else None
    grad_w = torch.zeros(weight.shape, dtype=cdt, device=weight.device) if want_w else None
    grad_b = torch.zeros(weight.shape[0], dtype=cdt, device=weight.device) if want_b else None
    for start in range(0, N, chunk):
        end = min(start + chunk, N)
        hc = h2[start:end]
        # The matmul runs in the input dtype (bf16 on accelerators), the row math in fp32/fp64.
        z = hc @ weight.T if bias is None else torch.addmm(bias, hc, weight.T)
        rows = shaped_rows(z.to(cdt), t[start:end], ignore_index, w, need_stats=need_stats, scratch_z=True)
        del z
        loss_rows[start:end] = rows.loss
        if need_stats:
            stats += rows.stats.sum(1)
        if scale is None:
            continue
        g = logit_grad(rows, scale[start:end], w, inplace=True)  # [n, V], overwrites the softmax
        if grad_b is not None:
            grad_b += g.sum(0)
        if grad_w is not None:
            if hc.dtype == cdt:
                grad_w.addmm_(g.T, hc)
            else:
                grad_w += (g.to(hc.dtype).T @ hc).to(cdt)
        if grad_h is not None:
            grad_h[start:end] = g.to(weight.dtype) @ weight
        del g, rows
    return loss_rows, stats, grad_h, grad_w, grad_b


class _FusedGradInForward(torch.autograd.Function):
    """mean / sum: gradients computed in forward, scaled by the scalar upstream gradient in backward."""

    @staticmethod
    def forward(ctx, h2, weight, bias, t, w, ignore_index, reduction, need_stats, chunk):  # type: ignore[override]
        want = (h2.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        valid = t != ignore_index
        cdt = compute_dtype(h2.dtype)
        _, scale = reduce_rows(torch.zeros(t.shape, dtype=cdt, device=t.device), valid, reduction)
        loss_rows, stats, gh, gw, gb = _chunked(
            h2, weight, bias, t, w, ignore_index, chunk, scale=scale, need_stats=need_stats, want=want
        )
        loss, _ = reduce_rows(loss_rows, valid, reduction)
        ctx.grads = (gh, gw, gb)
        ctx.dtypes = (h2.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):  # type: ignore[override]
        out = []
        for grad, dtype in zip(ctx.grads, ctx.dtypes, strict=True):
            out.append(None if grad is None else (grad * grad_loss.to(grad.dtype)).to(dtype))
        return (*out, None, None, None, None, None, None)


class _FusedRecompute(torch.autograd.Function):
    """none: per-token upstream gradients, so backward recomputes each chunk before accumulating."""

    @staticmethod
    def forward(ctx, h2, weight, bias, t, w, ignore_index, need_stats, chunk):  # type: ignore[override]
        loss_rows, stats, *_ = _chunked(
            h2, weight, bias, t, w, ignore_index, chunk, scale=None, need_stats=need_stats, want=None
        )
        ctx.save_for_backward(h2, weight, bias, t)
        ctx.w, ctx.ignore_index, ctx.chunk = w, ignore_index, chunk
        ctx.mark_non_differentiable(stats)
        return loss_rows, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):  # type: ignore[override]
        h2, weight, bias, t = ctx.saved_tensors
        want = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        scale = (t != ctx.ignore_index).to(grad_loss.dtype) * grad_loss
        scale = scale.to(compute_dtype(h2.dtype))
        with torch.no_grad():
            _, _, gh, gw, gb = _chunked(
                h2,
                weight,
                bias,
                t,
                ctx.w,
                ctx.ignore_index,
                ctx.chunk,
                scale=scale,
                need_stats=False,
                want=want,
            )
        gw = None if gw is None else gw.to(weight.dtype)
        gb = None if gb is None else gb.to(bias.dtype)
        return gh, gw, gb, None, None, None, None, None


def fused_linear_shaped_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    beta: float = 0.0,
    lam_head: float = 0.0,
    lam_tail: float = 0.0,
    k: int | float = 100,
    ignore_index: int = -100,
    reduction: str = "mean",
    weighting: TokenWeighting | None = None,
    return_stats: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, LossStats]:
    """``shaped_cross_entropy(hidden @ weight.T + bias, targets, ...)`` computed chunk by chunk.

    ``hidden [..., H]``, ``weight [V, H]`` (the LM head), ``bias [V]`` or None, ``targets [...]``. Gradients
    flow to ``hidden``, ``weight`` and ``bias``. See ``shaped_cross_entropy`` for the loss arguments.
    """
    w = resolve_weighting(weighting, beta, lam_head, lam_tail, k)
    check_reduction(reduction)
    compute_dtype(hidden.dtype)
    if hidden.dim() < 1 or weight.dim() != 2:
        raise ValueError(
            f"expected hidden [..., H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}"
        )
    V, H = weight.shape
    if hidden.shape[-1] != H:
        raise ValueError(f"hidden size {hidden.shape[-1]} does not match weight [V={V}, H={H}]")
    if bias is not None and tuple(bias.shape) != (V,):
        raise ValueError(f"bias shape {tuple(bias.shape)} does not match the vocabulary size {V}")
    if hidden.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype):
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share one dtype")
    check_targets(targets, hidden.shape[:-1], V, ignore_index)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    h2, t = hidden.reshape(-1, H), targets.reshape(-1)
    chunk = int(chunk_size) if chunk_size is not None else default_chunk_size(h2.shape[0], V, H)
    if reduction == "none":
        loss, stats = _FusedRecompute.apply(h2, weight, bias, t, w, ignore_index, return_stats, chunk)
        loss = loss.reshape(targets.shape)
    else:
        loss, stats = _FusedGradInForward.apply(
            h2, weight, bias, t, w, ignore_index, reduction, return_stats, chunk
        )
    if return_stats:
        return loss, LossStats.from_tensor(stats)
    return loss
