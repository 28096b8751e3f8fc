"""Process group, device and model wrapping for ``torchrun`` (DDP or FSDP2); a no-op in one process.

Parallelism lives here, not in the model or the stages: a stage builds a plain ``nn.Module`` and calls
``wrap``. Gradients are averaged by DDP/FSDP, so the losses are scaled to give the global token mean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init() -> Dist:
    """Join the ``torchrun`` process group (gloo on CPU, NCCL on GPU) when launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return Dist(rank, world, local, device)


def close(d: Dist) -> None:
    if d.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def wrap(module: nn.Module, d: Dist, *, fsdp: bool) -> nn.Module:
    """DDP (or FSDP2 ``fully_shard`` per decoder layer and at the root) across the process group."""
    if not d.enabled:
        return module
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        # The decoder layers of the wrapped causal LM (``ShapedLMLoss.model.get_decoder().layers``).
        inner = getattr(module, "model", module)
        decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else inner
        for layer in getattr(decoder, "layers", None) or []:
            fully_shard(layer)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's decision, for every rank (e.g. whether to stop after a signal)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    tdist.broadcast(t, 0)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.enabled:
        tdist.barrier()
