"""Tests for rlready.rl.policy_loss against a scalar, hand-written PPO/DAPO reference."""

from __future__ import annotations

import math

import pytest
import torch

from rlready.rl import policy_loss


def reference(lp, old, adv, mask, eps_low, eps_high):
    """Plain-Python token loop: loss, d loss / d logprobs, and the stats."""
    B, T = len(lp), len(lp[0])
    total, n, low, high, kl, rsum = 0.0, 0, 0, 0, 0.0, 0.0
    grad = [[0.0] * T for _ in range(B)]
    terms = []
    for b in range(B):
        for t in range(T):
            if not mask[b][t]:
                continue
            a = adv[b] if not isinstance(adv[b], list) else adv[b][t]
            r = math.exp(lp[b][t] - old[b][t])
            c = min(max(r, 1 - eps_low), 1 + eps_high)
            unclipped, clipped = r * a, c * a
            total += -min(unclipped, clipped)
            # d/dlp of -r*a is -r*a; the clipped branch is constant in lp when the clamp is active.
            if unclipped <= clipped or c == r:
                terms.append((b, t, -r * a))
            n += 1
            low += r < 1 - eps_low and a < 0
            high += r > 1 + eps_high and a > 0
            kl += r - 1 - (lp[b][t] - old[b][t])
            rsum += r
    denom = max(n, 1)
    for b, t, g in terms:
        grad[b][t] = g / denom
    m = max(n, 1)
    stats = {
        "clip_frac_low": low / m,
        "clip_frac_high": high / m,
        "approx_kl": kl / m,
        "ratio_mean": rsum / m,
    }
    return total / denom, grad, stats


def random_inputs(B=3, T=7, seed=0, per_token_adv=False):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    lp = old + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4  # ratios well outside the clip
    adv = torch.randn(B, T if per_token_adv else 1, generator=g, dtype=torch.float64).squeeze(-1)
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[0, 0] = True
    return lp, old, adv, mask


@pytest.mark.parametrize("per_token_adv", [False, True])
@pytest.mark.parametrize(("eps_low", "eps_high"), [(0.2, 0.28), (0.1, 0.1), (0.0, 0.5)])
def test_matches_reference_loss_grad_and_stats(per_token_adv: bool, eps_low: float, eps_high: float) -> None:
    lp, old, adv, mask = random_inputs(seed=int(eps_high * 100), per_token_adv=per_token_adv)
    lp.requires_grad_(True)
    loss, stats = policy_loss(lp, old, adv, mask, eps_low=eps_low, eps_high=eps_high)
    loss.backward()
    ref_loss, ref_grad, ref_stats = reference(
        lp.detach().tolist(), old.tolist(), adv.tolist(), mask.tolist(), eps_low, eps_high
    )
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10)
    torch.testing.assert_close(lp.grad, torch.tensor(ref_grad, dtype=torch.float64))
    for key, value in ref_stats.items():
        assert stats[key].item() == pytest.approx(value, rel=1e-10, abs=1e-12), key
    assert ref_stats["clip_frac_low"] + ref_stats["clip_frac_high"] > 0  # the case exercises clipping


def test_clipped_tokens_get_zero_gradient() -> None:
    old = torch.zeros(1, 4, dtype=torch.float64)
    # ratios: 1.5 (A>0: clipped high), 0.5 (A<0: clipped low), 1.5 (A<0: NOT clipped), 0.5 (A>0: NOT clipped)
    lp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.5), math.log(0.5)]], dtype=torch.float64)
    lp.requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]], dtype=torch.float64)
    loss, stats = policy_loss(lp, old, adv, torch.ones(1, 4, dtype=torch.bool))
    loss.backward()
    expected = torch.tensor([[0.0, 0.0, 1.5 / 4, -0.5 / 4]], dtype=torch.float64)
    torch.testing.assert_close(lp.grad, expected)
    assert loss.item() == pytest.approx((-1.28 + 0.8 + 1.5 - 0.5) / 4)
    assert stats["clip_frac_high"].item() == 0.25
    assert stats["clip_frac_low"].item() == 0.25


