"""``rlready.losses.select`` and ``head_cpu``: the head of each row against ``torch.topk``, and the loss on
each path (the numba kernel, and the ``torch.topk``/grouped path that GPUs and installs without numba take).

A top-k is compared as a set: the values sorted must equal ``torch.topk``'s exactly (ties may pick different
indices, as ``torch.topk`` itself documents), every index must point at its value, and no index may repeat.
Sums over the head are compared with float64 sums over ``torch.topk``'s head.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_losses_reference import ref_loss, ref_stats

from rlready.losses import fused_linear_shaped_cross_entropy, select, shaped_cross_entropy
from rlready.losses.head import Head
from rlready.losses.select import group_size, grouped_topk, head_terms, head_topk

PATHS = ["kernel", "torch"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Run the test on the numba kernel (skipped without numba) and on the ``torch.topk`` path."""
    if request.param == "kernel":
        pytest.importorskip("numba")
    else:
        monkeypatch.setattr(select, "_head_cpu", lambda: None)
    return request.param


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
def test_shaped_loss_on_each_path_matches_the_reference(path, lam_head, lam_tail):
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 100, 0.05, 2048])
def test_stats_on_each_path_match_the_reference(path, dtype, k):
    """Head mass, tail mass and the entropy of the renormalised head at the tiny preset's shape (V = 2048), from
    the logits op and the fused op, against softmax -> topk -> renormalise in fp64 (``ref_stats``), with
    ignored tokens. fp32 is held to fp32 rounding of sums of ~100 tokens."""
    gen = torch.Generator().manual_seed(11)
    N, H, V = 96, 16, 2048
    hidden = torch.randn(N, H, generator=gen, dtype=torch.float64).to(dtype)
    weight = torch.randn(V, H, generator=gen, dtype=torch.float64).to(dtype)
    targets = torch.randint(0, V, (N,), generator=gen)
    targets[::5] = -100
    count = 102 if k == 0.05 else k  # round(0.05 * 2048) = round(102.4)
    expected = ref_stats(hidden @ weight.T, targets, k=count)
    tol = dict(rel=1e-9, abs=1e-9) if dtype == torch.float64 else dict(rel=2e-5, abs=1e-4)
    knobs = dict(beta=-0.25, lam_tail=-0.1, k=k)
    _, stats = shaped_cross_entropy(hidden @ weight.T, targets, **knobs, return_stats=True)
    _, fused = fused_linear_shaped_cross_entropy(
        hidden, weight, targets, **knobs, chunk_size=32, return_stats=True
    )
    for got in (stats, fused):
        for name, value in expected.items():
            assert float(getattr(got, name)) == pytest.approx(value, **tol), name
        means = got.means()
        n = expected["count"]
        assert means["tail_mass"] == pytest.approx(1 - expected["head_mass_sum"] / n, **tol)
        assert means["head_entropy"] == pytest.approx(expected["head_entropy_sum"] / n, **tol)


@pytest.mark.parametrize("need_stats", [False, True])
def test_the_logits_op_leaves_its_input_alone(need_stats):
    """The fused op lets the row math overwrite its own logits chunk (``scratch_z``); the logits op must not."""
    z = torch.randn(40, 300, dtype=torch.float64)
    before = z.clone()
    targets = torch.randint(0, 300, (40,))
    out = shaped_cross_entropy(z, targets, beta=-0.25, lam_tail=-0.1, k=10, return_stats=need_stats)
    (out[0] if need_stats else out).item()
    assert torch.equal(z, before)


# -- head_terms: the kernel and the torch path against torch.topk ------------------------------------------


