"""RoPE base (``theta``) on a transformers config or model, across transformers 4.x and 5.x.

Mid-training raises the RoPE base from 1e4 to 1e6 (docs/method.md §5.2). transformers 5 keeps
the base in ``config.rope_parameters["rope_theta"]``; transformers 4.x keeps it in ``config.rope_theta``.
These helpers read and write whichever the installed version uses, so callers never touch either field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

import inspect
import math
from typing import Any


def _check_theta(theta: float) -> float:
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise ValueError(f"rope theta must be a number, got {theta!r}")
    if not math.isfinite(theta) or theta <= 1:
        raise ValueError(f"rope theta must be a finite number > 1, got {theta!r}")
    return float(theta)


def rope_config_kwargs(config_cls: type, theta: float) -> dict[str, Any]:
    """Constructor keyword arguments that set the RoPE base ``theta`` on ``config_cls``."""
    theta = _check_theta(theta)
    if "rope_parameters" in inspect.signature(config_cls.__init__).parameters:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    return {"rope_theta": theta}


def portable_rope_fields(config: Any) -> dict[str, Any]:
    """The RoPE entries for ``config.json`` that transformers 4.x and 5.x both read as ``config``'s RoPE.

    transformers 5 reads ``rope_parameters`` and saves only that; 4.x reads ``rope_theta`` and
    ``rope_scaling`` (None for plain RoPE) and ignores ``rope_parameters``, so a config.json written by 5
    alone loads in 4.x with the default base 1e4 without a word (a mid-trained model's 1e6 lost). Both forms
    are derived from the one the installed version computes with; 5 takes ``rope_scaling`` over
    ``rope_parameters`` when both are set and fills a missing ``rope_theta`` from the top-level key, so the
    two never disagree. Empty when the RoPE is given per layer type (a nested ``rope_parameters``, which 4.x
    has no form for): the file is then left as transformers wrote it.
    """
    if "rope_parameters" in inspect.signature(type(config).__init__).parameters:
        params = dict(getattr(config, "rope_parameters", None) or {})
        if not params or any(isinstance(v, dict) for v in params.values()) or "rope_theta" not in params:
            return {}
        theta = params["rope_theta"]
        rope_type = params.get("rope_type", params.get("type", "default"))
        rest = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        fields: dict[str, Any] = {
            "rope_theta": theta,
            "rope_scaling": None if rope_type == "default" else rest,
            "rope_parameters": params,
        }
        if "partial_rotary_factor" in params:  # 4.x reads it at the top level
            fields["partial_rotary_factor"] = params["partial_rotary_factor"]
        return fields
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        return {}
    scaling = getattr(config, "rope_scaling", None)
    params = dict(scaling or {})
    params.setdefault("rope_type", params.get("type", "default"))
    params["rope_theta"] = theta
    return {"rope_theta": theta, "rope_scaling": scaling, "rope_parameters": params}


def get_rope_theta(config: Any) -> float:
    """The RoPE base of ``config`` (from ``rope_parameters`` when present, else ``rope_theta``)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        raise ValueError(f"config of type {type(config).__name__} has no RoPE base (rope_theta)")
    return float(theta)


def set_config_rope_theta(config: Any, theta: float) -> None:
    """Write ``theta`` into every place the installed transformers reads the RoPE base from."""
    theta = _check_theta(theta)
    params = getattr(config, "rope_parameters", None)
    wrote = False
    if isinstance(params, dict):
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"only plain RoPE can be rebased, config has rope_type={params['rope_type']!r}")
        params["rope_theta"] = theta
        wrote = True
    if getattr(config, "rope_theta", None) is not None:
        config.rope_theta = theta
        wrote = True
    if not wrote:
        raise ValueError(f"config of type {type(config).__name__} has no RoPE base (rope_theta)")


def set_rope_theta(model: torch.nn.Module, theta: float) -> None:
    """Rebase the model's RoPE to ``theta`` in place (config and rotary tables), e.g. 1e4 -> 1e6.

    The inverse frequencies are non-persistent buffers computed from the config when the rotary module is
    built, so changing the config alone would not change the running model: every ``*RotaryEmbedding`` module
    is rebuilt from the updated config (same constructor the model used, so any version's RoPE code applies)
    on the device of its old buffer. ``save_model`` then writes the new base into config.json.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("set_rope_theta needs a transformers model with a .config")
    rotary = [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq")
    ]
    if not rotary:
        raise ValueError(f"model of type {type(model).__name__} has no rotary embedding module")
    set_config_rope_theta(config, theta)
    for name, module in rotary:
        fresh = type(module)(config=module.config if hasattr(module, "config") else config)
        fresh.to(module.inv_freq.device)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, fresh)
