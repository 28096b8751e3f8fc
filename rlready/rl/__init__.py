"""RL building blocks: policy loss, group advantages, dynamic sampling and verifiable rewards.

Exports resolve on first use (rlready/_lazy.py) so that reward worker processes, which import
``rlready.rl.rewards`` to unpickle their reward function, do not pay for importing torch.
"""

from __future__ import annotations

from rlready._lazy import lazy_exports

_EXPORTS = {"group_advantages": "rlready.rl.advantages", "policy_loss": "rlready.rl.loss"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
