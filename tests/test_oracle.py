"""The fixed point of the shaped objective and the data's n-gram oracle (docs/method.md §10).

References: the expected gradient of the real loss (``shaped_cross_entropy`` with autograd) vanishes at the
fixed point; oracle counts equal a ``collections.Counter`` over the same stream; on a Markov chain the oracle
recovers the chain's own conditional entropy.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from rlready.eval.fixed_point import fixed_point, shape_stats
from rlready.eval.oracle import DETERMINISTIC, NgramOracle, analyse, position_kinds
from rlready.losses import shaped_cross_entropy
from rlready.losses.schemes import TokenWeighting, label_smoothing, shaped


def _preferred_with_tail(top: float, n_tail: int) -> torch.Tensor:
    tail = 1.0 / torch.arange(1, n_tail + 1, dtype=torch.float64)
    return torch.cat([torch.tensor([top], dtype=torch.float64), (1 - top) * tail / tail.sum()])


def _expected_gradient(p: torch.Tensor, q: torch.Tensor, w: TokenWeighting) -> torch.Tensor:
    """E_{x ~ q} of d loss / d logits at logits log p, through the loss the training runs use."""
    z = p.clamp(min=1e-300).log().repeat(len(q), 1).requires_grad_(True)
    targets = torch.arange(len(q))
    loss = shaped_cross_entropy(z, targets, weighting=w, reduction="none")
    (loss * q).sum().backward()
    return z.grad.sum(0)


@pytest.mark.parametrize(
    "w",
    [
        shaped(beta=-0.25),
        shaped(beta=0.5),
        shaped(beta=-1.0),
        shaped(beta=1.0),
        shaped(lam_tail=-0.1, k=3),
        shaped(lam_head=0.1, k=3),
        shaped(beta=-0.25, lam_head=0.05, lam_tail=-0.05, k=2),
    ],
)
def test_fixed_point_zeroes_the_expected_gradient_of_the_loss(w):
    q = _preferred_with_tail(0.6, 11)
    p = fixed_point(q[None], w)[0]
    assert torch.allclose(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert _expected_gradient(p, q, w).abs().max() < 1e-9
    # ... while the data's own distribution is not stationary for a shaped objective.
    assert _expected_gradient(q, q, w).abs().max() > 1e-4


def test_cross_entropy_fixed_point_is_the_data():
    q = torch.stack([_preferred_with_tail(0.7, 5), torch.tensor([0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64)])
    assert torch.equal(fixed_point(q, TokenWeighting()), q)


def test_beta_moves_entropy_the_paper_s_way_and_zero_stays_zero():
    q = torch.stack(
        [_preferred_with_tail(0.6, 50), torch.nn.functional.pad(torch.tensor([0.3, 0.7]), (0, 49))]
    )
    q = q.double()
    h = {b: shape_stats(fixed_point(q, shaped(beta=b)), 100).entropy[0].item() for b in (-0.25, 0.0, 0.5)}
    assert h[-0.25] < h[0.0] < h[0.5]
    p = fixed_point(q, shaped(beta=0.5))
    assert (p[1, 2:] == 0).all()  # no mass where the data has none


def test_shape_stats_against_plain_torch():
    p = torch.softmax(torch.randn(4, 30, dtype=torch.float64), -1)
    s = shape_stats(p, 5)
    top = p.topk(5, -1).values
    head = top / top.sum(-1, keepdim=True)
    assert torch.allclose(s.entropy, -(p * p.log()).sum(-1))
    assert torch.allclose(s.tail_mass, 1 - top.sum(-1))
    assert torch.allclose(s.head_entropy, -(head * head.log()).sum(-1))


def test_fixed_point_rejects_bad_input():
    with pytest.raises(ValueError, match="sum to 1"):
        fixed_point(torch.tensor([[0.5, 0.2]]), shaped(beta=0.5))
    with pytest.raises(ValueError, match="non-negative"):
        fixed_point(torch.tensor([[1.5, -0.5]]), shaped(beta=0.5))
    with pytest.raises(ValueError, match="contexts, S"):
        fixed_point(torch.tensor([1.0]), shaped(beta=0.5))
    with pytest.raises(ValueError, match="label smoothing"):
        fixed_point(torch.tensor([[1.0]]), label_smoothing(0.1))


def test_oracle_counts_equal_a_counter_with_back_off():
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 5, size=3000)
    oracle = NgramOracle(stream, 5, order=2, min_count=40)
    # Reference: every position from `order` on, described by its longest context seen >= 40 times.
    ctx2 = Counter((stream[i - 2], stream[i - 1]) for i in range(2, len(stream)))
    ctx1 = Counter(stream[i - 1] for i in range(2, len(stream)))
    top = oracle.top_probability(stream)
    for i in (2, 17, 500, 2999):
        if ctx2[(stream[i - 2], stream[i - 1])] >= 40:
            nexts = Counter(
                stream[j]
                for j in range(2, len(stream))
                if tuple(stream[j - 2 : j]) == tuple(stream[i - 2 : i])
            )
        elif ctx1[stream[i - 1]] >= 40:
            nexts = Counter(stream[j] for j in range(2, len(stream)) if stream[j - 1] == stream[i - 1])
        else:
            nexts = Counter(stream[2:].tolist())
        assert top[i - 2] == pytest.approx(max(nexts.values()) / sum(nexts.values()))


def test_oracle_recovers_a_markov_chain_and_its_fixed_points():
    rng = np.random.default_rng(1)
    V = 6
    # Each state prefers one successor with 0.6-0.9; the rest is spread; state 5 is deterministic.
    T = np.full((V, V), 0.0)
    for s in range(V - 1):
        T[s] = rng.dirichlet(np.ones(V)) * 0.3
        T[s, (s + 1) % V] += 0.7
        T[s] /= T[s].sum()
    T[V - 1, 0] = 1.0
    stream = np.zeros(200_000, dtype=np.int64)
    u = rng.random(len(stream))
    cum = T.cumsum(1)
    for i in range(1, len(stream)):
        stream[i] = min(int(np.searchsorted(cum[stream[i - 1]], u[i])), V - 1)
    oracle = NgramOracle(stream, V, order=1, min_count=20)
    visits = np.bincount(stream[:-1], minlength=V) / (len(stream) - 1)
    qt = torch.from_numpy(T)
    want = {}
    for name, w in {"ce": shaped(k=2), "hot": shaped(beta=0.5, k=2)}.items():
        p = fixed_point(qt, w)
        st = shape_stats(p, 2)
        want[name] = (
            float((st.entropy.numpy() * visits).sum()),
            float((st.tail_mass.numpy() * visits).sum()),
        )
    got = analyse(oracle, {"ce": shaped(k=2), "hot": shaped(beta=0.5, k=2)})
    for name in want:
        assert got["configs"][name]["entropy"] == pytest.approx(want[name][0], abs=0.01)
        assert got["configs"][name]["tail_mass"] == pytest.approx(want[name][1], abs=0.01)
    assert got["oracle"]["entropy"] == pytest.approx(want["ce"][0], abs=0.01)
    # Only state 5 (deterministic) is not a fork; it is visited about 1/6 of the time here.
    assert got["oracle"]["fork_share"] == pytest.approx(1 - visits[V - 1], abs=0.01)
    kinds = position_kinds(oracle, stream[:1000])
    assert kinds[0] == -1
    assert ((kinds[1:] == 0) == (stream[:999] == V - 1)).all()
    assert DETERMINISTIC == 0.9


def test_oracle_band_share_counts_the_actual_next_token():
    # A -> B with 0.5, A -> C with 0.5, B -> A, C -> A: every A position has q(next) = 0.5, others 1.
    rng = np.random.default_rng(2)
    stream = []
    for _ in range(2000):
        stream += [0, int(rng.integers(1, 3))]
    oracle = NgramOracle(np.array(stream), 3, order=1, min_count=10)
    got = analyse(oracle, {"ce": TokenWeighting()})["oracle"]
    assert got["knob_band_share"] == pytest.approx(0.5, abs=0.01)
    assert got["entropy"] == pytest.approx(0.5 * math.log(2), abs=0.01)


def test_oracle_rejects_bad_input():
    with pytest.raises(ValueError, match="1-D stream"):
        NgramOracle(np.array([1]), 4)
    with pytest.raises(ValueError, match="token ids"):
        NgramOracle(np.array([1, 7]), 4)
    with pytest.raises(ValueError, match="62-bit"):
        NgramOracle(np.array([1, 2, 3]), 2**20, order=4)
    with pytest.raises(ValueError, match="min_count"):
        NgramOracle(np.array([1, 2, 3]), 4, min_count=0)
