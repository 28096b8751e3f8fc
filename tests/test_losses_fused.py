"""``fused_linear_shaped_cross_entropy`` against the naive reference on ``hidden @ weight.T + bias``.

The fused op must give the same value and the same gradients for hidden, weight and bias as the logits
form, for every reduction (for 'none' the per-token upstream gradient must reach grad_weight, the case
Liger once got wrong) and for chunk sizes that do and do not divide the token count.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_losses_reference import REDUCTIONS, ref_loss, ref_stats

from rlready.losses import TokenWeighting, fused_linear_shaped_cross_entropy, schemes, shaped_cross_entropy

H, V = 6, 11
LEAD = (3, 5)  # N = 15 tokens
KNOBS = dict(beta=-0.25, lam_head=0.2, lam_tail=-0.1, k=3)


def problem(lead=LEAD, h=H, v=V, *, dtype=torch.float64, bias=True, ignore_frac=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64)
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    targets = torch.randint(0, v, lead, generator=g)
    targets = torch.where(torch.rand(lead, generator=g) < ignore_frac, -100, targets)
    cast = lambda t: None if t is None else t.to(dtype)
    return cast(hidden), cast(weight), cast(b), targets


def fused_run(hidden, weight, bias, targets, grad_out=None, **kwargs):
    """Loss and gradients (hidden, weight, bias) of the fused op."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    loss = fused_linear_shaped_cross_entropy(leaves[0], leaves[1], targets, bias=leaves[2], **kwargs)
    loss.backward(grad_out)
    return loss.detach(), [t.grad if t is not None else None for t in leaves]


def ref_run(hidden, weight, bias, targets, grad_out=None, **kwargs):
    """The same through fp64 logits and the autograd reference."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    logits = leaves[0] @ leaves[1].T
    if leaves[2] is not None:
        logits = logits + leaves[2]
    loss = ref_loss(logits, targets, **kwargs)
    loss.backward(None if grad_out is None else grad_out.double())
    return loss.detach(), [t.grad if t is not None else None for t in leaves]


def assert_all_close(actual, expected, **tol):
    tol = tol or dict(rtol=1e-9, atol=1e-12)
    loss, grads = actual
    ref, ref_grads = expected
    assert loss.shape == ref.shape
    torch.testing.assert_close(loss.double(), ref, **tol)
    for name, g, rg in zip(("hidden", "weight", "bias"), grads, ref_grads, strict=True):
        if rg is None:
            assert g is None, name
        else:
            torch.testing.assert_close(g.double(), rg, **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, 7, 15, 40, None])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_matches_reference(reduction, chunk_size, bias):
    hidden, weight, b, targets = problem(bias=bias, seed=1)
    g = torch.randn(LEAD, dtype=torch.float64) if reduction == "none" else None
    kw = dict(KNOBS, reduction=reduction, ignore_index=-100)
    actual = fused_run(hidden, weight, b, targets, g, chunk_size=chunk_size, **kw)
    assert_all_close(actual, ref_run(hidden, weight, b, targets, g, **kw))


@pytest.mark.parametrize("chunk_size", [3, 7])
@pytest.mark.parametrize("beta", [-1.0, -0.5, 0.0, 1.0, 2.5])
@pytest.mark.parametrize("lams", [(0.0, 0.0), (0.3, -0.2), (-0.4, 0.5)])
@pytest.mark.parametrize("k", [1, V - 1, V, V + 5])
def test_fused_knobs_match_reference(beta, lams, k, chunk_size):
    hidden, weight, b, targets = problem(seed=2)
    kw = dict(beta=beta, lam_head=lams[0], lam_tail=lams[1], k=k, reduction="sum", ignore_index=-100)
    actual = fused_run(hidden, weight, b, targets, chunk_size=chunk_size, **kw)
    assert_all_close(actual, ref_run(hidden, weight, b, targets, **kw))


def test_fused_defaults_equal_logits_form_cross_entropy():
    hidden, weight, b, targets = problem(dtype=torch.float32, seed=3)
    loss, grads = fused_run(hidden, weight, b, targets, chunk_size=4)
    h, w, bb = (t.clone().requires_grad_() for t in (hidden, weight, b))
    ce = torch.nn.functional.cross_entropy((h @ w.T + bb).reshape(-1, V), targets.reshape(-1))
    ce.backward()
    torch.testing.assert_close(loss, ce, rtol=1e-5, atol=1e-6)
    for g, rg in zip(grads, (h.grad, w.grad, bb.grad), strict=True):
        torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "weighting",
    [
        schemes.label_smoothing(0.1),
        schemes.focal(2.0),
        schemes.dft(),
        TokenWeighting(beta=0.5, gamma=1.0, k=2),
    ],
)
def test_fused_weighting(weighting):
    hidden, weight, b, targets = problem(seed=4)
    actual = fused_run(hidden, weight, b, targets, weighting=weighting, chunk_size=4, reduction="mean")
    knobs = dict(
        beta=weighting.beta,
        gamma=weighting.gamma,
        alpha=weighting.alpha,
        lam_head=weighting.lam_head,
        lam_tail=weighting.lam_tail,
        k=weighting.k,
        eps=weighting.label_smoothing,
    )
    assert_all_close(actual, ref_run(hidden, weight, b, targets, **knobs))


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_fused_stats_equal_logits_form(chunk_size):
    hidden, weight, b, targets = problem(seed=5)
    loss, stats = fused_linear_shaped_cross_entropy(
        hidden, weight, targets, bias=b, return_stats=True, chunk_size=chunk_size, **KNOBS
    )
    logits = hidden @ weight.T + b
    expected = ref_stats(logits, targets, k=KNOBS["k"])
    for name, value in expected.items():
        assert float(getattr(stats, name)) == pytest.approx(value, rel=1e-9, abs=1e-12), name
    loss2, stats2 = shaped_cross_entropy(logits, targets, return_stats=True, **KNOBS)
    torch.testing.assert_close(loss, loss2, rtol=1e-12, atol=1e-14)
    assert stats.means() == pytest.approx(stats2.means(), rel=1e-9)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fused_all_tokens_ignored(reduction):
    hidden, weight, b, targets = problem(dtype=torch.float32, seed=6)
    targets.fill_(-100)
    loss, grads = fused_run(
        hidden,
        weight,
        b,
        targets,
        torch.ones(LEAD) if reduction == "none" else None,
        reduction=reduction,
        **KNOBS,
    )
    assert torch.isfinite(loss).all() and (loss == 0).all()
    for g in grads:
        assert g is not None and (g == 0).all()


def test_fused_frozen_weight_and_bias():
    """Only the hidden states need a gradient (a frozen or tied head)."""
    hidden, weight, b, targets = problem(seed=7)
    h = hidden.clone().requires_grad_()
    fused_linear_shaped_cross_entropy(h, weight, targets, bias=b, chunk_size=4, **KNOBS).backward()
    _, (ref_h, _, _) = ref_run(hidden, weight, b, targets, **KNOBS)
    torch.testing.assert_close(h.grad, ref_h, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_low_precision(dtype):
    """Error vs fp64 no worse than the naive low-precision logits path plus a tolerance (CCE's rule)."""
    hidden, weight, b, targets = problem((4, 16), 32, 97, dtype=dtype, seed=8)
    loss, grads = fused_run(hidden, weight, b, targets, chunk_size=9, **KNOBS)
    assert loss.dtype == torch.float32 and all(g.dtype == dtype for g in grads)
    ref, ref_grads = ref_run(hidden, weight, b, targets, **KNOBS)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, b)]
    naive = ref_loss(leaves[0] @ leaves[1].T + leaves[2], targets, **KNOBS)  # all in the low dtype
    naive.backward()
    assert (loss.double() - ref).abs() <= (naive.double() - ref).abs() + 1e-5 * ref.abs()
    for g, ng, rg in zip(grads, (t.grad for t in leaves), ref_grads, strict=True):
        err, naive_err = (g.double() - rg).abs().max(), (ng.double() - rg).abs().max()
        assert err <= naive_err + 1e-3 * rg.abs().max()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    h=st.integers(1, 5),
    v=st.integers(2, 10),
    chunk_size=st.one_of(st.none(), st.integers(1, 12)),
    reduction=st.sampled_from(REDUCTIONS),
    bias=st.booleans(),
    beta=st.floats(-1.0, 2.5),
    lam_head=st.floats(-1.0, 1.0),
    lam_tail=st.floats(-1.0, 1.0),
    k=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_fused_property(n, h, v, chunk_size, reduction, bias, beta, lam_head, lam_tail, k, seed):
    hidden, weight, b, targets = problem((n,), h, v, bias=bias, seed=seed)
    g = torch.randn(n, dtype=torch.float64) if reduction == "none" else None
    kw = dict(beta=beta, lam_head=lam_head, lam_tail=lam_tail, k=k, reduction=reduction, ignore_index=-100)
    actual = fused_run(hidden, weight, b, targets, g, chunk_size=chunk_size, **kw)
    assert_all_close(actual, ref_run(hidden, weight, b, targets, g, **kw))


