"""The reward-shaped next-token objective (docs/method.md §2–4).

- ``shaped_cross_entropy``: on logits ``[..., V]``.
- ``fused_linear_shaped_cross_entropy``: on final hidden states and the LM head, never holding ``[N, V]``.
- ``ShapedCrossEntropy`` / ``FusedLinearShapedCrossEntropy``: modules whose knobs may be schedules.
- ``TokenWeighting`` and ``schemes``: CE, the paper's shaping, label smoothing, focal, DFT as one scheme.
"""

from __future__ import annotations

from rlready._lazy import lazy_exports

# Exports resolve on first use (rlready/_lazy.py): importing the package does not import torch.
_EXPORTS = {
    "schemes": "rlready.losses.schemes",
    "fused_linear_shaped_cross_entropy": "rlready.losses.fused_linear",
    "FusedLinearShapedCrossEntropy": "rlready.losses.module",
    "ShapedCrossEntropy": "rlready.losses.module",
    "shaped_cross_entropy": "rlready.losses.shaped_ce",
    "LossStats": "rlready.losses.stats",
    "Constant": "rlready.losses.schedules",
    "Cosine": "rlready.losses.schedules",
    "Linear": "rlready.losses.schedules",
    "Schedule": "rlready.losses.schedules",
    "parse_schedule": "rlready.losses.schedules",
    "TokenWeighting": "rlready.losses.schemes",
    "cross_entropy": "rlready.losses.schemes",
    "dft": "rlready.losses.schemes",
    "focal": "rlready.losses.schemes",
    "label_smoothing": "rlready.losses.schemes",
    "shaped": "rlready.losses.schemes",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
