"""Naive reference for the shaped loss, written from docs/method.md §2-4, and checks of the reference itself.

The reference shares no code with ``rlready.losses``: it is plain PyTorch autograd on the surrogate
``L = -sum_a sg(w_a) * log p_a`` (docs/method.md §4.1), with the weights taken literally from the formulas.
The other ``test_losses*.py`` files import it (pytest puts ``tests/`` on ``sys.path``); the tests here make
sure the reference is right before anything is compared against it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "sum", "none")


def ref_weights(
    logp: torch.Tensor,
    targets: torch.Tensor,
    *,
    beta: float = 0.0,
    gamma: float = 0.0,
    alpha: float = 0.0,
    lam_head: float = 0.0,
    lam_tail: float = 0.0,
    k: int = 100,
    eps: float = 0.0,
) -> torch.Tensor:
    """Weights ``w_a`` of the general scheme for rows ``logp [N, V]`` and targets ``[N]`` (all valid).

    w_a = (1-eps) [a=x] p_x^(alpha + 1 - (1-p_x)^beta) (1-p_x)^gamma
          + [a!=x] p_a (lam_head [a in K] + lam_tail [a not in K]) + eps / V,  K = top-k of p over all tokens.
    """
    logp = logp.detach()
    n, v = logp.shape
    p = logp.exp()
    lpx = logp.gather(-1, targets[:, None]).squeeze(-1)
    one_minus_px = -torch.expm1(lpx)  # 1 - p_x without cancellation (docs/method.md §4.3)
    exponent = alpha + 1.0 - one_minus_px**beta
    w_x = torch.exp(exponent * lpx) * one_minus_px**gamma
    # At p_x == 1 exactly, beta < 0 gives inf * 0 above. The limit of p^(-(1-p)^beta) as p -> 1 is
    # exp(lim (1-p)^(1+beta)): 1 for beta > -1, e for beta == -1, unbounded for beta < -1.
    limit = 1.0 if beta > -1 else (math.e if beta == -1 else math.inf)
    limit_w = torch.full_like(w_x, limit) * torch.zeros_like(w_x) ** gamma
    w_x = torch.where(lpx == 0, limit_w, w_x)

    in_head = torch.zeros(n, v, dtype=torch.bool)
    in_head.scatter_(-1, logp.topk(min(k, v), dim=-1).indices, True)
    knob = torch.where(in_head, torch.tensor(lam_head, dtype=p.dtype), torch.tensor(lam_tail, dtype=p.dtype))
    w = p * knob
    w.scatter_(-1, targets[:, None], (1.0 - eps) * w_x[:, None])
    return w + eps / v


def _flatten(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    v = logits.shape[-1]
    z = logits.reshape(-1, v)
    t = targets.reshape(-1)
    valid = t != ignore_index
    return z, torch.where(valid, t, 0), valid


def ref_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    **knobs: float,
) -> torch.Tensor:
    """Surrogate loss ``-sum_a sg(w_a) log p_a`` computed in ``logits.dtype``; gradients by autograd."""
    z, t, valid = _flatten(logits, targets, ignore_index)
    logp = torch.log_softmax(z, dim=-1)
    w = ref_weights(logp, t, **knobs)
    per_token = torch.where(valid, -(w * logp).sum(-1), 0.0)
    if reduction == "none":
        return per_token.reshape(targets.shape)
    if reduction == "sum":
        return per_token.sum()
    return per_token.sum() / valid.sum().clamp(min=1)


def ref_grad_formula(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100, **knobs):
    """Closed-form gradient of the summed loss wrt the logits: ``p_j * S - w_j``, ``S = sum_a w_a``."""
    z, t, valid = _flatten(logits.detach(), targets, ignore_index)
    logp = torch.log_softmax(z, dim=-1)
    w = ref_weights(logp, t, **knobs)
    grad = logp.exp() * w.sum(-1, keepdim=True) - w
    return torch.where(valid[:, None], grad, 0.0).reshape(logits.shape)


def ref_stats(logits: torch.Tensor, targets: torch.Tensor, *, k: int = 100, ignore_index: int = -100):
    """Sums over non-ignored tokens: -log p_x, entropy, argmax hits, top-k mass, entropy of the top-k
    renormalised (``q = p_K / sum p_K``, ``-sum q log q``), and the token count. ``k`` is a count here."""
    z, t, valid = _flatten(logits.detach().double(), targets, ignore_index)
    z, t = z[valid], t[valid]
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    head = p.topk(min(k, z.shape[-1]), dim=-1).values
    q = head / head.sum(-1, keepdim=True)
    return {
        "ce_sum": -logp.gather(-1, t[:, None]).sum().item(),
        "entropy_sum": torch.special.entr(p).sum().item(),
        "correct_sum": (z.argmax(-1) == t).sum().item(),
        "head_mass_sum": head.sum().item(),
        "head_entropy_sum": torch.special.entr(q).sum().item(),
        "count": int(valid.sum()),
    }


def random_problem(shape, v, *, dtype=torch.float64, scale=3.0, ignore_frac=0.0, ignore_index=-100, seed=0):
    """Logits ``[*shape, v]`` (continuous, so no ties) and targets ``shape`` with random ignored rows."""
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(*shape, v, generator=g, dtype=torch.float64)).to(dtype)
    targets = torch.randint(0, v, tuple(shape), generator=g)
    ignored = torch.rand(tuple(shape), generator=g) < ignore_frac
    return logits, torch.where(ignored, ignore_index, targets)


# ---------------------------------------------------------------------------------------------------------
# Checks of the reference itself.


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 3), (1,)])
def test_reference_defaults_are_cross_entropy(reduction, shape):
    logits, targets = random_problem(shape, 11, ignore_frac=0.3, seed=1)
    targets.view(-1)[0] = 2  # at least one token counts
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours = ref_loss(a, targets, reduction=reduction)
    ce = F.cross_entropy(b.movedim(-1, 1) if b.dim() > 2 else b, targets, reduction=reduction)
    torch.testing.assert_close(ours, ce, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ours)
    ours.backward(g)
    ce.backward(g)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_reference_label_smoothing_is_torch_label_smoothing(eps):
    logits, targets = random_problem((7,), 9, ignore_frac=0.3, seed=2)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ref_loss(a, targets, eps=eps).backward()
    expected = F.cross_entropy(b, targets, label_smoothing=eps)
    expected.backward()
    torch.testing.assert_close(ref_loss(logits, targets, eps=eps), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("beta", [-1.0, -0.25, 0.0, 0.5, 2.5])
@pytest.mark.parametrize("lams", [(0.0, 0.0), (0.3, -0.2), (-0.5, 0.7)])
@pytest.mark.parametrize("k", [1, 3, 8, 9, 50])
def test_reference_autograd_matches_closed_form_gradient(beta, lams, k):
    logits, targets = random_problem((6,), 9, ignore_frac=0.3, seed=3)
    z = logits.clone().requires_grad_()
    knobs = dict(beta=beta, lam_head=lams[0], lam_tail=lams[1], k=k)
    ref_loss(z, targets, reduction="sum", **knobs).backward()
    torch.testing.assert_close(z.grad, ref_grad_formula(logits, targets, **knobs), rtol=1e-12, atol=1e-14)


def test_reference_weights_are_probability_times_paper_reward():
    """w_a = p_a * r_a with r of docs/method.md §3 written out literally (r_pos = (1/p_x)^((1-p_x)^beta))."""
    logits, targets = random_problem((5,), 7, seed=4)
    beta, lam_head, lam_tail, k = -0.25, 0.1, -0.1, 3
    logp = torch.log_softmax(logits, -1)
    w = ref_weights(logp, targets, beta=beta, lam_head=lam_head, lam_tail=lam_tail, k=k)
    p = logp.exp()
    for i in range(5):
        x = int(targets[i])
        head = set(sorted(range(7), key=lambda a: -p[i, a].item())[:k])
        for a in range(7):
            if a == x:
                px = p[i, x].item()
                r = (1.0 / px) ** ((1.0 - px) ** beta)
            else:
                r = lam_head if a in head else lam_tail
            assert w[i, a].item() == pytest.approx(p[i, a].item() * r, rel=1e-12, abs=1e-300)


def test_reference_hand_computed_values():
    # V=2, equal logits, p_x = 1/2: w_x = 0.5 ** (1 - 0.5 ** beta); loss = w_x * log 2.
    z = torch.zeros(1, 2, dtype=torch.float64)
    t = torch.tensor([0])
    assert ref_loss(z, t, beta=1.0).item() == pytest.approx(0.5**0.5 * math.log(2), rel=1e-14)
    assert ref_loss(z, t, beta=-1.0).item() == pytest.approx(0.5**-1.0 * math.log(2), rel=1e-14)
    # Focal, gamma=2: (1 - 1/2)^2 log 2.  DFT (alpha=1): (1/2) log 2.
    assert ref_loss(z, t, gamma=2.0).item() == pytest.approx(0.25 * math.log(2), rel=1e-14)
    assert ref_loss(z, t, alpha=1.0).item() == pytest.approx(0.5 * math.log(2), rel=1e-14)
    # Equal negative knobs: the negative weight is -0.1 * 1/2 wherever the tie puts it.
    assert ref_loss(z, t, lam_head=-0.1, lam_tail=-0.1).item() == pytest.approx(
        (1.0 - 0.05) * math.log(2), rel=1e-14
    )
    # Distinct ranks: logits (0, 1, -1), target 0, k=1 -> K = {1} (a negative), token 2 in the tail.
    z3 = torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64)
    lse = math.log(1 + math.e + math.exp(-1))
    lp = [0.0 - lse, 1.0 - lse, -1.0 - lse]
    expected = -(lp[0] + 0.2 * math.exp(lp[1]) * lp[1] - 0.3 * math.exp(lp[2]) * lp[2])
    assert ref_loss(z3, t, lam_head=0.2, lam_tail=-0.3, k=1).item() == pytest.approx(expected, rel=1e-14)
    # k=2 puts the target itself in K: its weight stays w_x, token 2 is still tail.
    expected = -(lp[0] + 0.2 * math.exp(lp[1]) * lp[1] - 0.3 * math.exp(lp[2]) * lp[2])
    assert ref_loss(z3, t, lam_head=0.2, lam_tail=-0.3, k=2).item() == pytest.approx(expected, rel=1e-14)
    # k=3 = V: every negative is head.
    expected = -(lp[0] + 0.2 * math.exp(lp[1]) * lp[1] + 0.2 * math.exp(lp[2]) * lp[2])
    assert ref_loss(z3, t, lam_head=0.2, lam_tail=-0.3, k=3).item() == pytest.approx(expected, rel=1e-14)


def test_reference_limit_at_saturated_target_is_finite():
    z = torch.tensor([[0.0, -1e4, -1e4]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0])
    for beta in (-1.0, -0.5, 0.0, 0.5):
        loss = ref_loss(z, t, beta=beta, lam_tail=-0.1, k=1)
        (g,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
        assert loss.item() == 0.0


def test_reference_stats_hand_computed():
    """p = (0.5, 0.3, 0.2) and k = 2: head mass 0.8, the head renormalised is (5/8, 3/8)."""
    logits = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64).log()
    targets = torch.tensor([1])
    got = ref_stats(logits, targets, k=2)
    h2 = -(5 / 8 * math.log(5 / 8) + 3 / 8 * math.log(3 / 8))
    assert got["head_mass_sum"] == pytest.approx(0.8, rel=1e-12)
    assert got["head_entropy_sum"] == pytest.approx(h2, rel=1e-12)
    full = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert ref_stats(logits, targets, k=3)["head_entropy_sum"] == pytest.approx(full, rel=1e-12)
    assert ref_stats(logits, targets, k=1)["head_entropy_sum"] == 0.0