def assert_is_head(z: torch.Tensor, p: torch.Tensor, t: torch.Tensor, k: int, head: Head) -> None:
    """``head`` against ``torch.topk``'s head of ``z``, with float64 sums over it."""
    assert_is_topk(z, k, z.gather(1, head.idx), head.idx)
    ref_z, ref_idx = torch.topk(z, k, dim=-1)
    ref_p = p.gather(1, ref_idx).double()
    exact = dict(rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(head.p, p.gather(1, head.idx), **exact)
    tol = dict(rtol=1e-5 if z.dtype == torch.float32 else 1e-12, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(head.mass.double(), ref_p.sum(-1), **tol)
    torch.testing.assert_close(head.pz.double(), (ref_p * ref_z.double()).sum(-1), **tol)
    torch.testing.assert_close(head.z_max, z.max(-1).values, **exact)
    torch.testing.assert_close(head.p_max, p.gather(1, z.argmax(-1, keepdim=True)).squeeze(1), **exact)
    assert torch.equal(head.in_head, (head.idx == t[:, None]).any(-1))
    # The target is in the head exactly when it is above the k-th value (ties at it aside).
    tau, z_t = ref_z[:, -1], z.gather(1, t[:, None]).squeeze(1)
    clear = z_t != tau
    assert torch.equal(head.in_head[clear], (z_t > tau)[clear])
    if head.pz_all is not None:
        torch.testing.assert_close(head.pz_all.double(), (p.double() * z.double()).sum(-1), **tol)


def heads(z: torch.Tensor, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Head]:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(0, z.shape[1], (z.shape[0],), generator=gen)
    p = torch.softmax(z, -1)
    return p, t, head_terms(z, p, t, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("n", "V", "k"),
    [(37, 2048, 100), (16, 2051, 100), (5, 151936, 100), (9, 300, 100), (9, 64, 64), (3, 13, 1), (33, 5, 3)],
)
def test_head_terms_equal_torch_topk(path, dtype, n, V, k):
    gen = torch.Generator().manual_seed(V + k)
    z = (torch.randn(n, V, generator=gen) * 3).to(dtype)
    z[0, 0] = z[0].max() + 1.0  # a target at the top of its row
    p = torch.softmax(z, -1)
    t = torch.randint(0, V, (n,), generator=gen)
    t[0] = 0
    head = head_terms(z, p, t, k)
    assert head.in_head[0]
    assert_is_head(z, p, t, k, head)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_head_terms_on_adversarial_rows(path, dtype):
    """Rows that defeat the group bound or the bit search: sorted, all equal, integer ties, infinities."""
    V, k = 2048, 100
    z = torch.randn(10, V, dtype=torch.float64)
    z[0] = torch.arange(V)  # the head in the last columns: every candidate group is contiguous
    z[1] = -torch.arange(V, dtype=torch.float64)
    z[2] = 1.5  # all tied
    z[3] = torch.randint(-3, 3, (V,))  # ties across the k-th value
    z[4] = float("-inf")
    z[5] = float("-inf")
    z[5, torch.randperm(V)[: 2 * k]] = torch.randn(2 * k, dtype=torch.float64)
    z[6, ::7] = float("inf")  # 293 tied +inf: the head is any k of them
    z[7] = -0.0
    z[7, ::2] = 0.0  # signed zeros: equal values
    z[8] = torch.randn(V, dtype=torch.float64) * 1e-40  # subnormal in float32
    z[9] = torch.randn(V, dtype=torch.float64) * 1e30
    z = z.to(dtype)
    with torch.no_grad():
        p = torch.softmax(z.nan_to_num(nan=0.0), -1)  # a finite p: only the selection is under test here
    t = torch.randint(0, V, (10,))
    head = head_terms(z, p, t, k)
    assert_is_topk(z, k, z.gather(1, head.idx), head.idx)
    assert torch.equal(head.in_head, (head.idx == t[:, None]).any(-1))
    torch.testing.assert_close(head.z_max, z.max(-1).values, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_head_terms_rank_nan_first_like_torch_topk(path, dtype):
    """Positive and negative NaN (``inf - inf`` gives the negative one on x86) both rank above ``+inf``."""
    V, k = 1024, 20
    z = torch.randn(4, V, dtype=dtype)
    z[0, 77] = float("nan")
    z[1, 5] = torch.tensor(float("inf"), dtype=dtype) - float("inf")
    z[1, 6] = float("inf")
    z[2, :] = float("nan")
    neg_nan = -torch.tensor(float("nan"), dtype=dtype)
    assert torch.signbit(neg_nan)
    z[3, 900] = neg_nan
    p = torch.softmax(z, -1)
    head = head_terms(z, p, torch.zeros(4, dtype=torch.long), k)
    assert_is_topk(z, k, z.gather(1, head.idx), head.idx)
    assert 77 in head.idx[0].tolist() and {5, 6} <= set(head.idx[1].tolist()) and 900 in head.idx[3].tolist()
    assert bool(head.z_max.isnan()[[0, 1, 2, 3]].all())


def test_head_terms_with_no_rows(path):
    z = torch.zeros(0, 50)
    head = head_terms(z, z, torch.zeros(0, dtype=torch.long), 5)
    assert head.idx.shape == head.p.shape == (0, 5) and head.mass.shape == (0,)


def test_the_kernel_gives_the_same_head_on_any_number_of_threads():
    pytest.importorskip("numba")
    z = torch.randn(100, 2048)  # rows spread over tasks of 16 rows: 6 full tasks and a partial one
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(heads(z, 100)[2])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_the_kernel_takes_non_contiguous_rows():
    pytest.importorskip("numba")
    z = torch.randn(2048, 40).T  # [40, 2048], column-major
    assert not z.is_contiguous()
    p, t, head = heads(z, 100)
    assert_is_head(z, p, t, 100, head)


def test_head_terms_take_the_kernel_on_cpu_floats_only(monkeypatch):
    pytest.importorskip("numba")
    calls = []
    kernel = select._head_cpu()
    monkeypatch.setattr(select, "_head_cpu", lambda: lambda *a: calls.append(a[0].dtype) or kernel(*a))
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        z = torch.randn(4, 300).to(dtype)
        head_terms(z, torch.softmax(z, -1), torch.zeros(4, dtype=torch.long), 10)
    assert calls == [torch.float32, torch.float64]


def test_head_terms_take_any_integer_targets(path):
    z = torch.randn(20, 500)
    p = torch.softmax(z, -1)
    t = torch.randint(0, 500, (20,))
    t[:5] = z[:5].argmax(-1)  # some targets surely in the head
    expected = head_terms(z, p, t, 30)
    got = head_terms(z, p, t.to(torch.int32), 30)
    assert torch.equal(got.in_head, expected.in_head) and bool(got.in_head[:5].all())


def test_the_kernel_leaves_pytorch_thread_count_alone():
    """Starting numba's OpenMP pool sets the thread count PyTorch reads; under torchrun (one thread per
    process) that oversubscribed the cores. So the pool starts on the kernel's first call, not at import
    (importing the loss touches no thread count), and PyTorch's count is given back then. A fresh process,
    since this one may have started the pool."""
    pytest.importorskip("numba")
    code = (
        "import os, torch\n"
        "import numba.np.ufunc.parallel as pool\n"
        "calls, set_threads = [], torch.set_num_threads\n"
        "torch.set_num_threads = lambda n: calls.append(n) or set_threads(n)\n"
        "before = (torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))\n"
        "import rlready.losses.head_cpu\n"
        "from rlready.losses import shaped_cross_entropy\n"
        "after = (torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))\n"
        "assert after == before, f'import changed the threads: {before} -> {after}'\n"
        "assert not calls, f'import set the thread count: {calls}'\n"
        "assert not pool._is_initialized, 'import started the numba thread pool'\n"
        "shaped_cross_entropy(torch.randn(8, 400), torch.zeros(8, dtype=torch.long), lam_tail=-0.1, k=20)\n"
        "assert pool._is_initialized, 'the kernel did not run'\n"
        "print(torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
