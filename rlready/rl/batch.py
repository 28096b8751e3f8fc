"""A rollout batch for the GRPO update: prompt groups of scored completions, packed into padded tensors,
and the training forward's per-token log-probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rlready.rl.rollout import Completion
from rlready.rl.tasks import Task

__all__ = ["Group", "pack", "token_logprobs"]


@dataclass
class Group:
    task: Task
    completions: list[Completion]
    correct: list[float]  # the verifier's reward
    rewards: list[float]  # what GRPO optimises: correct + overlong penalty


def pack(groups: Sequence[Group], pad_id: int, mask_truncated: bool) -> tuple[torch.Tensor, ...]:
    """Right-padded ``prompt + response`` rows, attention mask, and the mask of response targets ``[B, T-1]``."""
    rows = [(c.prompt_ids, c.ids, c.truncated) for g in groups for c in g.completions]
    width = max(len(p) + len(r) for p, r, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for i, (p, r, truncated) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = 1
        if not (mask_truncated and truncated):
            loss_mask[i, len(p) - 1 : len(p) + len(r) - 1] = True  # target positions of response tokens
    return ids, attn, loss_mask


def token_logprobs(
    model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and the entropy of the policy there, both ``[B, T-1]``.

    Logits are divided by the sampling temperature so that the ratio compares the distribution that was
    actually sampled from.
    """
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