def test_ratio_one_is_plain_policy_gradient() -> None:
    lp, _, adv, mask = random_inputs(seed=3)
    lp.requires_grad_(True)
    loss, stats = policy_loss(lp, lp.detach().clone(), adv, mask)
    loss.backward()
    expected = -(adv[:, None] * mask) / mask.sum()
    torch.testing.assert_close(lp.grad, expected)
    assert stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0


def test_num_tokens_makes_micro_batches_add_up() -> None:
    lp, old, adv, mask = random_inputs(B=4, T=9, seed=5)
    full = lp.clone().requires_grad_(True)
    loss, _ = policy_loss(full, old, adv, mask)
    loss.backward()
    split = lp.clone().requires_grad_(True)
    total = int(mask.sum())
    acc = 0.0
    for rows in (slice(0, 1), slice(1, 4)):
        part, _ = policy_loss(split[rows], old[rows], adv[rows], mask[rows], num_tokens=total)
        part.backward()
        acc += part.item()
    assert acc == pytest.approx(loss.item(), rel=1e-12)
    torch.testing.assert_close(split.grad, full.grad)
    # A tensor divisor works the same way.
    as_tensor, _ = policy_loss(lp, old, adv, mask, num_tokens=torch.tensor(float(total)))
    assert as_tensor.item() == pytest.approx(loss.item(), rel=1e-12)


def test_masked_positions_may_hold_garbage() -> None:
    lp, old, adv, mask = random_inputs(seed=7)
    clean, _ = policy_loss(lp, old, adv, mask)
    dirty_lp = torch.where(mask, lp, torch.tensor(float("-inf"), dtype=lp.dtype)).requires_grad_(True)
    dirty_old = torch.where(mask, old, torch.tensor(float("nan"), dtype=old.dtype))
    dirty, stats = policy_loss(dirty_lp, dirty_old, adv, mask)
    dirty.backward()
    assert dirty.item() == pytest.approx(clean.item(), rel=1e-12)
    assert torch.isfinite(dirty_lp.grad).all()
    assert (dirty_lp.grad[~mask] == 0).all()
    assert all(torch.isfinite(v) for v in stats.values())


def test_empty_mask_gives_zero_loss_with_graph() -> None:
    lp, old, adv, _ = random_inputs(seed=9)
    lp.requires_grad_(True)
    loss, stats = policy_loss(lp, old, adv, torch.zeros_like(lp, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert (lp.grad == 0).all()
    assert stats["clip_frac_low"].item() == 0.0


def test_float_mask_and_constant_old_logprobs_and_advantages() -> None:
    lp, old, adv, mask = random_inputs(seed=11)
    reference_loss, _ = policy_loss(lp, old, adv, mask)
    lp.requires_grad_(True)
    old.requires_grad_(True)
    adv.requires_grad_(True)
    loss, _ = policy_loss(lp, old, adv, mask.double())
    loss.backward()
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-12)
    assert lp.grad is not None
    assert old.grad is None and adv.grad is None  # both are treated as constants


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logprobs": torch.zeros(3)}, "must be \\[B, T\\]"),
        ({"old_logprobs": torch.zeros(2, 3)}, "same shape"),
        ({"mask": torch.ones(2, 5)}, "same shape"),
        ({"advantages": torch.zeros(5)}, "advantages must be"),
        ({"advantages": torch.zeros(2, 5)}, "advantages must be"),
        ({"eps_low": 1.0}, "eps_low"),
        ({"eps_low": -0.1}, "eps_low"),
        ({"eps_high": -0.1}, "eps_high"),
        ({"num_tokens": 0}, "num_tokens"),
    ],
)
def test_bad_input(kwargs: dict, match: str) -> None:
    args = {
        "logprobs": torch.zeros(3, 4),
        "old_logprobs": torch.zeros(3, 4),
        "advantages": torch.zeros(3),
        "mask": torch.ones(3, 4),
    }
    args.update(kwargs)
    if "logprobs" in kwargs:
        args["old_logprobs"] = args["mask"] = args["logprobs"]
    with pytest.raises(ValueError, match=match):
        policy_loss(**args)
