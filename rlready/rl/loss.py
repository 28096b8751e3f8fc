"""Clipped policy-gradient surrogate for GRPO without a KL term, with clip-higher (docs/method.md §5.3).

Per token ``t`` of a completion, with ``ratio = pi_theta(a_t|s_t) / pi_old(a_t|s_t)``:

    loss_t = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)

``eps_high > eps_low`` is DAPO's clip-higher: a low-probability token with a positive advantage may
grow further before the clip stops it, which slows entropy collapse. Tokens are aggregated at token
level (docs/method.md §5.3: sum over every completion token divided by the token count), so long answers are
not down-weighted as with a per-sequence mean.

The ratio differs from 1 only when several optimizer updates share one rollout batch (docs/method.md §5.3);
with a single update the clip never acts.
"""

from __future__ import annotations

import torch

__all__ = ["policy_loss"]


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    num_tokens: int | float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level clipped surrogate loss and its diagnostics.

    Args:
        logprobs: ``[B, T]`` log-probabilities of the sampled tokens under the current policy (with grad).
        old_logprobs: ``[B, T]`` the same under the policy that sampled them (treated as constants).
        advantages: ``[B]`` (one per sequence, broadcast over tokens) or ``[B, T]``; treated as constants.
        mask: ``[B, T]`` bool or 0/1, true on completion tokens that count.
        eps_low, eps_high: the clip range ``[1 - eps_low, 1 + eps_high]``.
        num_tokens: divisor of the summed token losses. Default: the number of masked tokens here. Pass
            the whole step's masked-token count when a step is split into micro/mini-batches, so that
            the accumulated gradient equals the one of a single token-level mean over the step.

    Returns:
        ``(loss, stats)``; ``stats`` holds detached 0-dim tensors averaged over this call's masked
        tokens: ``clip_frac_low`` (ratio < 1 - eps_low with A < 0), ``clip_frac_high`` (ratio >
        1 + eps_high with A > 0), ``approx_kl`` (the non-negative ``k3`` estimator ``ratio - 1 - log
        ratio`` of KL(pi_old || pi_theta)) and ``ratio_mean``. They stay tensors so that no
        device-to-host sync happens unless the caller logs them.
    """
    if logprobs.dim() != 2:
        raise ValueError(f"policy_loss: logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    if old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(
            f"policy_loss: logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} "
            f"and mask {tuple(mask.shape)} must have the same shape"
        )
    if advantages.shape == logprobs.shape[:1]:
        advantages = advantages.unsqueeze(1)
    elif advantages.shape != logprobs.shape:
        raise ValueError(
            f"policy_loss: advantages must be [B] or [B, T] = {tuple(logprobs.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"policy_loss: eps_low must be in [0, 1), got {eps_low}")
    if eps_high < 0.0:
        raise ValueError(f"policy_loss: eps_high must be >= 0, got {eps_high}")
    if isinstance(num_tokens, (int, float)) and num_tokens <= 0:
        raise ValueError(f"policy_loss: num_tokens must be > 0, got {num_tokens}")

    mask = mask.bool()
    advantages = advantages.detach().to(logprobs.dtype)
    # Zero the log-ratio off the mask *before* exp: padding often holds -inf/garbage log-probs, and a
    # NaN there would leak into the gradient even through torch.where (0 * inf in exp's backward).
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))

    count = mask.sum()
    denom = count.clamp(min=1) if num_tokens is None else num_tokens
    loss = per_token.sum() / denom

    with torch.no_grad():
        n = count.clamp(min=1).to(logprobs.dtype)
        low = mask & (ratio < 1.0 - eps_low) & (advantages < 0)
        high = mask & (ratio > 1.0 + eps_high) & (advantages > 0)
        k3 = torch.where(mask, ratio - 1.0 - log_ratio, torch.zeros_like(ratio))
        stats = {
            "clip_frac_low": low.sum() / n,
            "clip_frac_high": high.sum() / n,
            "approx_kl": k3.sum() / n,
            "ratio_mean": torch.where(mask, ratio, torch.zeros_like(ratio)).sum() / n,
        }
    return loss, stats
