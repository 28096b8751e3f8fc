"""rlready.hf's loss bridges against independent references: transformers' own causal-LM loss, the plain-PyTorch
shaped loss of tests/test_losses_reference.py on the unpatched model's logits, and PEFT's own forward.

Only torch and transformers are needed here (no Trainer, so no accelerate); the PEFT tests carry the ``bridges``
marker and skip without peft. The Trainer / TRL tests are in tests/test_hf_trainers.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_losses_reference import ref_loss
from transformers import TrainerControl, TrainerState

from rlready.hf import (
    ShapedLossCallback,
    apply_shaped_loss,
    remove_shaped_loss,
    shaped_loss,
    shaped_loss_func,
)
from rlready.losses import shaped_cross_entropy
from rlready.models import build_config, build_model

VOCAB = 96
KNOBS = {"beta": -0.25, "lam_head": 0.05, "lam_tail": -0.1, "k": 8}


def tiny(name: str = "tiny", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(build_config(name, vocab_size=VOCAB, **overrides))


def batch(seed: int = 1, b: int = 3, t: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, their mask and labels (-100 on padding and on a prompt), different counts per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    for row in range(b):
        pad = (row * 3) % t
        if pad:
            mask[row, t - pad :] = 0
            labels[row, t - pad :] = -100
        labels[row, : row + 1] = -100  # a prompt whose tokens are not trained on
    return ids, mask, labels


def shifted_reference(model, ids, mask, labels, num_items=None, **knobs):
    """The shaped loss on the unpatched model's logits, shifted by hand, in plain PyTorch."""
    logits = model(input_ids=ids, attention_mask=mask).logits
    total = ref_loss(logits[:, :-1], labels[:, 1:], reduction="sum", **knobs)
    count = (labels[:, 1:] != -100).sum() if num_items is None else num_items
    return total / count


# ------------------------------------------------------------------------------------------ shaped_loss_func


@pytest.mark.parametrize("num_items", [None, 17, "tensor"])
def test_loss_func_at_neutral_knobs_is_the_models_own_loss(num_items):
    model = tiny().eval()
    ids, mask, labels = batch()
    if num_items == "tensor":
        num_items = torch.tensor(23)
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    want = model(
        input_ids=ids, attention_mask=mask, labels=labels, **extra
    ).loss  # transformers' ForCausalLMLoss
    got = shaped_loss_func()(model(input_ids=ids, attention_mask=mask), labels, num_items_in_batch=num_items)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_items", [None, 11])
def test_loss_func_is_the_shaped_sum_over_num_items(num_items):
    model = tiny().eval()
    ids, mask, labels = batch(seed=2)
    got = shaped_loss_func(**KNOBS)(model(input_ids=ids, attention_mask=mask), labels, num_items)
    want = shifted_reference(model, ids, mask, labels, num_items, **KNOBS)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_loss_func_refuses_outputs_without_logits_and_missing_labels():
    model = tiny().eval()
    ids, mask, labels = batch()
    f = shaped_loss_func(beta=-0.25)
    with pytest.raises(ValueError, match="has no logits"):
        f({"loss": torch.tensor(1.0)}, labels)
    with shaped_loss(model):  # a patched model returns no logits with labels
        out = model(input_ids=ids, labels=labels)
    with pytest.raises(ValueError, match="has no logits.*apply_shaped_loss"):
        f(out, labels)
    with pytest.raises(ValueError, match="no labels"):
        f(model(input_ids=ids), None)
    with pytest.raises(ValueError, match="beta"):
        shaped_loss_func(beta="linear:oops")


