"""Knob schedules over training progress and the ``ShapedCrossEntropy`` module that evaluates them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_losses_reference import random_problem, ref_loss

from rlready.losses import ShapedCrossEntropy, shaped_cross_entropy
from rlready.losses.schedules import Constant, Cosine, Linear, parse_schedule, weighting_at


def linear(start, end, p):
    return start + (end - start) * p


def cosine(start, end, p):
    return end + (start - end) * (1 + math.cos(math.pi * p)) / 2


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 1.0])
def test_schedule_values(p):
    assert Constant(-0.25)(p) == -0.25
    assert Linear(-0.25, 0.5)(p) == pytest.approx(linear(-0.25, 0.5, p), abs=1e-15)
    assert Cosine(0.5, 0.0)(p) == pytest.approx(cosine(0.5, 0.0, p), abs=1e-15)


def test_schedule_endpoints_and_midpoints():
    assert Linear(-0.25, 0.0)(0.0) == -0.25 and Linear(-0.25, 0.0)(1.0) == 0.0
    assert Linear(-0.25, 0.0)(0.5) == pytest.approx(-0.125)
    assert Cosine(0.5, 0.0)(0.0) == pytest.approx(0.5) and Cosine(0.5, 0.0)(1.0) == pytest.approx(
        0.0, abs=1e-15
    )
    assert Cosine(0.5, 0.0)(0.5) == pytest.approx(0.25)
    # Cosine starts and ends flat: a quarter of the way it has covered (1 - cos(pi/4)) / 2 ~ 14.6%.
    assert Cosine(1.0, 0.0)(0.25) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


@pytest.mark.parametrize("p, clamped", [(-0.5, 0.0), (-1e9, 0.0), (1.5, 1.0), (7.0, 1.0)])
def test_progress_is_clamped(p, clamped):
    assert Linear(-0.25, 0.5)(p) == Linear(-0.25, 0.5)(clamped)
    assert Cosine(0.5, -1.0)(p) == Cosine(0.5, -1.0)(clamped)
    assert Constant(3.0)(p) == 3.0


@settings(max_examples=50, deadline=None)
@given(
    start=st.floats(-5, 5),
    end=st.floats(-5, 5),
    p=st.floats(0.0, 1.0),
)
def test_schedules_follow_their_formulas(start, end, p):
    lin, cos = Linear(start, end)(p), Cosine(start, end)(p)
    assert lin == pytest.approx(linear(start, end, p), abs=1e-12)
    assert cos == pytest.approx(cosine(start, end, p), abs=1e-12)
    lo, hi = min(start, end), max(start, end)
    assert lo - 1e-12 <= lin <= hi + 1e-12 and lo - 1e-12 <= cos <= hi + 1e-12


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("-0.25", {0.0: -0.25, 0.5: -0.25, 1.0: -0.25}),
        ("0", {0.0: 0.0, 1.0: 0.0}),
        (0.5, {0.0: 0.5, 1.0: 0.5}),
        (-1, {0.3: -1.0}),
        ("linear:-0.25:0.0", {0.0: -0.25, 0.5: -0.125, 1.0: 0.0}),
        ("linear:1:-1", {0.25: 0.5}),
        ("cosine:0.5:0", {0.0: 0.5, 0.5: 0.25, 1.0: 0.0}),
        ("cosine:-0.25:0.5", {0.0: -0.25, 0.5: 0.125, 1.0: 0.5}),
    ],
)
def test_parse_schedule(spec, expected):
    sched = parse_schedule(spec)
    for p, value in expected.items():
        assert float(sched(p)) == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "abc",
        "linear",
        "linear:1",
        "linear:1:2:3",
        "cubic:0:1",
        "linear:a:0",
        "cosine:0:",
        "nan",
        "linear:0:inf",
    ],
)
def test_bad_schedule_spec_raises(spec):
    with pytest.raises(ValueError) as excinfo:
        parse_schedule(spec)
    assert "\n" not in str(excinfo.value).strip()


@pytest.mark.parametrize("spec", ["-0.25", "0", ".5", " 1e-5", "linear:0.5:0", "Cosine:-0.25:0.50"])
def test_a_parsed_schedule_keeps_its_text_and_compares_by_value(spec):
    import pickle

    sched = parse_schedule(spec)
    assert str(sched) == spec
    again = pickle.loads(pickle.dumps(sched))
    assert again == sched and str(again) == spec and hash(again) == hash(sched)
    # The same schedule built from numbers: equal and hashed alike, printed in a canonical form.
    built = type(sched)(*(getattr(sched, f) for f in ("value", "start", "end") if hasattr(sched, f)))
    assert built == sched and hash(built) == hash(sched) and parse_schedule(str(built)) == sched


def test_schedules_print_canonically_without_text():
    assert [str(Constant(-0.25)), str(Linear(0.5, 0)), str(Cosine(1, -1))] == [
        "-0.25",
        "linear:0.5:0.0",
        "cosine:1.0:-1.0",
    ]
    assert parse_schedule(0.5) == Constant(0.5) and str(parse_schedule(0.5)) == "0.5"


def test_weighting_at_evaluates_every_knob():
    w = weighting_at(0.5, Linear(-0.5, 0.5), Constant(0.1), Cosine(0.2, 0.0), 7)
    assert (w.beta, w.lam_head, w.k) == (0.0, 0.1, 7) and w.lam_tail == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------------------
# The module.

V = 9


def module_run(module, logits, targets):
    z = logits.clone().requires_grad_()
    loss = module(z, targets)
    loss.backward()
    return loss.detach(), z.grad


def test_module_defaults_are_cross_entropy():
    logits, targets = random_problem((4, 5), V, ignore_frac=0.2, seed=40)
    loss, grad = module_run(ShapedCrossEntropy(), logits, targets)
    z = logits.clone().requires_grad_()
    ce = F.cross_entropy(z.reshape(-1, V), targets.reshape(-1))
    ce.backward()
    torch.testing.assert_close(loss, ce, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, z.grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_module_constant_knobs_and_options(reduction):
    logits, targets = random_problem((6,), V, ignore_frac=0.3, ignore_index=-1, seed=41)
    knobs = dict(beta=-0.25, lam_head=0.1, lam_tail=-0.2, k=3)
    module = ShapedCrossEntropy(**knobs, ignore_index=-1, reduction=reduction)
    out = module(logits, targets)
    torch.testing.assert_close(out, ref_loss(logits, targets, ignore_index=-1, reduction=reduction, **knobs))


@pytest.mark.parametrize("progress", [0.0, 0.3, 1.0])
def test_module_evaluates_schedules_at_progress(progress):
    logits, targets = random_problem((3, 4), V, ignore_frac=0.2, seed=42)
    module = ShapedCrossEntropy(
        beta=Linear(-0.5, 0.5), lam_head=Cosine(0.2, 0.0), lam_tail=Constant(-0.1), k=2
    )
    module.progress = progress
    loss, grad = module_run(module, logits, targets)
    knobs = dict(beta=linear(-0.5, 0.5, progress), lam_head=cosine(0.2, 0.0, progress), lam_tail=-0.1, k=2)
    z = logits.clone().requires_grad_()
    ref = ref_loss(z, targets, **knobs)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, z.grad, rtol=1e-9, atol=1e-12)


def test_module_progress_changes_the_loss():
    logits, targets = random_problem((8,), V, seed=43)
    module = ShapedCrossEntropy(beta=parse_schedule("linear:-0.25:0.5"))
    module.progress = 0.0
    early = module(logits, targets)
    module.progress = 1.0
    late = module(logits, targets)
    torch.testing.assert_close(early, shaped_cross_entropy(logits, targets, beta=-0.25))
    torch.testing.assert_close(late, shaped_cross_entropy(logits, targets, beta=0.5))
    assert not torch.isclose(early, late)


@pytest.mark.parametrize(
    "kwargs",
    [dict(reduction="avg"), dict(k=0), dict(k=2.5), dict(beta=float("nan")), dict(lam_head=float("inf"))],
)
def test_module_bad_input_raises(kwargs):
    logits, targets = random_problem((3,), V, seed=44)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ShapedCrossEntropy(lam_tail=-0.1, **kwargs)(logits, targets)
