"""Models: Qwen3 / Qwen3-MoE presets as transformers configs, HF-directory I/O, and the fused-loss hook."""

from __future__ import annotations

import importlib
from typing import Any

# Exports resolve on first use: `import rlready.<pkg>` must not import torch or transformers, so that the
# CLI answers --help and argument errors at once.
_EXPORTS = {
    "HeadInputs": "rlready.models.heads",
    "final_hidden_and_head": "rlready.models.heads",
    "build_model": "rlready.models.io",
    "check_safetensors": "rlready.models.io",
    "check_tokenizer_fits": "rlready.models.io",
    "load_model": "rlready.models.io",
    "load_tokenizer": "rlready.models.io",
    "save_model": "rlready.models.io",
    "PRESETS": "rlready.models.presets",
    "Preset": "rlready.models.presets",
    "build_config": "rlready.models.presets",
    "count_parameters": "rlready.models.presets",
    "get_rope_theta": "rlready.models.rope",
    "set_rope_theta": "rlready.models.rope",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    value = module if _EXPORTS[name].endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
