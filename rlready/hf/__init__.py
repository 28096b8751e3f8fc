"""The shaped objective inside the Hugging Face tools: transformers' Trainer, TRL and lm-evaluation-harness.

- ``shaped_loss_func``: a ``compute_loss_func`` for ``transformers.Trainer`` and TRL's ``SFTTrainer``.
- ``apply_shaped_loss`` / ``remove_shaped_loss`` / ``shaped_loss``: patch one model instance so that a forward
  with labels returns the fused shaped loss (no logits); ``ShapedLossCallback`` advances scheduled knobs.
- ``grpo_config`` and ``reward_function`` (``arithmetic_reward``, ``gsm8k_reward``, ``math_reward``): TRL's
  ``GRPOTrainer`` with the paper's RL recipe and the rewards of ``rlready rl``; ``synthetic_prompts`` /
  ``jsonl_prompts`` give its dataset rows.
- ``export_lm_eval``: lm-evaluation-harness tasks on local JSONL (``rlready export-lm-eval``).

transformers is needed by the loss bridges, ``trl`` by the GRPO helpers (``pip install "rlready[trl]"``) and
``lm-eval`` only to run the exported tasks (``pip install "rlready[lmeval]"``).
"""

from __future__ import annotations

from rlready._lazy import lazy_exports

# Exports resolve on first use (rlready/_lazy.py): importing the package imports neither torch nor TRL.
_EXPORTS = {
    "ShapedLoss": "rlready.hf.loss",
    "ShapedLossCallback": "rlready.hf.loss",
    "ShapedLossFunc": "rlready.hf.loss",
    "apply_shaped_loss": "rlready.hf.loss",
    "remove_shaped_loss": "rlready.hf.loss",
    "shaped_loss": "rlready.hf.loss",
    "shaped_loss_func": "rlready.hf.loss",
    "GRPO_RECIPE": "rlready.hf.grpo",
    "RewardFunction": "rlready.hf.grpo",
    "arithmetic_reward": "rlready.hf.grpo",
    "grpo_config": "rlready.hf.grpo",
    "gsm8k_reward": "rlready.hf.grpo",
    "jsonl_prompts": "rlready.hf.grpo",
    "math_reward": "rlready.hf.grpo",
    "reward_function": "rlready.hf.grpo",
    "synthetic_prompts": "rlready.hf.grpo",
    "export_lm_eval": "rlready.hf.lmeval_tasks",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