# ---------------------------------------------------------------------------------------------------------
# Bad input.


def test_fused_hidden_size_mismatch_raises():
    with pytest.raises(ValueError, match=r"(?i)hidden|weight|shape|size") as excinfo:
        fused_linear_shaped_cross_entropy(
            torch.randn(4, 6), torch.randn(11, 5), torch.zeros(4, dtype=torch.long)
        )
    assert "\n" not in str(excinfo.value).strip()


@pytest.mark.parametrize("bias_len", [10, 12])
def test_fused_bias_length_raises(bias_len):
    with pytest.raises(ValueError, match=r"(?i)bias") as excinfo:
        fused_linear_shaped_cross_entropy(
            torch.randn(4, 6),
            torch.randn(11, 6),
            torch.zeros(4, dtype=torch.long),
            bias=torch.randn(bias_len),
        )
    assert "\n" not in str(excinfo.value).strip()


@pytest.mark.parametrize("targets_shape", [(5,), (2, 2), (4, 1)])
def test_fused_targets_shape_raises(targets_shape):
    with pytest.raises(ValueError, match=r"(?i)shape|size|dim|target"):
        fused_linear_shaped_cross_entropy(
            torch.randn(4, 6), torch.randn(11, 6), torch.zeros(targets_shape, dtype=torch.long)
        )


@pytest.mark.parametrize("bad", [11, -1])
def test_fused_target_out_of_range_raises(bad):
    with pytest.raises(ValueError, match=r"(?i)target"):
        fused_linear_shaped_cross_entropy(torch.randn(3, 6), torch.randn(11, 6), torch.tensor([0, bad, -100]))


@pytest.mark.parametrize(
    "kwargs",
    [dict(k=0), dict(k=1.5), dict(beta=float("nan")), dict(lam_tail=float("inf")), dict(reduction="avg")],
)
def test_fused_bad_knobs_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        fused_linear_shaped_cross_entropy(
            torch.randn(3, 6),
            torch.randn(11, 6),
            torch.tensor([0, 1, 2]),
            **dict(dict(lam_tail=-0.1), **kwargs),
        )
