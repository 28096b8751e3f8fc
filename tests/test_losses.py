"""``rlready.losses`` (shaped loss, logits form) against F.cross_entropy and the naive reference.

The reference (``test_losses_reference.py``) is plain autograd on ``-sum_a sg(w_a) log p_a``
(docs/method.md §4.1); fp64 comparisons use ~1e-9 relative tolerance so that any wrong weight, top-k set
or reduction fails.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_losses_reference import REDUCTIONS, random_problem, ref_grad_formula, ref_loss, ref_stats

import rlready.losses as losses
from rlready.losses import LossStats, TokenWeighting, schemes, shaped_cross_entropy

BETAS = (-1.0, -0.5, -0.25, 0.0, 0.5, 1.0, 2.5)
LAMS = ((0.0, 0.0), (0.1, 0.0), (0.0, -0.1), (0.4, -0.3), (-0.3, 0.6))
V = 13
KS = (1, 3, V - 1, V, V + 20)


def close64(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)


def run(fn, logits, targets, grad_out=None, **kwargs):
    """Loss and logits-gradient of ``fn`` (upstream gradient ``grad_out``, random for 'none')."""
    z = logits.detach().clone().requires_grad_()
    loss = fn(z, targets, **kwargs)
    loss.backward(grad_out if grad_out is not None else None)
    return loss.detach(), z.grad


def ce_nd(logits, targets, **kwargs):
    """F.cross_entropy on ``[..., V]`` logits (it wants the class dimension second)."""
    return F.cross_entropy(logits.movedim(-1, 1) if logits.dim() > 2 else logits, targets, **kwargs)


def weighting_knobs(w: TokenWeighting) -> dict:
    """The reference's names for a TokenWeighting's fields."""
    return dict(
        beta=w.beta,
        gamma=w.gamma,
        alpha=w.alpha,
        lam_head=w.lam_head,
        lam_tail=w.lam_tail,
        k=w.k,
        eps=w.label_smoothing,
    )


# ---------------------------------------------------------------------------------------------------------
# Defaults are cross-entropy.


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(4, 47, 31, 123), (3, 5, 17), (1, 1), (6, 2)])
def test_defaults_equal_cross_entropy_fp32(shape, reduction):
    logits, targets = random_problem(shape[:-1], shape[-1], dtype=torch.float32, ignore_frac=0.2, seed=10)
    g = torch.randn(targets.shape) if reduction == "none" else None
    loss, grad = run(shaped_cross_entropy, logits, targets, g, reduction=reduction)
    ce, ce_grad = run(ce_nd, logits, targets, g, reduction=reduction)
    assert loss.dtype == torch.float32 and loss.shape == ce.shape
    torch.testing.assert_close(loss, ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ce_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, -1, 0])
def test_defaults_equal_cross_entropy_fp64_with_ignore_index(reduction, ignore_index):
    logits, targets = random_problem((5, 9), 11, ignore_frac=0.3, ignore_index=ignore_index, seed=11)
    targets[0, 0] = 4  # at least one counted token
    g = torch.randn(targets.shape, dtype=torch.float64) if reduction == "none" else None
    kw = dict(reduction=reduction, ignore_index=ignore_index)
    loss, grad = run(shaped_cross_entropy, logits, targets, g, **kw)
    ce, ce_grad = run(ce_nd, logits, targets, g, **kw)
    assert loss.dtype == torch.float64
    close64(loss, ce)
    close64(grad, ce_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_one_dimensional_logits_with_scalar_target(reduction):
    logits = torch.randn(10, dtype=torch.float64)
    target = torch.tensor(3)
    loss, grad = run(shaped_cross_entropy, logits, target, reduction=reduction)
    ce, ce_grad = run(F.cross_entropy, logits, target, reduction=reduction)
    assert loss.shape == ce.shape == ()
    close64(loss, ce)
    close64(grad, ce_grad)
    knobs = dict(beta=-0.25, lam_head=0.2, lam_tail=-0.1, k=3)
    loss, grad = run(shaped_cross_entropy, logits, target, reduction=reduction, **knobs)
    ref, ref_grad = run(ref_loss, logits, target, reduction=reduction, **knobs)
    close64(loss, ref)
    close64(grad, ref_grad)


# ---------------------------------------------------------------------------------------------------------
# The shaped objective against the naive reference, fp64.


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("lams", LAMS)
@pytest.mark.parametrize("beta", BETAS)
def test_matches_reference_fp64(beta, lams, k):
    logits, targets = random_problem((4, 5), V, ignore_frac=0.2, seed=12)
    knobs = dict(beta=beta, lam_head=lams[0], lam_tail=lams[1], k=k)
    loss, grad = run(shaped_cross_entropy, logits, targets, **knobs)
    ref, ref_grad = run(ref_loss, logits, targets, **knobs)
    close64(loss, ref)
    close64(grad, ref_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [-0.25, 0.5])
def test_reductions_match_reference_fp64(beta, reduction):
    logits, targets = random_problem((3, 7), V, ignore_frac=0.3, seed=13)
    knobs = dict(beta=beta, lam_head=0.2, lam_tail=-0.15, k=4, reduction=reduction)
    g = torch.randn(targets.shape, dtype=torch.float64) if reduction == "none" else None
    loss, grad = run(shaped_cross_entropy, logits, targets, g, **knobs)
    ref, ref_grad = run(ref_loss, logits, targets, g, **knobs)
    assert loss.shape == ref.shape
    close64(loss, ref)
    close64(grad, ref_grad)
    if reduction == "none":
        assert (loss[targets == -100] == 0).all()


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("lams", LAMS[2:])
def test_gradient_is_p_times_s_minus_w(beta, lams):
    """dL/dz_j = p_j * S - w_j with S = sum_a w_a (docs/method.md §4.2), for the summed loss."""
    logits, targets = random_problem((9,), V, ignore_frac=0.2, seed=14)
    knobs = dict(beta=beta, lam_head=lams[0], lam_tail=lams[1], k=5)
    _, grad = run(shaped_cross_entropy, logits, targets, reduction="sum", **knobs)
    close64(grad, ref_grad_formula(logits, targets, **knobs))


def test_weighting_replaces_knobs():
    logits, targets = random_problem((6,), V, seed=15)
    w = TokenWeighting(beta=0.5, lam_head=0.1, k=2)
    loss, grad = run(shaped_cross_entropy, logits, targets, beta=-1.0, lam_tail=-0.5, k=7, weighting=w)
    ref, ref_grad = run(ref_loss, logits, targets, beta=0.5, lam_head=0.1, k=2)
    close64(loss, ref)
    close64(grad, ref_grad)


def test_loss_is_invariant_to_a_logit_shift():
    logits, targets = random_problem((2, 6), V, seed=16)
    knobs = dict(beta=-0.25, lam_head=0.1, lam_tail=-0.1, k=3)
    a = shaped_cross_entropy(logits, targets, **knobs)
    b = shaped_cross_entropy(logits + 7.5, targets, **knobs)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_beta_sign_sets_the_push_on_the_target():
    """beta < 0 amplifies the target reward, beta > 0 attenuates it (docs/method.md §3)."""
    logits, targets = random_problem((8,), V, seed=17)
    push = {}
    for beta in (-0.25, 0.0, 0.5):
        _, grad = run(shaped_cross_entropy, logits, targets, beta=beta, reduction="sum")
        push[beta] = -grad.gather(-1, targets[:, None])
    assert (push[-0.25] > push[0.0]).all() and (push[0.0] > push[0.5]).all()


# ---------------------------------------------------------------------------------------------------------
# Edge cases.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_tokens_ignored(reduction, dtype):
    logits, targets = random_problem((3, 4), V, dtype=dtype, seed=18)
    targets.fill_(-100)
    z = logits.clone().requires_grad_()
    loss = shaped_cross_entropy(z, targets, beta=-0.25, lam_tail=-0.1, k=3, reduction=reduction)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and (loss == 0).all()
    assert loss.shape == (() if reduction != "none" else targets.shape)
    assert z.grad is not None and (z.grad == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [-1.0, -0.5, -0.25, 0.5])
def test_saturated_target_gives_finite_loss(beta, dtype):
    """p_x -> 1: with beta < 0, (1 - p_x)^beta blows up; the weight and loss must stay finite."""
    logits, targets = random_problem((6,), V, dtype=torch.float64, seed=19)
    logits.scatter_(-1, targets[:, None], 40.0)  # p_x == 1 in fp32, 1 - 1e-16-ish in fp64
    logits = logits.to(dtype)
    knobs = dict(beta=beta, lam_head=0.1, lam_tail=-0.1, k=3)
    loss, grad = run(shaped_cross_entropy, logits, targets, **knobs)
    ref, ref_grad = run(ref_loss, logits.double(), targets, **knobs)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [-1.0, -0.25, 0.5])
def test_vanishing_target_gives_finite_loss(beta, dtype):
    logits, targets = random_problem((6,), V, dtype=torch.float64, seed=20)
    logits.scatter_(-1, targets[:, None], -200.0)  # p_x underflows to 0 in fp32
    logits = logits.to(dtype)
    knobs = dict(beta=beta, lam_head=0.1, lam_tail=-0.1, k=3)
    loss, grad = run(shaped_cross_entropy, logits, targets, **knobs)
    ref, ref_grad = run(ref_loss, logits.double(), targets, **knobs)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [-0.25, 0.0, 1.0])
def test_huge_logits(beta, dtype):
    """Logits of +-1e4 (plus O(1) noise so that no two non-zero probabilities tie)."""
    g = torch.Generator().manual_seed(21)
    sign = torch.where(torch.rand(5, V, generator=g) < 0.3, 1.0, -1.0)
    logits = (1e4 * sign + torch.randn(5, V, generator=g)).to(torch.float64)
    targets = torch.randint(0, V, (5,), generator=g)
    logits = logits.to(dtype)
    knobs = dict(beta=beta, lam_head=0.2, lam_tail=-0.1, k=2)
    loss, grad = run(shaped_cross_entropy, logits, targets, **knobs)
    ref, ref_grad = run(ref_loss, logits.double(), targets, **knobs)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # fp32 rounds log p = z - lse at the scale of 1e4 (ulp ~1e-3), as F.cross_entropy does.
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("knobs", [{}, dict(beta=-0.25, lam_head=0.1, lam_tail=-0.1, k=5), dict(beta=0.5)])
def test_low_precision_inputs(dtype, knobs):
    """Computed in fp32: error vs fp64 no worse than a naive low-precision run plus a tolerance (CCE's rule)."""
    logits, targets = random_problem((4, 16), 257, dtype=dtype, scale=4.0, ignore_frac=0.2, seed=22)
    loss, grad = run(shaped_cross_entropy, logits, targets, **knobs)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    ref, ref_grad = run(ref_loss, logits.double(), targets, **knobs)
    naive_fn = ce_nd if not knobs else ref_loss
    naive, naive_grad = run(naive_fn, logits, targets, **knobs)  # everything in the low dtype
    assert (loss.double() - ref).abs() <= (naive.double() - ref).abs() + 1e-5 * ref.abs()
    grad_err = (grad.double() - ref_grad).abs().max()
    naive_err = (naive_grad.double() - ref_grad).abs().max()
    assert grad_err <= naive_err + 1e-3 * ref_grad.abs().max()
    # Stronger: the same numbers as the fp32 computation, the gradient rounded once to the input dtype.
    loss32, grad32 = run(shaped_cross_entropy, logits.float(), targets, **knobs)
    torch.testing.assert_close(loss, loss32, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, grad32.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_and_sequence_dims_are_tokens(dtype):
    """[B, T, V] gives the same per-token losses as the flattened [B*T, V]."""
    logits, targets = random_problem((3, 5), V, dtype=dtype, ignore_frac=0.2, seed=23)
    knobs = dict(beta=-0.25, lam_head=0.1, lam_tail=-0.2, k=4, reduction="none")
    nd = shaped_cross_entropy(logits, targets, **knobs)
    flat = shaped_cross_entropy(logits.reshape(-1, V), targets.reshape(-1), **knobs)
    assert nd.shape == (3, 5)
    torch.testing.assert_close(nd.reshape(-1), flat)


# ---------------------------------------------------------------------------------------------------------
# Stats.


@pytest.mark.parametrize("k", [1, 4, V + 3])
def test_stats_match_direct_computation(k):
    logits, targets = random_problem((4, 6), V, ignore_frac=0.25, seed=24)
    targets[0, :3] = logits[0, :3].argmax(-1)  # some hits for the accuracy
    loss, stats = shaped_cross_entropy(logits, targets, beta=0.5, k=k, return_stats=True)
    close64(loss, ref_loss(logits, targets, beta=0.5, k=k))
    assert isinstance(stats, LossStats)
    expected = ref_stats(logits, targets, k=k)
    for name, value in expected.items():
        assert float(getattr(stats, name)) == pytest.approx(value, rel=1e-9, abs=1e-12), name
    means = stats.means()
    n = expected["count"]
    assert {"ce", "ppl", "entropy", "accuracy", "head_mass"} <= set(means)
    assert means["ce"] == pytest.approx(expected["ce_sum"] / n, rel=1e-9)
    assert means["ppl"] == pytest.approx(math.exp(expected["ce_sum"] / n), rel=1e-9)
    assert means["entropy"] == pytest.approx(expected["entropy_sum"] / n, rel=1e-9)
    assert means["accuracy"] == pytest.approx(expected["correct_sum"] / n, rel=1e-12)
    assert means["head_mass"] == pytest.approx(expected["head_mass_sum"] / n, rel=1e-9)
    assert means["tail_mass"] == pytest.approx(1.0 - expected["head_mass_sum"] / n, rel=1e-9, abs=1e-12)
    assert means["head_entropy"] == pytest.approx(expected["head_entropy_sum"] / n, rel=1e-9, abs=1e-12)
    if k >= V:  # the head is the whole vocabulary
        assert means["head_mass"] == pytest.approx(1.0, rel=1e-12)
        assert means["tail_mass"] == pytest.approx(0.0, abs=1e-12)
        assert means["head_entropy"] == pytest.approx(means["entropy"], rel=1e-12)
    if k == 1:  # one token renormalised is certain
        assert means["head_entropy"] == pytest.approx(0.0, abs=1e-12)


def test_stats_take_k_from_weighting():
    logits, targets = random_problem((7,), V, seed=25)
    _, stats = shaped_cross_entropy(logits, targets, weighting=TokenWeighting(k=2), return_stats=True)
    assert float(stats.head_mass_sum) == pytest.approx(ref_stats(logits, targets, k=2)["head_mass_sum"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 5, 257])
def test_stats_in_low_precision(dtype, k):
    """fp32 and bf16 inputs are computed in fp32: stats within fp32 rounding of the fp64 reference on the same
    (rounded) logits, and bf16 gives exactly what its fp32 upcast gives."""
    logits, targets = random_problem((4, 16), 257, dtype=dtype, scale=4.0, ignore_frac=0.2, seed=27)
    _, stats = shaped_cross_entropy(logits, targets, beta=-0.25, lam_tail=-0.1, k=k, return_stats=True)
    expected = ref_stats(logits, targets, k=k)
    for name, value in expected.items():
        assert float(getattr(stats, name)) == pytest.approx(value, rel=1e-5, abs=1e-4), name
    _, stats32 = shaped_cross_entropy(
        logits.float(), targets, beta=-0.25, lam_tail=-0.1, k=k, return_stats=True
    )
    assert stats.means() == pytest.approx(stats32.means(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize(("frac", "count"), [(0.3, 4), (0.5, 6), (0.01, 1), (0.99, 13)])
def test_k_as_a_fraction_of_the_vocabulary(frac, count):
    """A float k in (0, 1) is round(k V) tokens (at least 1), for the loss and for the stats alike."""
    assert schemes.head_size(frac, V) == max(1, round(frac * V)) == count
    logits, targets = random_problem((3, 5), V, ignore_frac=0.2, seed=28)
    knobs = dict(beta=0.5, lam_head=0.2, lam_tail=-0.1)
    loss, stats = shaped_cross_entropy(logits, targets, **knobs, k=frac, return_stats=True)
    close64(loss, ref_loss(logits, targets, **knobs, k=count))
    expected = ref_stats(logits, targets, k=count)
    for name, value in expected.items():
        assert float(getattr(stats, name)) == pytest.approx(value, rel=1e-9, abs=1e-12), name


# ---------------------------------------------------------------------------------------------------------
# Weighting schemes against their published formulas.


def test_schemes_are_exported_from_the_package():
    for name in ("cross_entropy", "shaped", "label_smoothing", "focal", "dft"):
        assert getattr(losses, name) is getattr(schemes, name)


def test_token_weighting_defaults_and_frozen():
    w = TokenWeighting()
    expected = dict(beta=0.0, gamma=0.0, alpha=0.0, lam_head=0.0, lam_tail=0.0, k=100, label_smoothing=0.0)
    assert {name: getattr(w, name) for name in expected} == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.beta = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_scheme(reduction):
    logits, targets = random_problem((3, 4), V, ignore_frac=0.2, seed=26)
    g = torch.randn(targets.shape, dtype=torch.float64) if reduction == "none" else None
    loss, grad = run(
        shaped_cross_entropy, logits, targets, g, weighting=schemes.cross_entropy(), reduction=reduction
    )
    ce, ce_grad = run(ce_nd, logits, targets, g, reduction=reduction)
    close64(loss, ce)
    close64(grad, ce_grad)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_label_smoothing_scheme_equals_torch(eps, reduction):
    logits, targets = random_problem((3, 4), V, ignore_frac=0.2, seed=27)
    g = torch.randn(targets.shape, dtype=torch.float64) if reduction == "none" else None
    w = schemes.label_smoothing(eps)
    loss, grad = run(shaped_cross_entropy, logits, targets, g, weighting=w, reduction=reduction)
    ce, ce_grad = run(ce_nd, logits, targets, g, label_smoothing=eps, reduction=reduction)
    close64(loss, ce)
    close64(grad, ce_grad)


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_scheme(gamma):
    """Value: -(1-p_x)^gamma log p_x (Lin et al.); gradient: the weight is under stop-gradient."""
    logits, targets = random_problem((10,), V, ignore_frac=0.2, seed=28)
    valid = targets != -100
    g = torch.randn(targets.shape, dtype=torch.float64)
    loss, grad = run(
        shaped_cross_entropy, logits, targets, g, weighting=schemes.focal(gamma), reduction="none"
    )
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[:, None]).squeeze(-1)
    focal = torch.where(valid, -((1 - logp.exp()) ** gamma) * logp, 0.0)
    close64(loss, focal)
    p = torch.softmax(logits, -1)
    onehot = F.one_hot(targets.clamp(min=0), V).double()
    detached = (g * (1 - logp.exp()) ** gamma)[:, None] * (p - onehot) * valid[:, None]
    close64(grad, detached)


def test_dft_scheme():
    """Dynamic Fine-Tuning (Wu et al. 2025): -sg(p_x) log p_x, gradient p_x * (p - onehot)."""
    logits, targets = random_problem((10,), V, ignore_frac=0.2, seed=29)
    valid = targets != -100
    loss, grad = run(shaped_cross_entropy, logits, targets, weighting=schemes.dft(), reduction="sum")
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[:, None]).squeeze(-1)
    close64(loss, torch.where(valid, -logp.exp() * logp, 0.0).sum())
    p = torch.softmax(logits, -1)
    onehot = F.one_hot(targets.clamp(min=0), V).double()
    close64(grad, logp.exp()[:, None] * (p - onehot) * valid[:, None])


@pytest.mark.parametrize(
    "knobs", [dict(beta=-0.25), dict(beta=0.5), dict(lam_tail=-0.1), dict(lam_head=0.1, k=3)]
)
def test_shaped_scheme_equals_knobs(knobs):
    logits, targets = random_problem((3, 5), V, ignore_frac=0.2, seed=30)
    w = schemes.shaped(**knobs)
    loss, grad = run(shaped_cross_entropy, logits, targets, weighting=w)
    direct, direct_grad = run(shaped_cross_entropy, logits, targets, **knobs)
    ref, ref_grad = run(ref_loss, logits, targets, **knobs)
    close64(loss, ref)
    close64(grad, ref_grad)
    close64(direct, ref)
    close64(direct_grad, ref_grad)


@pytest.mark.parametrize(
    "weighting",
    [
        TokenWeighting(
            beta=-0.5, gamma=1.0, alpha=0.5, lam_head=0.2, lam_tail=-0.1, k=3, label_smoothing=0.1
        ),
        TokenWeighting(beta=1.0, alpha=1.0, lam_tail=0.3, k=1),
        TokenWeighting(gamma=2.0, label_smoothing=0.2, lam_head=-0.2, k=V),
    ],
)
def test_general_weighting_matches_reference(weighting):
    logits, targets = random_problem((4, 5), V, ignore_frac=0.2, seed=31)
    loss, grad = run(shaped_cross_entropy, logits, targets, weighting=weighting)
    ref, ref_grad = run(ref_loss, logits, targets, **weighting_knobs(weighting))
    close64(loss, ref)
    close64(grad, ref_grad)


# ---------------------------------------------------------------------------------------------------------
# Property-based: package vs reference over shapes, dtypes, reductions, k and knobs.


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 7),
    v=st.integers(2, 12),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    reduction=st.sampled_from(REDUCTIONS),
    k=st.integers(1, 14),
    beta=st.floats(-1.0, 2.5),
    lam_head=st.floats(-1.0, 1.0),
    lam_tail=st.floats(-1.0, 1.0),
    ignore_frac=st.sampled_from([0.0, 0.3, 1.0]),
    scale=st.floats(0.1, 8.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(
    n, v, dtype, reduction, k, beta, lam_head, lam_tail, ignore_frac, scale, seed
):
    logits, targets = random_problem((n,), v, dtype=dtype, scale=scale, ignore_frac=ignore_frac, seed=seed)
    g = torch.randn(targets.shape, dtype=dtype) if reduction == "none" else None
    knobs = dict(beta=beta, lam_head=lam_head, lam_tail=lam_tail, k=k, reduction=reduction)
    loss, grad = run(shaped_cross_entropy, logits, targets, g, **knobs)
    g64 = None if g is None else g.double()
    ref, ref_grad = run(ref_loss, logits.double(), targets, g64, **knobs)
    assert loss.dtype == dtype and grad.dtype == dtype
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)


# ---------------------------------------------------------------------------------------------------------
# Bad input.


def raises(match: str):
    return pytest.raises(ValueError, match=match)


def check_one_line(excinfo):
    assert "\n" not in str(excinfo.value).strip()


@pytest.mark.parametrize(
    "logits_shape, targets_shape",
    [((3, 7), (4,)), ((2, 3, 7), (2, 4)), ((2, 3, 7), (6,)), ((7,), (1,)), ((3, 7), (3, 1))],
)
def test_shape_mismatch_raises(logits_shape, targets_shape):
    with raises(r"(?i)shape|size|dim") as excinfo:
        shaped_cross_entropy(torch.randn(logits_shape), torch.zeros(targets_shape, dtype=torch.long))
    check_one_line(excinfo)


@pytest.mark.parametrize("bad", [7, 100, -1, -101])
def test_target_out_of_range_raises(bad):
    targets = torch.tensor([0, 3, bad, -100])
    with raises(r"(?i)target") as excinfo:
        shaped_cross_entropy(torch.randn(4, 7), targets)
    check_one_line(excinfo)


@pytest.mark.parametrize("k", [0, -3, 2.5, 1.0, 0.0, -0.5, 100.0, math.nan, math.inf, "3", True, None])
def test_bad_k_raises(k):
    logits, targets = torch.randn(4, 7), torch.tensor([0, 1, 2, 3])
    with raises(r"\bk\b") as excinfo:
        shaped_cross_entropy(logits, targets, lam_tail=-0.1, k=k)
    check_one_line(excinfo)
    with raises(r"\bk\b"):
        shaped_cross_entropy(logits, targets, weighting=TokenWeighting(lam_tail=-0.1, k=k))


@pytest.mark.parametrize("name", ["beta", "lam_head", "lam_tail"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_knob_raises(name, value):
    with raises(name) as excinfo:
        shaped_cross_entropy(torch.randn(4, 7), torch.tensor([0, 1, 2, 3]), **{name: value})
    check_one_line(excinfo)


@pytest.mark.parametrize("reduction", ["avg", "MEAN", "", "batchmean"])
def test_unknown_reduction_raises(reduction):
    with raises("reduction") as excinfo:
        shaped_cross_entropy(torch.randn(4, 7), torch.tensor([0, 1, 2, 3]), reduction=reduction)
    check_one_line(excinfo)


# ---------------------------------------------------------------------------------------------------------
# torch.compile (inductor codegen takes tens of seconds on 2 CPU cores).


@pytest.mark.slow
def test_compiled_matches_eager():
    logits, targets = random_problem((3, 4), V, dtype=torch.float32, ignore_frac=0.2, seed=50)
    knobs = dict(beta=-0.25, lam_head=0.1, lam_tail=-0.1, k=3)
    compiled = torch.compile(shaped_cross_entropy)
    loss, grad = run(compiled, logits, targets, **knobs)
    ref, ref_grad = run(ref_loss, logits.double(), targets, **knobs)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)
