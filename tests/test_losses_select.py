"""``rlready.losses.select``: the grouped top-k against ``torch.topk``, and the loss on the grouped path.

A top-k is compared as a set: the values sorted must equal ``torch.topk``'s exactly (ties may pick different
indices, as ``torch.topk`` itself documents), every index must point at its value, and no index may repeat.
"""

from __future__ import annotations

import pytest
import torch
from test_losses_reference import ref_loss

from rlready.losses import fused_linear_shaped_cross_entropy, shaped_cross_entropy
from rlready.losses.select import group_size, grouped_topk, head_topk


def assert_is_topk(z: torch.Tensor, k: int, values: torch.Tensor, idx: torch.Tensor) -> None:
    ref = torch.topk(z, k, dim=-1).values
    assert values.shape == idx.shape == (z.shape[0], k)
    torch.testing.assert_close(values.sort(-1, descending=True).values, ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(z.gather(1, idx), values, rtol=0, atol=0, equal_nan=True)
    assert bool((idx.sort(-1).values.diff(dim=-1) > 0).all()), "an index repeats"


@pytest.mark.parametrize(
    ("V", "k", "expected"),
    [(2048, 100, 4), (8192, 100, 8), (32768, 100, 16), (151936, 100, 32), (13, 1, 2), (13, 3, 2)],
)
def test_group_size_balances_the_two_widths(V, k, expected):
    assert group_size(V, k) == expected


@pytest.mark.parametrize(("V", "k"), [(399, 100), (100, 100), (7, 10), (5, 0)])
def test_group_size_is_one_when_grouping_cannot_help(V, k):
    assert group_size(V, k) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(
    ("V", "k", "g"), [(2048, 100, 4), (2051, 100, 4), (1000, 7, 8), (64, 16, 2), (97, 5, 4)]
)
def test_grouped_topk_equals_torch_topk(dtype, V, k, g):
    gen = torch.Generator().manual_seed(V * 31 + k)
    z = (torch.randn(37, V, generator=gen) * 3).to(dtype)
    assert_is_topk(z, k, *grouped_topk(z, k, g))


@pytest.mark.parametrize(("V", "k", "g"), [(2048, 100, 4), (1001, 50, 4)])
def test_grouped_topk_when_the_head_sits_in_few_groups(V, k, g):
    """The adversarial case for grouping: the k largest logits all share a handful of groups."""
    G = V // g
    z = torch.randn(4, V, dtype=torch.float64)
    # Row 0: the whole head in g-column stripes of the same groups 0..k/g (columns j + i G).
    cols = torch.tensor([j + i * G for j in range(k // g + 1) for i in range(g)])
    z[0, cols] += 100.0
    # Row 1: the head in the columns outside every group plus one group.
    z[1, G * g :] += 100.0
    z[1, torch.arange(g) * G + 3] += 50.0
    # Row 2: integer logits, so many ties around the k-th value; row 3: -inf everywhere but the head.
    z[2] = torch.randint(0, 5, (V,), dtype=torch.float64)
    z[3] = float("-inf")
    z[3, torch.randperm(V)[: 2 * k]] = torch.randn(2 * k, dtype=torch.float64)
    assert_is_topk(z, k, *grouped_topk(z, k, g))


def test_grouped_topk_with_nan_ranks_it_first_like_torch_topk():
    z = torch.randn(3, 512)
    z[1, 77] = float("nan")
    values, idx = grouped_topk(z, 20, 4)
    assert_is_topk(z, 20, values, idx)
    assert 77 in idx[1].tolist()


def test_head_topk_takes_the_grouped_path_on_cpu_only_when_it_helps(monkeypatch):
    calls = []
    import rlready.losses.select as select

    monkeypatch.setattr(
        select, "grouped_topk", lambda z, k, g: calls.append(g) or torch.topk(z, k, sorted=False)
    )
    z = torch.randn(5, 2048)
    head_topk(z, 100)
    head_topk(z, 1000)  # V < 4 k: plain torch.topk
    assert calls == [4]


@pytest.mark.parametrize(("lam_head", "lam_tail"), [(0.0, -0.1), (0.1, -0.1), (0.3, 0.0)])
def test_shaped_loss_on_the_grouped_path_matches_the_reference(lam_head, lam_tail):
    """The tiny preset's shape (V = 2048, k = 100) against plain autograd, fp64, value and gradient."""
    gen = torch.Generator().manual_seed(7)
    N, H, V, k = 96, 16, 2048, 100
    assert group_size(V, k) > 1
    hidden = torch.randn(N, H, generator=gen, dtype=torch.float64)
    weight = torch.randn(V, H, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=gen)
    knobs = dict(beta=-0.25, lam_head=lam_head, lam_tail=lam_tail, k=k)

    z = (hidden @ weight.T).requires_grad_()
    expected = ref_loss(z, targets, **knobs, reduction="mean")
    expected.backward()

    zl = z.detach().clone().requires_grad_()
    got = shaped_cross_entropy(zl, targets, **knobs)
    got.backward()
    torch.testing.assert_close(got, expected.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(zl.grad, z.grad, rtol=1e-9, atol=1e-12)

    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    fused = fused_linear_shaped_cross_entropy(h, w, targets, **knobs, chunk_size=32)
    fused.backward()
    torch.testing.assert_close(fused, expected.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(h.grad, z.grad @ weight, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(w.grad, z.grad.T @ hidden, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("need_stats", [False, True])
def test_the_logits_op_leaves_its_input_alone(need_stats):
    """The fused op lets the row math overwrite its own logits chunk (``scratch_z``); the logits op must not."""
    z = torch.randn(40, 300, dtype=torch.float64)
    before = z.clone()
    targets = torch.randint(0, 300, (40,))
    out = shaped_cross_entropy(z, targets, beta=-0.25, lam_tail=-0.1, k=10, return_stats=need_stats)
    (out[0] if need_stats else out).item()
    assert torch.equal(z, before)
