"""Learning-rate schedule: warmup-stable-decay (docs/method.md §6).

Linear warmup to ``lr`` over ``warmup_steps``, constant, then a linear decay to ``final_lr`` over the last
``decay_fraction`` of the steps. Mid-training uses ``warmup_steps=0, decay_fraction=1`` (the paper decays
3e-4 -> 3e-5 across mid-training).
"""

from __future__ import annotations


def wsd_lr(
    step: int, *, max_steps: int, lr: float, final_lr: float, warmup_steps: int, decay_fraction: float
) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = int(round(decay_fraction * max_steps))
    decay_start = max_steps - decay_steps
    if decay_steps <= 0 or step < decay_start:
        return lr
    frac = (step - decay_start + 1) / decay_steps
    return lr + (final_lr - lr) * min(1.0, frac)