def test_a_count_of_zero_gives_zero_not_nan_and_bad_counts_are_refused():
    """A batch with no target at all (num_items_in_batch 0) is a loss of 0 with zero gradients; transformers'
    own loss is NaN there, which an optimizer step would write into every weight."""
    model = tiny()
    ids, mask, labels = batch()
    nothing = torch.full_like(labels, -100)
    f = shaped_loss_func(**KNOBS)
    for count in (0, 0.0, torch.tensor(0), torch.tensor(0.0)):
        loss = f(model(input_ids=ids, attention_mask=mask), nothing, count)
        assert loss.item() == 0.0, count
        with shaped_loss(model, **KNOBS):
            patched = model(input_ids=ids, attention_mask=mask, labels=nothing, num_items_in_batch=count).loss
        assert patched.item() == 0.0, count
        patched.backward()
        assert all(torch.all(p.grad == 0) for p in model.parameters() if p.grad is not None)
    logits = model(input_ids=ids, attention_mask=mask)
    for count, error, message in [
        (0, ValueError, "is 0 but the batch has labels"),
        (-3, ValueError, "count >= 0"),
        (float("nan"), ValueError, "count >= 0"),
        (True, TypeError, "num_items_in_batch must be a number"),
        ("7", TypeError, "num_items_in_batch must be a number"),
    ]:
        with pytest.raises(error, match=message):
            f(logits, labels, count)
        with shaped_loss(model), pytest.raises(error, match=message):
            model(input_ids=ids, labels=labels, num_items_in_batch=count)


# ------------------------------------------------------------------------------------------ apply_shaped_loss


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("name", "num_items"), [("tiny", None), ("tiny", 29), ("tiny-moe", 29)])
def test_patched_loss_and_gradients_equal_the_shaped_loss_on_logits(name, num_items):
    # float64 where the model runs in it; MoE's grouped matmul takes float32 at most.
    ref_model = tiny(name) if name == "tiny-moe" else tiny(name).double()
    tol = {"rtol": 1e-5, "atol": 1e-6} if name == "tiny-moe" else {"rtol": 1e-8, "atol": 1e-10}
    model = copy.deepcopy(ref_model)
    ids, mask, labels = batch(seed=3)
    want = shifted_reference(ref_model, ids, mask, labels, num_items, **KNOBS)
    if name == "tiny-moe":  # the model's own forward adds the router's load-balancing term
        aux = ref_model(input_ids=ids, attention_mask=mask, output_router_logits=True).aux_loss
        want = want + ref_model.config.router_aux_loss_coef * aux
    want.backward()
    apply_shaped_loss(model, **KNOBS)
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    out = model(input_ids=ids, attention_mask=mask, labels=labels, **extra)
    assert out.logits is None
    out.loss.backward()
    torch.testing.assert_close(out.loss, want, **tol)
    got, ref = grads(model), grads(ref_model)
    assert got.keys() == ref.keys() and len(got) == len(list(model.parameters()))
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], **tol, msg=n)


def test_patched_loss_in_float32_is_within_1e5():
    ref_model = tiny()
    model = copy.deepcopy(ref_model)
    ids, mask, labels = batch(seed=4)
    want = shifted_reference(ref_model, ids, mask, labels, **KNOBS)
    want.backward()
    apply_shaped_loss(model, **KNOBS, chunk_size=7)  # several token chunks
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-5)
    for n, g in grads(ref_model).items():
        torch.testing.assert_close(grads(model)[n], g, rtol=1e-5, atol=1e-5, msg=n)


