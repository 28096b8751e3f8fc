"""Input checks, run once per call outside the row math (shapes are metadata: no host sync)."""

from __future__ import annotations

import torch

from .schemes import TokenWeighting

REDUCTIONS = ("mean", "sum", "none")


def resolve_weighting(
    weighting: TokenWeighting | None, beta: float, lam_head: float, lam_tail: float, k: int
) -> TokenWeighting:
    if weighting is None:
        return TokenWeighting(beta=beta, lam_head=lam_head, lam_tail=lam_tail, k=k)
    if not isinstance(weighting, TokenWeighting):
        raise ValueError(f"weighting must be a TokenWeighting, got {type(weighting).__name__}")
    return weighting


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_targets(targets: torch.Tensor, lead_shape: torch.Size, V: int, ignore_index: int) -> None:
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    if targets.shape != lead_shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match the leading shape {tuple(lead_shape)}"
        )
    # The range check needs the values; on CPU that costs no device sync. On accelerators it is skipped
    # (it would stall the stream every step); gather/scatter there fail on out-of-range indices instead.
    if targets.device.type == "cpu" and targets.numel() and not torch.compiler.is_compiling():
        bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
        if bool(bad.any()):
            value = int(targets[bad][0])
            raise ValueError(f"target {value} is outside [0, {V}) and is not ignore_index={ignore_index}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if not dtype.is_floating_point:
        raise ValueError(f"logits/hidden must be floating point, got {dtype}")
    return torch.float64 if dtype == torch.float64 else torch.float32
