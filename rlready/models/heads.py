"""Final hidden states and LM head, for a fused "linear + loss" that never materialises logits.

The shaped loss (docs/method.md §4) needs per-row log-sum-exp, p_x and the top-k of the logits; computing them
chunk by chunk from ``hidden @ weight.T`` keeps memory at O(chunk x V) instead of O(tokens x V). This module
runs the decoder only (no ``lm_head``) and hands back what the fused op needs.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import torch

# Config fields under which some causal LMs transform logits after the LM head (softcapping, scaling);
# hidden @ weight.T would then not be their logits, so such models are refused rather than silently wrong.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class HeadInputs(NamedTuple):
    """What a fused linear + loss consumes: ``logits = hidden @ weight.T (+ bias)``.

    ``aux_loss`` is the MoE router load-balancing loss already multiplied by ``router_aux_loss_coef``, i.e.
    exactly the term ``Qwen3MoeForCausalLM`` adds to its own loss, so the trainer adds it to the shaped loss
    as is. It is ``None`` for dense models and for MoE configs with ``output_router_logits=False``.
    """

    hidden: torch.Tensor  # [B, T, H], after the final norm
    weight: torch.Tensor  # [V, H]
    bias: torch.Tensor | None  # [V] or None
    aux_loss: torch.Tensor | None  # scalar or None


def _check_plain_head(config: Any) -> None:
    for field in _LOGIT_TRANSFORMS:
        value = getattr(config, field, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"model config sets {field}={value!r}; its logits are not hidden @ weight.T")


def final_hidden_and_head(
    model: Any,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None = None,
    **decoder_kwargs: Any,
) -> HeadInputs:
    """Run ``model``'s decoder on ``input_ids`` [B, T]; return ``HeadInputs`` (hidden, weight, bias, aux_loss).

    ``decoder_kwargs`` (``position_ids``, ``inputs_embeds`` in place of ``input_ids``, ...) go to the decoder as
    they are, so a model's own forward can be rerouted through here (rlready.hf.apply_shaped_loss); the cache
    is off unless they say otherwise. For MoE configs with ``output_router_logits`` set (or the keyword), the
    router logits of every layer are collected and turned into the load-balancing loss with the model's own
    ``load_balancing_loss_func`` (same padding handling through ``attention_mask``), scaled by
    ``router_aux_loss_coef``.
    """
    if input_ids is None:
        embeds = decoder_kwargs.get("inputs_embeds")
        if embeds is None:
            raise ValueError("need input_ids [batch, time] or inputs_embeds [batch, time, hidden]")
        shape = tuple(embeds.shape[:2])
    elif input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, time], got shape {tuple(input_ids.shape)}")
    else:
        shape = tuple(input_ids.shape)
    # A 2-D mask marks padding per token; other masks (4-D, prepared by the caller) go to the decoder as given.
    if attention_mask is not None and attention_mask.dim() == 2 and tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {shape}")
    config = model.config
    _check_plain_head(config)
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"model of type {type(model).__name__} has no linear LM head")
    want_router = bool(
        decoder_kwargs.get("output_router_logits", getattr(config, "output_router_logits", False))
    )
    kwargs: dict[str, Any] = {"use_cache": False, **decoder_kwargs}
    if want_router:
        kwargs["output_router_logits"] = True
    out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    aux_loss = None
    if want_router:
        aux_loss = config.router_aux_loss_coef * _load_balancing_loss(
            model, out.router_logits, attention_mask
        )
    return HeadInputs(out.last_hidden_state, head.weight, getattr(head, "bias", None), aux_loss)


def _load_balancing_loss(model: Any, router_logits: Any, attention_mask: torch.Tensor | None) -> torch.Tensor:
    # The model's own module defines the loss it adds in forward (Switch Transformer eqs. 4-6 in Qwen3-MoE,
    # Mixtral, ...); using it keeps this path identical to model(...).aux_loss.
    module = sys.modules[type(model).__module__]
    loss_fn = getattr(module, "load_balancing_loss_func", None)
    if loss_fn is None:
        raise ValueError(f"model of type {type(model).__name__} has no load_balancing_loss_func")
    config = model.config
    num_experts = getattr(config, "num_experts", None) or config.num_local_experts
    return loss_fn(router_logits, num_experts, config.num_experts_per_tok, attention_mask)