def test_patched_forward_without_labels_is_the_original_and_positional_labels_work():
    model = tiny().eval()
    ids, mask, labels = batch()
    plain = model(ids, attention_mask=mask).logits
    state = apply_shaped_loss(model, beta=-0.25)
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, plain, rtol=0, atol=0)
    generated = model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 7)
    # labels given positionally reach the shaped loss as well (Qwen3's forward order: ids, mask, positions,
    # cache, embeds, labels).
    by_position = model(ids, mask, None, None, None, labels).loss
    torch.testing.assert_close(by_position, model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    assert repr(state).startswith("ShapedLoss(beta=-0.25")


def test_shift_labels_are_used_as_given():
    model = tiny().double()
    ids, mask, labels = batch(seed=5)
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
    with shaped_loss(model, **KNOBS):
        a = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        b = model(input_ids=ids, attention_mask=mask, shift_labels=shift).loss
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("use_cache", ["not given", None, False])
def test_inputs_embeds_and_position_ids_reach_the_decoder(use_cache):
    ref_model = tiny().double()
    model = copy.deepcopy(ref_model)
    ids, _, labels = batch(seed=6)
    # Two packed sequences per row (positions restart), as padding-free collators send them.
    positions = torch.cat([torch.arange(5), torch.arange(ids.shape[1] - 5)]).expand_as(ids)
    kwargs = {"position_ids": positions} | ({} if use_cache == "not given" else {"use_cache": use_cache})
    logits = ref_model(inputs_embeds=ref_model.get_input_embeddings()(ids), **kwargs).logits
    want = ref_loss(logits[:, :-1], labels[:, 1:], **KNOBS)
    apply_shaped_loss(model, **KNOBS)
    got = model(inputs_embeds=model.get_input_embeddings()(ids), labels=labels, **kwargs).loss
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_remove_and_context_manager_restore_the_original_forward():
    model = tiny().eval()
    ids, mask, labels = batch()
    want = model(input_ids=ids, attention_mask=mask, labels=labels)
    apply_shaped_loss(model, beta=-0.25)
    with pytest.raises(ValueError, match="already patched"):
        apply_shaped_loss(model)
    remove_shaped_loss(model)
    assert "forward" not in vars(model)
    with pytest.raises(ValueError, match="not patched"):
        remove_shaped_loss(model)
    with shaped_loss(model, beta=-0.25):
        assert model(input_ids=ids, attention_mask=mask, labels=labels).logits is None
    again = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(again.loss, want.loss, rtol=0, atol=0)
    torch.testing.assert_close(again.logits, want.logits, rtol=0, atol=0)


def test_a_training_forward_around_the_patch_is_refused():
    """Running the decoder directly while patched (TRL's fused head does) would train on another loss."""
    model = tiny().train()
    ids, _, labels = batch()
    with shaped_loss(model):
        with pytest.raises(ValueError, match="around its forward patched by apply_shaped_loss"):
            model.get_decoder()(input_ids=ids)
        with torch.no_grad():
            model.get_decoder()(input_ids=ids)  # metrics, evaluation: no gradient, no harm
        model.eval()
        model.get_decoder()(input_ids=ids)
        model.train()
        assert model(input_ids=ids, labels=labels).loss.requires_grad
        with pytest.raises(ValueError, match="compute_loss_func=shaped_loss_func"):
            model(input_ids=ids, labels=labels, fused_lm_head=True)
    model.get_decoder()(input_ids=ids)  # the guard leaves with the patch


def test_patch_refuses_what_it_cannot_do():
    model = tiny()
    ids, _, labels = batch()
    with pytest.raises(ValueError, match="not a transformers causal LM"):
        apply_shaped_loss(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="Qwen3Model has no LM head.*ForCausalLM"):
        apply_shaped_loss(model.get_decoder())  # a base model: get_output_embeddings() is None
    with pytest.raises(ValueError, match="chunk_size"):
        apply_shaped_loss(model, chunk_size=0)
    with pytest.raises(ValueError, match="k must"):
        apply_shaped_loss(model, k=0)
    with shaped_loss(model), pytest.raises(ValueError, match="logits_to_keep"):
        model(input_ids=ids, labels=labels, logits_to_keep=1)
    model.config.final_logit_softcapping = 30.0
    with shaped_loss(model), pytest.raises(ValueError, match="final_logit_softcapping"):
        model(input_ids=ids, labels=labels)


def test_training_patched_and_unpatched_with_the_same_loss_ends_at_the_same_weights():
    """Liger-Kernel's convergence test shape: same seed, same data, a few optimizer steps each way."""
    # float64: Adam divides by the root of the squared gradient, so float32 rounding in a near-zero gradient
    # would move a weight by up to the learning rate and hide a real difference among such moves.
    ref_model = tiny(seed=7, num_hidden_layers=2).double()
    start = copy.deepcopy(ref_model)
    model = copy.deepcopy(ref_model)
    apply_shaped_loss(model, **KNOBS)
    opts = [torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0) for m in (ref_model, model)]
    losses = []
    for step in range(4):
        ids, mask, labels = batch(seed=100 + step, b=3, t=12)
        logits = ref_model(input_ids=ids, attention_mask=mask).logits
        ref = shaped_cross_entropy(logits[:, :-1], labels[:, 1:], **KNOBS)
        got = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        for opt, loss in zip(opts, (ref, got), strict=True):
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append((ref.item(), got.item()))
    for ref, got in losses:
        assert got == pytest.approx(ref, rel=1e-10)
    for (n, a), b in zip(ref_model.named_parameters(), model.parameters(), strict=True):
        assert not torch.equal(a, start.get_parameter(n)), n  # every weight moved
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10, msg=n)


