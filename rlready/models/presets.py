"""Typed model presets and their transformers configs (Qwen3 dense and Qwen3-MoE).

Paper-scale presets follow docs/method.md §6 (dense 1B and 4B; MoE 5B-A0.3B, 10B-A0.5B, 20B-A1B, all in the
Qwen3 family, vocabulary 151936). ``dense-4b`` is Qwen3-4B's shape; ``dense-1b`` sits between Qwen3-0.6B and
Qwen3-1.7B. Public Qwen3-MoE (30B-A3B: 128 experts, top-8) is only 16x sparse, which cannot reach 20B
total with 1B active, so the MoE presets keep Qwen3-MoE's top-8 routing, head_dim 128 and 4 KV heads but
use 256 experts (Qwen3-Next goes further, to 512) and pick width, depth and expert size so the counts land
on the names.
``tiny``/``tiny-moe`` are sized so that the whole study runs on a small CPU machine; ``small`` is the next
step up, for multi-seed studies on CPU (run times and speeds: BENCHMARKS.md, "Preset sizing notes").

Parameter counts: total counts tied embeddings once; active (see ``count_parameters``) counts every
parameter outside the routed experts -- embeddings and LM head included, as the Qwen3 model cards do -- plus
top-k of the experts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import inspect
from dataclasses import dataclass
from typing import Any, Literal

from rlready.models.rope import rope_config_kwargs

QWEN3_VOCAB = 151936


@dataclass(frozen=True)
class Preset:
    """Shape of one model; MoE fields are 0 for dense presets."""

    family: Literal["dense", "moe"]
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0


PRESETS: dict[str, Preset] = {
    # ~1.05M parameters at vocab 2048: small enough to run the whole five-configuration study on a CPU.
    "tiny": Preset("dense", 2048, 128, 4, 4, 2, 32, 384, True, 2048),
    # Same attention as tiny, 8 experts top-2 (~2.0M total, ~0.85M active): the MoE code paths on CPU.
    "tiny-moe": Preset("moe", 2048, 128, 4, 4, 2, 32, 0, True, 2048, 8, 2, 128),
    # ~1.97M parameters: 1.5x tiny's width, 6 heads.
    "small": Preset("dense", 2048, 192, 4, 6, 2, 32, 512, True, 2048),
    # ~1.03B: Qwen3-0.6B's depth and heads (28 layers, 16 query / 8 KV heads), widened to 1536 / FFN 4096.
    "dense-1b": Preset("dense", QWEN3_VOCAB, 1536, 28, 16, 8, 128, 4096, True, 32768),
    # Qwen3-4B (~4.02B).
    "dense-4b": Preset("dense", QWEN3_VOCAB, 2560, 36, 32, 8, 128, 9728, True, 32768),
    # ~5.06B total, ~0.30B active.
    "moe-5b-a0.3b": Preset("moe", QWEN3_VOCAB, 768, 10, 12, 4, 128, 0, True, 32768, 256, 8, 832),
    # ~10.2B total, ~0.50B active.
    "moe-10b-a0.5b": Preset("moe", QWEN3_VOCAB, 768, 22, 12, 4, 128, 0, True, 32768, 256, 8, 768),
    # ~20.0B total, ~1.0B active.
    "moe-20b-a1b": Preset("moe", QWEN3_VOCAB, 1280, 24, 20, 4, 128, 0, True, 32768, 256, 8, 832),
}


def _config_class(family: str) -> type:
    # Imported here: `import transformers` takes seconds and the CLI should answer fast.
    from transformers import Qwen3Config, Qwen3MoeConfig

    return Qwen3MoeConfig if family == "moe" else Qwen3Config


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def build_config(
    preset: str,
    *,
    vocab_size: int | None = None,
    rope_theta: float = 1e4,
    max_position_embeddings: int | None = None,
    **overrides: Any,
) -> Any:
    """The transformers ``Qwen3Config``/``Qwen3MoeConfig`` for ``preset``.

    ``rope_theta`` defaults to the pre-training base 1e4 (docs/method.md §6). ``overrides`` are config fields
    (e.g. ``num_hidden_layers=2``, ``eos_token_id=0``); names the config class does not know raise ValueError,
    because transformers would otherwise store a typo silently as an unused attribute.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known presets: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    cls = _config_class(p.family)
    kwargs: dict[str, Any] = {
        "vocab_size": _positive_int("vocab_size", p.vocab_size if vocab_size is None else vocab_size),
        "hidden_size": p.hidden_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "head_dim": p.head_dim,
        "tie_word_embeddings": p.tie_word_embeddings,
        "max_position_embeddings": _positive_int(
            "max_position_embeddings",
            p.max_position_embeddings if max_position_embeddings is None else max_position_embeddings,
        ),
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "attention_bias": False,
        "use_sliding_window": False,
        **rope_config_kwargs(cls, rope_theta),
    }
    if p.family == "moe":
        kwargs.update(
            num_experts=p.num_experts,
            num_experts_per_tok=p.num_experts_per_tok,
            moe_intermediate_size=p.moe_intermediate_size,
            # Every layer sparse, like Qwen3-30B-A3B; dense MLP size is then unused but must be valid.
            intermediate_size=p.moe_intermediate_size,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,
            # Training from scratch needs the load-balancing loss (Qwen3's coefficient); see heads.py.
            output_router_logits=True,
            router_aux_loss_coef=1e-3,
        )
    else:
        kwargs["intermediate_size"] = p.intermediate_size
    if {"rope_theta", "rope_parameters", "rope_scaling"} & set(overrides):
        raise ValueError("pass the RoPE base as build_config(..., rope_theta=...), not as an override")
    unknown = sorted(set(overrides) - set(inspect.signature(cls.__init__).parameters) - set(kwargs))
    if unknown:
        raise ValueError(f"unknown config field(s) for preset {preset!r}: {', '.join(unknown)}")
    kwargs.update(overrides)
    if kwargs["num_attention_heads"] % kwargs["num_key_value_heads"]:
        raise ValueError(
            f"num_attention_heads ({kwargs['num_attention_heads']}) must be a multiple of "
            f"num_key_value_heads ({kwargs['num_key_value_heads']})"
        )
    return cls(**kwargs)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(total, active)`` parameter counts of a (possibly meta-device) model.

    Total counts each tensor once (tied embeddings once). Active is what one token uses in an MoE: every
    parameter outside the routed experts (embeddings, attention, norms, routers, any shared expert) plus
    ``num_experts_per_tok / num_experts`` of each ``experts`` module. This holds for both expert layouts
    transformers uses (a ModuleList of expert MLPs in 4.x, fused ``[num_experts, ...]`` tensors in 5.x),
    because every routed-expert tensor scales with the number of experts. Dense models: ``total == active``.
    """
    total = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    num_experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    top_k = getattr(config, "num_experts_per_tok", None)
    if not num_experts or not top_k:
        return total, total
    routed = 0
    seen: set[int] = set()
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] != "experts":
            continue
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                routed += p.numel()
    if routed % num_experts:
        raise ValueError(f"routed expert parameters ({routed}) not divisible by num_experts ({num_experts})")
    return total, total - routed + routed // num_experts * top_k
