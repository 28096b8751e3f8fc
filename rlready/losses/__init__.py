"""The reward-shaped next-token objective (PAPER.md §1–3).

- ``shaped_cross_entropy``: on logits ``[..., V]``.
- ``fused_linear_shaped_cross_entropy``: on final hidden states and the LM head, never holding ``[N, V]``.
- ``ShapedCrossEntropy`` / ``FusedLinearShapedCrossEntropy``: modules whose knobs may be schedules.
- ``TokenWeighting`` and ``schemes``: CE, the paper's shaping, label smoothing, focal, DFT as one scheme.
"""

from . import schemes
from .fused_linear import fused_linear_shaped_cross_entropy
from .module import FusedLinearShapedCrossEntropy, ShapedCrossEntropy
from .schedules import Constant, Cosine, Linear, Schedule, parse_schedule
from .schemes import TokenWeighting, cross_entropy, dft, focal, label_smoothing, shaped
from .shaped_ce import shaped_cross_entropy
from .stats import LossStats

__all__ = [
    "Constant",
    "Cosine",
    "FusedLinearShapedCrossEntropy",
    "Linear",
    "LossStats",
    "Schedule",
    "ShapedCrossEntropy",
    "TokenWeighting",
    "cross_entropy",
    "dft",
    "focal",
    "fused_linear_shaped_cross_entropy",
    "label_smoothing",
    "parse_schedule",
    "schemes",
    "shaped",
    "shaped_cross_entropy",
]
