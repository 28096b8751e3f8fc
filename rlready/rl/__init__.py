"""RL building blocks: policy loss, group advantages, dynamic sampling and verifiable rewards.

Exports are resolved lazily (PEP 562) so that reward worker processes, which import
``rlready.rl.rewards`` to unpickle their reward function, do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlready.rl.advantages import group_advantages
    from rlready.rl.loss import policy_loss

__all__ = ["group_advantages", "policy_loss"]

_EXPORTS = {"group_advantages": "rlready.rl.advantages", "policy_loss": "rlready.rl.loss"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlready.rl' has no attribute {name!r}")