# ------------------------------------------------------------------------------------------ schedules


def test_scheduled_knobs_follow_progress_and_the_callback():
    model = tiny().double()
    ids, mask, labels = batch(seed=8)
    state = apply_shaped_loss(model, beta="linear:-0.5:0", lam_tail="cosine:-0.2:0", k=8)
    func = shaped_loss_func(beta="linear:-0.5:0", lam_tail="cosine:-0.2:0", k=8)
    callback = ShapedLossCallback(state, func)
    trainer_state = TrainerState(global_step=3, max_steps=4)
    callback.on_step_begin(None, trainer_state, TrainerControl())  # the arguments play no part
    assert state.progress == func.progress == 0.75
    # linear -0.5 -> 0 at 0.75 is -0.125; cosine -0.2 -> 0 at 0.75 is -0.2 * (1 + cos(0.75 pi)) / 2.
    lam_tail = -0.2 * (1 + torch.cos(torch.tensor(0.75 * torch.pi, dtype=torch.float64)).item()) / 2
    want = shifted_reference(model, ids, mask, labels, beta=-0.125, lam_tail=lam_tail, k=8)
    got = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    remove_shaped_loss(model)
    torch.testing.assert_close(func(model(input_ids=ids, attention_mask=mask), labels), want)
    with pytest.raises(ValueError, match="ShapedLossFunc or ShapedLoss"):
        ShapedLossCallback(object())
    for obj in (state, func):  # NaN would silently read as progress 0
        with pytest.raises(ValueError, match="progress must be finite"):
            obj.progress = float("nan")
        with pytest.raises(TypeError, match="progress must be a number"):
            obj.progress = "half"


# ------------------------------------------------------------------------------------------ PEFT


def lora(model, **kwargs):
    peft = pytest.importorskip("peft", reason="peft is not installed (pip install 'rlready[peft]')")
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, **kwargs
    )
    wrapped = peft.get_peft_model(model, config)
    for n, p in wrapped.named_parameters():  # LoRA's B starts at 0; make the adapters count in the test
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(n)))
    return wrapped


@pytest.mark.bridges
def test_peft_model_patched_loss_and_adapter_gradients_equal_the_reference():
    ref = lora(tiny().double())
    model = copy.deepcopy(ref)
    ids, mask, labels = batch(seed=9)
    want = shifted_reference(ref, ids, mask, labels, **KNOBS)  # the PEFT model's own forward, logits included
    want.backward()
    state = apply_shaped_loss(model, **KNOBS)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits is None
    out.loss.backward()
    torch.testing.assert_close(out.loss, want, rtol=1e-10, atol=1e-10)
    got, expect = grads(model), grads(ref)
    assert got.keys() == expect.keys() and all("lora_" in n for n in got) and got
    for n in expect:
        torch.testing.assert_close(got[n], expect[n], rtol=1e-8, atol=1e-10, msg=n)
    remove_shaped_loss(model)
    assert model(input_ids=ids, attention_mask=mask, labels=labels).logits is not None
    assert state.progress == 0.0


@pytest.mark.bridges
def test_peft_adapter_on_the_lm_head_is_refused():
    model = lora(tiny(tie_word_embeddings=False), modules_to_save=["lm_head"])
    with pytest.raises(ValueError, match="not a plain nn.Linear"):
        apply_shaped_loss(model, beta=-0.25)
