"""``Head``: what the head selection returns for a block of logit rows (docs/method.md §4.7).

A module of its own so that both producers, ``select`` (the ``torch.topk`` path) and ``head_cpu`` (the numba
kernel), can build it without importing each other.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Head(NamedTuple):
    """The head ``K_t`` of each row and the sums over it that the loss needs."""

    idx: torch.Tensor  # [n, k] columns of the top-k logits, unordered
    p: torch.Tensor  # [n, k] their probabilities
    mass: torch.Tensor  # [n] sum of p over the head
    pz: torch.Tensor  # [n] sum of p z over the head
    z_max: torch.Tensor  # [n] the row maximum (it is in the head)
    p_max: torch.Tensor  # [n] its probability
    in_head: torch.Tensor  # [n] bool: the target is in the head
    pz_all: torch.Tensor | None  # [n] sum of p z over the row, when it came for free (the CPU kernel)
