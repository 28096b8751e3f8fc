"""``rlready.eval.lm.heldout_stats`` (the held-out part of the LM stages' eval.json, docs/method.md §7) against
plain PyTorch over the model's full logits: softmax, top-k, the head renormalised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_losses_reference import ref_stats

from rlready.eval.lm import heldout_stats

V, SEQ = 300, 16


@pytest.fixture(scope="module")
def model():
    from rlready.models import build_config, build_model

    torch.manual_seed(0)
    return build_model(build_config("tiny", vocab_size=V, num_hidden_layers=2)).eval()


@pytest.mark.parametrize(("k", "count"), [(1, 1), (7, 7), (0.05, 15), (V, V), (5000, V)])
def test_heldout_stats_match_full_logits(model, k, count):
    tokens = np.random.default_rng(1).integers(0, V, size=5 * SEQ + 3)
    got = heldout_stats(model, tokens, seq_len=SEQ, k=k, max_tokens=4 * SEQ, batch_size=3)
    # The same windows as heldout_stats: 4 of SEQ + 1 tokens, shifted by SEQ, predicting tokens 1..SEQ.
    x = torch.from_numpy(np.stack([tokens[r * SEQ : r * SEQ + SEQ + 1] for r in range(4)]))
    with torch.no_grad():
        logits = model(x[:, :-1]).logits
    ref = ref_stats(logits, x[:, 1:], k=count)
    n = ref["count"]
    want = {
        "ce": ref["ce_sum"] / n,
        "entropy": ref["entropy_sum"] / n,
        "accuracy": ref["correct_sum"] / n,
        "head_mass": ref["head_mass_sum"] / n,
        "tail_mass": 1.0 - ref["head_mass_sum"] / n,
        "head_entropy": ref["head_entropy_sum"] / n,
    }
    assert set(got) == {*want, "ppl", "eval_tokens"}
    assert got["eval_tokens"] == n == 4 * SEQ
    # fp32 model and loss against an fp64 computation on the same fp32 logits: rounding of fp32 sums.
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert got["ppl"] == pytest.approx(np.exp(want["ce"]), rel=1e-5)
    if count == V:
        assert got["head_entropy"] == pytest.approx(got["entropy"], rel=1e-5)
    if count == 1:
        assert got["head_entropy"] == pytest.approx(0.0, abs=1e-6)


def _each_document_alone(model, x: torch.Tensor, eos: int) -> tuple[float, int]:
    """Summed CE of predicting ``x[:, 1:]`` when every document (up to and including its EOS) is run through
    the model's own forward on its own: what attention within documents must equal."""
    total, n = 0.0, 0
    for row in x:
        inputs, targets = row[:-1], row[1:]
        cuts = [0, *[i + 1 for i in range(len(inputs) - 1) if inputs[i] == eos], len(inputs)]
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            with torch.no_grad():
                logits = model(inputs[lo:hi][None]).logits[0]
            total += float(
                torch.nn.functional.cross_entropy(logits.double(), targets[lo:hi], reduction="sum")
            )
            n += hi - lo
    return total, n


def test_heldout_stats_with_document_attention_see_each_document_alone(model):
    eos = 3
    tokens = np.random.default_rng(2).integers(4, V, size=4 * SEQ + 1)
    tokens[[0, 5, 6, 17, 30, 40]] = eos  # documents of every length, an empty one, one across two windows
    x = torch.from_numpy(np.stack([tokens[r * SEQ : r * SEQ + SEQ + 1] for r in range(4)]))
    total, n = _each_document_alone(model, x, eos)
    got = heldout_stats(model, tokens, seq_len=SEQ, k=5, max_tokens=4 * SEQ, batch_size=3, eos=eos)
    assert got["eval_tokens"] == n
    assert got["ce"] == pytest.approx(total / n, rel=1e-5)
    across = heldout_stats(model, tokens, seq_len=SEQ, k=5, max_tokens=4 * SEQ, batch_size=3)
    assert abs(across["ce"] - total / n) > 1e-3  # attention across EOS is another measurement
