"""Group-relative advantages of GRPO (docs/method.md §5.3: on-policy GRPO without a KL term).

Every prompt is sampled ``group_size`` times; a completion's advantage is its reward standardised
within its own group, ``A = (r - mean) / (std + eps)``, broadcast to all of its tokens by the loss.

The std is the *population* std (divide by ``group_size``, ``unbiased=False``), because:
  * the advantages of a group then have mean 0 and root-mean-square exactly ``std / (std + eps)``
    (about 1) whatever the group size, so the gradient scale does not drift with ``group_size``;
  * it is defined for a group of one (std 0: no signal) where the sample std is NaN.
The sample std only rescales every group by ``sqrt((G - 1) / G)``, about 3% at G = 16.

Groups whose rewards are all (nearly) equal carry no learning signal (docs/method.md §5.3); their std is
compared with a tolerance rather than 0 so float noise does not turn into huge advantages, and their
advantages are set to exactly 0.
"""

from __future__ import annotations

import torch

__all__ = ["group_advantages"]


def group_advantages(
    rewards: torch.Tensor, eps: float = 1e-6, std_tol: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise rewards within each prompt group.

    Args:
        rewards: ``[num_prompts, group_size]`` scalar rewards.
        eps: added to the std in the denominator.
        std_tol: groups with population std below it are zero-variance.

    Returns:
        ``(advantages, zero_variance)``: advantages with the shape and float dtype of ``rewards``
        (exactly 0 in zero-variance groups) and a ``[num_prompts]`` bool mask of zero-variance groups.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 1:
        raise ValueError(
            f"group_advantages: rewards must be [num_prompts, group_size >= 1], got {tuple(rewards.shape)}"
        )
    if eps < 0 or std_tol < 0:
        raise ValueError(f"group_advantages: eps and std_tol must be >= 0, got eps={eps}, std_tol={std_tol}")
    if eps == 0 and std_tol == 0:
        raise ValueError("group_advantages: eps and std_tol are both 0, a constant group would divide 0 by 0")
    if not torch.isfinite(rewards).all():
        raise ValueError("group_advantages: rewards contain NaN or inf")
    r = rewards if rewards.is_floating_point() else rewards.float()
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, unbiased=False, keepdim=True)
    zero_variance = std.squeeze(1) < std_tol
    adv = (r - mean) / (std + eps)
    adv = torch.where(zero_variance.unsqueeze(1), torch.zeros_like(adv), adv)
    return adv, zero_variance
