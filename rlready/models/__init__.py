"""Models: Qwen3 / Qwen3-MoE presets as transformers configs, HF-directory I/O, and the fused-loss hook."""

from __future__ import annotations

from rlready._lazy import lazy_exports

# Exports resolve on first use (rlready/_lazy.py): importing the package does not import torch.
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
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
