"""Models: Qwen3 / Qwen3-MoE presets as transformers configs, HF-directory I/O, and the fused-loss hook.

``import rlready.models`` does not import transformers; each function imports it when called.
"""

from rlready.models.heads import HeadInputs, final_hidden_and_head
from rlready.models.io import (
    build_model,
    check_safetensors,
    check_tokenizer_fits,
    load_model,
    load_tokenizer,
    save_model,
)
from rlready.models.presets import PRESETS, Preset, build_config, count_parameters
from rlready.models.rope import get_rope_theta, set_rope_theta

__all__ = [
    "PRESETS",
    "HeadInputs",
    "Preset",
    "build_config",
    "build_model",
    "check_safetensors",
    "check_tokenizer_fits",
    "count_parameters",
    "final_hidden_and_head",
    "get_rope_theta",
    "load_model",
    "load_tokenizer",
    "save_model",
    "set_rope_theta",
]
