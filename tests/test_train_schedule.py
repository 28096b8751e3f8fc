"""Warmup-stable-decay learning rate (docs/method.md §6) against its formula, written out independently."""

from __future__ import annotations

import pytest

from rlready.train.schedule import wsd_lr


def reference(step: int, max_steps: int, lr: float, final_lr: float, warmup: int, frac: float) -> float:
    # Step s (0-based) is the (s+1)-th update: warmup reaches lr at update `warmup`; the decay covers the
    # last round(frac * max_steps) updates and reaches final_lr at the last one.
    n_decay = round(frac * max_steps)
    if step < warmup:
        return lr * (step + 1) / warmup
    if n_decay == 0 or step < max_steps - n_decay:
        return lr
    return lr - (lr - final_lr) * (step - (max_steps - n_decay) + 1) / n_decay


@pytest.mark.parametrize(
    ("max_steps", "warmup", "frac"),
    [(100, 10, 0.2), (100, 0, 1.0), (7, 3, 0.5), (50, 0, 0.0), (10, 10, 0.0), (1, 0, 1.0), (13, 2, 0.3)],
)
def test_matches_formula(max_steps, warmup, frac):
    for step in range(max_steps):
        got = wsd_lr(
            step, max_steps=max_steps, lr=3e-3, final_lr=3e-4, warmup_steps=warmup, decay_fraction=frac
        )
        assert got == pytest.approx(reference(step, max_steps, 3e-3, 3e-4, warmup, frac), rel=1e-12), step


def test_shape_of_the_schedule():
    lrs = [
        wsd_lr(s, max_steps=100, lr=1.0, final_lr=0.1, warmup_steps=10, decay_fraction=0.2)
        for s in range(100)
    ]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))  # strictly rising warmup
    assert set(lrs[9:80]) == {1.0}  # stable phase
    assert all(a > b for a, b in zip(lrs[79:-1], lrs[80:], strict=True))  # strictly falling decay
    assert lrs[-1] == pytest.approx(0.1)  # the last update uses final_lr


def test_midtrain_decays_from_lr_to_final_lr():
    lrs = [wsd_lr(s, max_steps=4, lr=4.0, final_lr=0.4, warmup_steps=0, decay_fraction=1.0) for s in range(4)]
    assert lrs == pytest.approx([3.1, 2.2, 1.3, 0.4])


def test_steps_past_the_end_stay_at_final_lr():
    assert wsd_lr(20, max_steps=10, lr=1.0, final_lr=0.5, warmup_steps=0, decay_fraction=0.5) == 0.5
