"""The shaped loss in transformers' ``Trainer`` and TRL's ``SFTTrainer``: a loss function and a model patch.

``shaped_loss_func(...)`` is a ``compute_loss_func``: it takes the model's logits and the (unshifted) labels.
``apply_shaped_loss(model, ...)`` patches one model instance, as Liger-Kernel's
``_apply_liger_kernel_to_instance`` does, so that a forward with ``labels`` runs the decoder and
``fused_linear_shaped_cross_entropy`` on the final hidden states, never holding the ``[N, V]`` logits.

Gradient accumulation and several devices. ``Trainer`` counts the valid labels of the whole accumulated batch
(shifted, ``!= -100``; summed over devices when ``average_tokens_across_devices``, the default) and passes the
count as ``num_items_in_batch`` to ``compute_loss_func`` and to a model whose forward takes ``**kwargs``. It
does not divide such a loss by the accumulation steps, and it multiplies it by the number of processes to undo
DDP's gradient mean (transformers 5.x ``Trainer.training_step``, ``compute_loss``, ``_get_num_items_in_batch``).
So both forms return the sum over the micro-batch's valid tokens divided by ``num_items_in_batch``: summed
over micro-batches and devices that is the mean over the whole batch, the update of one big batch. Without
``num_items_in_batch`` they return the mean over the micro-batch's valid tokens. The count only matches labels
ignored with -100, the value ``Trainer`` counts.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from rlready.losses.module import FusedLinearShapedCrossEntropy, ShapedCrossEntropy
from rlready.losses.schedules import Schedule
from rlready.models.heads import final_hidden_and_head

__all__ = [
    "ShapedLoss",
    "ShapedLossCallback",
    "ShapedLossFunc",
    "apply_shaped_loss",
    "remove_shaped_loss",
    "shaped_loss",
    "shaped_loss_func",
]

Knob = float | str | Schedule
_STATE = "_rlready_shaped_loss"  # the ShapedLoss of a patched model, an attribute of the model instance


def _shift(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Next-token targets of ``labels [B, T]``, as transformers' ``ForCausalLMLoss`` forms them: position t
    targets label t+1, the last position is ignored."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def _normalise(total: torch.Tensor, targets: torch.Tensor, ignore_index: int, num_items_in_batch: Any):
    """``total`` (a sum over valid tokens) divided by ``num_items_in_batch``, or by this batch's valid count.

    A count of 0 (no target in the whole accumulated batch, e.g. every prompt truncated away) divides by 1
    instead: the sum is 0 too, so the loss is 0 with zero gradients, not NaN (which would poison the weights)."""
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum().clamp(min=1).to(total.dtype)
    if torch.is_tensor(num_items_in_batch):
        # The Trainer's count; it may be fractional (divided by tensor-parallel ranks). Checking its value
        # here would synchronise with the device every micro-batch, so only 0 is mapped, on the device.
        count = num_items_in_batch.to(device=total.device, dtype=total.dtype)
        return total / torch.where(count == 0, torch.ones_like(count), count)
    if isinstance(num_items_in_batch, bool) or not isinstance(num_items_in_batch, numbers.Real):
        raise TypeError(
            f"num_items_in_batch must be a number, a tensor or None, got {type(num_items_in_batch).__name__}"
        )
    if not (math.isfinite(num_items_in_batch) and num_items_in_batch >= 0):
        raise ValueError(f"num_items_in_batch must be a finite count >= 0, got {num_items_in_batch!r}")
    if num_items_in_batch == 0:
        if bool((targets != ignore_index).any()):
            raise ValueError("num_items_in_batch is 0 but the batch has labels that are not ignore_index")
        return total
    return total / num_items_in_batch


def _progress(value: Any) -> float:
    """A finite fraction of training (schedules clamp it to [0, 1]); NaN would silently read as 0."""
    try:
        progress = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"progress must be a number, got {value!r}") from None
    if not math.isfinite(progress):
        raise ValueError(f"progress must be finite, got {value!r}")
    return progress


class _Scheduled:
    """``progress`` (fraction of training done) of the wrapped loss module ``self.loss``, checked on the way in."""

    loss: Any

    @property
    def progress(self) -> float:
        return self.loss.progress

    @progress.setter
    def progress(self, value: float) -> None:
        self.loss.progress = _progress(value)


class ShapedLossFunc(_Scheduled):
    """``(outputs, labels, num_items_in_batch=None) -> loss``: transformers' ``compute_loss_func`` signature.

    ``progress`` (fraction of training done, in [0, 1]) is where scheduled knobs are evaluated; set it, or let
    a ``ShapedLossCallback`` set it every step.
    """

    def __init__(self, beta: Knob, lam_head: Knob, lam_tail: Knob, k: int, ignore_index: int) -> None:
        self.loss = ShapedCrossEntropy(beta, lam_head, lam_tail, k, ignore_index, reduction="sum")

    def __call__(
        self, outputs: Any, labels: torch.Tensor | None, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
        if logits is None:
            raise ValueError(
                f"shaped_loss_func: the model output ({type(outputs).__name__}) has no logits; a model patched "
                "with apply_shaped_loss returns none when given labels, so use one of the two, not both"
            )
        if labels is None:
            raise ValueError("shaped_loss_func: no labels; the batch needs a 'labels' column")
        targets = _shift(labels, self.loss.ignore_index).to(logits.device)
        return _normalise(self.loss(logits, targets), targets, self.loss.ignore_index, num_items_in_batch)

    def __repr__(self) -> str:
        return f"ShapedLossFunc({self.loss.extra_repr()}, ignore_index={self.loss.ignore_index})"


def shaped_loss_func(
    beta: Knob = 0.0, lam_head: Knob = 0.0, lam_tail: Knob = 0.0, k: int = 100, *, ignore_index: int = -100
) -> ShapedLossFunc:
    """The shaped loss as ``Trainer(compute_loss_func=...)`` / ``SFTTrainer(compute_loss_func=...)`` call it.

    It shifts the labels itself (position t predicts label t+1, like the model's own loss), ignores
    ``ignore_index`` and returns ``sum over valid tokens / num_items_in_batch`` (an int or a tensor), or the mean
    over valid tokens when ``num_items_in_batch`` is None; see the module docstring for why that makes gradient
    accumulation and several devices give the update of one big batch. Knobs may be schedules
    (``"linear:-0.25:0"``, ``rlready.losses.Linear``...) evaluated at the returned object's ``progress``.
    At ``beta = lam_head = lam_tail = 0`` it is the Trainer's own cross-entropy.
    """
    return ShapedLossFunc(beta, lam_head, lam_tail, k, ignore_index)


class ShapedLoss(_Scheduled):
    """What ``apply_shaped_loss`` installs on a model: the knobs (schedules allowed) at ``progress``."""

    def __init__(
        self, beta: Knob, lam_head: Knob, lam_tail: Knob, k: int, ignore_index: int, chunk_size: int | None
    ) -> None:
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        self.loss = FusedLinearShapedCrossEntropy(
            beta, lam_head, lam_tail, k, ignore_index, reduction="sum", chunk_size=chunk_size
        )

    @property
    def ignore_index(self) -> int:
        return self.loss.ignore_index

    def __repr__(self) -> str:
        return f"ShapedLoss({self.loss.extra_repr()}, ignore_index={self.ignore_index})"


def _causal_lm(model: Any) -> Any:
    """The transformers model inside ``model``: a PEFT model wraps it (``get_base_model``), and its forward
    reaches the inner model's ``forward`` attribute, which is what gets patched."""
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if not isinstance(inner, torch.nn.Module) or not callable(getattr(inner, "get_output_embeddings", None)):
        raise ValueError(
            f"apply_shaped_loss: {type(model).__name__} is not a transformers causal LM (no get_output_embeddings)"
        )
    if not callable(getattr(inner, "get_decoder", None)):
        raise ValueError(f"apply_shaped_loss: {type(inner).__name__} has no get_decoder()")
    return inner


def _check_head(model: Any) -> None:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(
            f"apply_shaped_loss: {type(model).__name__} has no LM head (get_output_embeddings() is None); "
            "patch the causal LM (a ...ForCausalLM), not its base model"
        )
    # An adapter on the head (LoRA, PEFT's modules_to_save) computes more than hidden @ weight.T, and the fused
    # loss reads only the weight, so it would train a different model than the forward describes.
    if type(head) is not torch.nn.Linear:
        raise ValueError(
            f"apply_shaped_loss: the LM head of {type(model).__name__} is a {type(head).__name__}, not a plain "
            "nn.Linear (an adapter on lm_head?); use shaped_loss_func on its logits instead"
        )


def _accepts_fused_lm_head(forward: Any) -> bool:
    # TRL's add_fused_lm_head (SFTTrainer, GRPOTrainer, TRL >= 1.0) keeps the model's signature through
    # functools.wraps, so its own keyword shows only in the wrapper's code.
    code = getattr(getattr(forward, "__func__", forward), "__code__", None)
    return code is not None and "fused_lm_head" in code.co_varnames


def _loss_call(target: Any, signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple | None:
    """A call of the patched forward split for the shaped loss: ``(decoder arguments, labels, shift_labels,
    num_items_in_batch)``, or None for a call without labels, which the original forward answers."""
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError as err:
        raise TypeError(f"{type(target).__name__}.forward (shaped loss): {err}") from None
    arguments = dict(bound.arguments)
    var_keyword = next(
        (p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None
    )
    arguments.update(arguments.pop(var_keyword, None) or {})
    labels, shift_labels = arguments.pop("labels", None), arguments.pop("shift_labels", None)
    if labels is None and shift_labels is None:
        return None
    if arguments.pop("fused_lm_head", False):
        raise ValueError(
            "TRL's fused LM head asks for per-token log-probabilities, and its trainer computes its own "
            "cross-entropy from them; the shaped loss cannot supply that: pass "
            "compute_loss_func=shaped_loss_func(...) to the trainer instead of patching the model"
        )
    num_items_in_batch = arguments.pop("num_items_in_batch", None)
    logits_to_keep = arguments.pop("logits_to_keep", None)
    if logits_to_keep not in (None, 0):
        raise ValueError("the shaped loss scores every position; logits_to_keep must be 0 with labels")
    arguments.pop("return_dict", None)  # a ModelOutput either way
    # None means "the default" to the model's forward; leaving it out lets the decoder apply its own. The
    # cache setting goes to the decoder as the model's forward passes it (its default when not given): with
    # the cache off, recent transformers read non-increasing position_ids as packed sequences and mask
    # attention between them, so the setting changes the hidden states.
    if "use_cache" in signature.parameters and "use_cache" not in arguments:
        arguments["use_cache"] = signature.parameters["use_cache"].default
    arguments = {name: value for name, value in arguments.items() if value is not None or name == "use_cache"}
    return arguments, labels, shift_labels, num_items_in_batch


def apply_shaped_loss(
    model: Any,
    beta: Knob = 0.0,
    lam_head: Knob = 0.0,
    lam_tail: Knob = 0.0,
    k: int = 100,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> ShapedLoss:
    """Patch ``model`` (one instance; any transformers causal LM with ``get_output_embeddings()``, PEFT-wrapped
    ones included) so that a forward given ``labels`` or ``shift_labels`` returns the shaped loss.

    Such a forward runs the decoder, then ``fused_linear_shaped_cross_entropy`` on its final hidden states and
    the LM head, and returns ``CausalLMOutputWithPast(loss=..., logits=None)``: the ``[N, V]`` logits are never
    formed. ``labels`` are shifted as the model's own loss shifts them; ``shift_labels`` are used as given. The
    loss is ``sum over valid tokens / num_items_in_batch`` (the mean over valid tokens without it), plus the
    MoE load-balancing term where the model adds one. A forward without labels is the original one, so
    generation is unchanged. Knobs may be schedules, evaluated at the returned ``ShapedLoss.progress``: set it,
    or pass the returned object to ``ShapedLossCallback``. ``remove_shaped_loss(model)`` undoes the patch.

    While patched, a training forward (grad enabled, training mode) that runs the decoder without going
    through the patched forward is refused: it would train on some other loss without a word. That is what TRL
    >= 1.0's ``SFTTrainer`` does: it puts its own fused head around the forward when it is built and computes
    cross-entropy from that head's per-token log-probabilities (``fused_lm_head=True``, which a patched
    forward refuses too). Pass it ``compute_loss_func=shaped_loss_func(...)`` instead.
    """
    target = _causal_lm(model)
    if _STATE in vars(target):
        raise ValueError("apply_shaped_loss: the model is already patched; call remove_shaped_loss first")
    _check_head(target)
    state = ShapedLoss(beta, lam_head, lam_tail, k, ignore_index, chunk_size)
    original = target.forward
    signature = inspect.signature(original)
    inside = [0]  # calls of the patched forward in progress: the decoder runs legitimately within them

    def guard(decoder: torch.nn.Module, _args: Any) -> None:
        if inside[0] == 0 and decoder.training and torch.is_grad_enabled():
            raise ValueError(
                f"a training step ran the decoder of {type(target).__name__} around its forward patched by "
                "apply_shaped_loss (TRL's fused LM head does), so it would not train on the shaped loss: pass "
                "compute_loss_func=shaped_loss_func(...) to the trainer instead of patching the model"
            )

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        inside[0] += 1
        try:
            return patched(*args, **kwargs)
        finally:
            inside[0] -= 1

    def patched(*args: Any, **kwargs: Any) -> Any:
        call = _loss_call(target, signature, args, kwargs)
        if call is None:
            return original(*args, **kwargs)
        arguments, labels, shift_labels, num_items_in_batch = call
        input_ids = arguments.pop("input_ids", None)
        attention_mask = arguments.pop("attention_mask", None)
        head = final_hidden_and_head(target, input_ids, attention_mask, **arguments)
        targets = shift_labels if shift_labels is not None else _shift(labels, state.ignore_index)
        targets = targets.to(head.weight.device)
        # Under autocast the decoder may hand back another dtype than the head's; nn.Linear would cast too.
        hidden = head.hidden.to(device=head.weight.device, dtype=head.weight.dtype)
        total = state.loss(hidden, head.weight, targets, bias=head.bias)
        loss = _normalise(total, targets, state.ignore_index, num_items_in_batch)
        if head.aux_loss is not None:
            loss = loss + head.aux_loss.to(loss.device)  # as the model's own forward adds it
        from transformers.modeling_outputs import CausalLMOutputWithPast

        return CausalLMOutputWithPast(loss=loss, logits=None)

    previous = vars(target).get("forward")  # an instance-level forward (another patch) to put back
    hook = target.get_decoder().register_forward_pre_hook(guard)
    target.forward = forward
    setattr(target, _STATE, (state, previous, forward, hook))
    return state


def remove_shaped_loss(model: Any) -> None:
    """Undo ``apply_shaped_loss(model)``: the model's forward is the one it had before."""
    target = _causal_lm(model)
    installed = vars(target).get(_STATE)
    if installed is None:
        raise ValueError("remove_shaped_loss: the model is not patched by apply_shaped_loss")
    _, previous, forward, hook = installed
    if vars(target).get("forward") is not forward:
        raise ValueError(
            "remove_shaped_loss: the model's forward was replaced after apply_shaped_loss (e.g. by a trainer); "
            "remove that patch first"
        )
    if previous is None:
        del target.forward
    else:
        target.forward = previous
    hook.remove()
    delattr(target, _STATE)


@contextlib.contextmanager
def shaped_loss(model: Any, *args: Any, **kwargs: Any) -> Iterator[ShapedLoss]:
    """``apply_shaped_loss(model, ...)`` for the ``with`` block, removed at its end."""
    state = apply_shaped_loss(model, *args, **kwargs)
    try:
        yield state
    finally:
        remove_shaped_loss(model)


def _check_not_bypassed(model: Any, state: ShapedLoss) -> None:
    target = _causal_lm(model)
    installed = vars(target).get(_STATE)
    if installed is None or installed[0] is not state:
        return  # the callback drives a loss function, or another model
    forward = vars(target).get("forward")
    # Other wrappers (accelerate's autocast one) call the patched forward; TRL's fused head does not.
    if forward is not installed[2] and _accepts_fused_lm_head(forward):
        raise ValueError(
            "the model's forward patched by apply_shaped_loss was wrapped by TRL's fused LM head, which computes "
            "cross-entropy without calling it: pass compute_loss_func=shaped_loss_func(...) to the trainer instead"
        )


class ShapedLossCallback(TrainerCallback):
    """Sets ``progress = global_step / max_steps`` on shaped losses before every optimizer step, so scheduled
    knobs follow training as in ``rlready``'s own trainer (``step / max_steps``).

    ``losses``: ``ShapedLossFunc`` (from ``shaped_loss_func``) and/or ``ShapedLoss`` (from
    ``apply_shaped_loss``). At the start of training it also refuses a patched model whose forward TRL wrapped
    over (see ``apply_shaped_loss``), which would otherwise train plain cross-entropy.
    """

    def __init__(self, *losses: ShapedLossFunc | ShapedLoss) -> None:
        if not losses:
            raise ValueError("ShapedLossCallback: give the shaped losses whose knobs it advances")
        for loss in losses:
            if not isinstance(loss, (ShapedLossFunc, ShapedLoss)):
                raise ValueError(
                    f"ShapedLossCallback: expected a ShapedLossFunc or ShapedLoss, got {type(loss).__name__}"
                )
        self.losses = losses

    def _advance(self, state: Any) -> None:
        progress = state.global_step / max(1, state.max_steps)
        for loss in self.losses:
            loss.progress = progress

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            for loss in self.losses:
                if isinstance(loss, ShapedLoss):
                    _check_not_bypassed(model, loss)
        self._advance(state)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._advance(state)
