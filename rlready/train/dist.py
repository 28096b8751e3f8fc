"""Process group, device and model wrapping for ``torchrun`` (DDP or FSDP2); a no-op in one process.

Parallelism lives here, not in the model or the stages: a stage builds a plain ``nn.Module`` and calls
``wrap``. Gradients are averaged by DDP/FSDP, so the losses are scaled to give the global token mean.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's (picklable) ``obj``, in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out


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


def model_device(d: Dist, *, fsdp: bool) -> torch.device:
    """Where a stage builds (or loads) its model before ``wrap``.

    Under FSDP only rank 0 holds the whole model, on CPU; the other ranks build its meta-device skeleton
    and receive their shards from rank 0 in ``wrap``, so no GPU and no other process ever holds the whole
    model (what torchtitan and accelerate's ``cpu_ram_efficient_loading`` do for models larger than a device).
    """
    if fsdp and d.enabled:
        return torch.device("cpu") if d.is_main else torch.device("meta")
    return d.device


def wrap(module: nn.Module, d: Dist, *, fsdp: bool) -> nn.Module:
    """DDP (or FSDP2 ``fully_shard`` per decoder layer and at the root) across the process group.

    Under FSDP ``module`` is built on ``model_device``: the whole model on rank 0, meta elsewhere.
    """
    if not d.enabled:
        return module
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import fully_shard

        # Rank 0's weights and buffers (rotary frequencies are non-persistent buffers, outside the state dict).
        full = module.state_dict() if d.is_main else {}
        buffers = dict(module.named_buffers()) if d.is_main else {}
        # The decoder layers of the wrapped causal LM (``ShapedLMLoss.model.get_decoder().layers``).
        inner = getattr(module, "model", module)
        decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else inner
        for layer in getattr(decoder, "layers", None) or []:
            fully_shard(layer)
        fully_shard(module)
        module.to_empty(device=d.device)
        set_model_state_dict(
            module, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        )
        with torch.no_grad():
            for name, buf in module.named_buffers():
                if d.is_main:
                    buf.copy_(buffers[name])
                tdist.broadcast(buf, src=0)
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def full_model_state(model: nn.Module, d: Dist, *, fsdp: bool) -> dict[str, torch.Tensor]:
    """The whole ``model.state_dict()``, as an unsharded model gives it.

    Under FSDP every rank must call it (the shards are gathered); rank 0 gets the tensors on CPU, the other
    ranks an empty dict.
    """
    if not (fsdp and d.enabled):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def replicate_weights(model: nn.Module, copy: nn.Module) -> None:
    """Copy the whole weights of the FSDP-sharded ``model`` into ``copy``, an unsharded model of the same
    architecture on every process (collective). One parameter at a time is gathered, copied (cast to the
    copy's dtype) and freed, so the peak is one whole tensor, not a whole fp32 model."""
    from torch.distributed.tensor import DTensor

    target = dict(copy.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            target[name].copy_(param.full_tensor() if isinstance(param, DTensor) else param)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, d: Dist, *, fsdp: bool) -> dict:
    """The whole optimizer state in ``optimizer.state_dict()``'s format (parameters numbered in the order
    of ``param_groups``), so that a checkpoint is the same with and without FSDP.

    Collective under FSDP, like ``full_model_state``: rank 0 gets the gathered state on CPU, the other ranks
    an empty dict.
    """
    # No state yet (every step so far was skipped): nothing is sharded, and the library would create the
    # state with a zero-learning-rate step, which counts as an Adam step.
    if not (fsdp and d.enabled) or not optimizer.state:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    full = get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not d.is_main:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    return _rekey(full, index)  # keyed by parameter name -> by number


def load_optimizer_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    read: Callable[[], dict[str, Any]],
    d: Dist,
    *,
    fsdp: bool,
) -> None:
    """Load a state of ``full_optimizer_state``'s format, which ``read()`` returns.

    Under FSDP (collective) only rank 0 reads it; the library broadcasts each tensor and every rank keeps
    its shard.
    """
    if not (fsdp and d.enabled):
        optimizer.load_state_dict(read())
        return
    state = read() if d.is_main else {}
    if not broadcast_flag(bool(state.get("state")), d):  # no state yet: only the param groups
        optimizer.load_state_dict(state if d.is_main else read())
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    full: dict[str, Any] = {}
    if d.is_main:  # keyed by number -> by parameter name, as the library expects
        full = _rekey(state, _param_names(model, optimizer))
    set_optimizer_state_dict(
        model, optimizer, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )


def _rekey(state: dict[str, Any], key: Any) -> dict[str, Any]:
    """An optimizer state dict with every parameter key ``p`` (in ``state`` and in each group's ``params``)
    replaced by ``key[p]``: numbers <-> parameter names."""
    return {
        "state": {key[p]: v for p, v in state["state"].items()},
        "param_groups": [{**g, "params": [key[p] for p in g["params"]]} for g in state["param_groups"]],
    }


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimizer's parameters in the order ``optimizer.state_dict()`` numbers them (a tied
    parameter under its first name, as ``torch.distributed.checkpoint.state_dict`` names it)."""
    names = {p: n for n, p in model.named_parameters()}
    return [names[p] for g in optimizer.param_groups for p in g["params"]]


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's decision, for every rank (e.g. whether to stop after a signal)."""
    if not d.enabled:
        return flag
    # On the process group's device: NCCL has no CPU tensors.
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=d.device)
    tdist.broadcast(t, 0)
    return bool(t.item())


def any_flag(flag: bool, d: Dist) -> bool:
    """Whether ``flag`` is set on any rank (e.g. a signal that reached one node only), for every rank."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=d.device)  # NCCL has no CPU tensors
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: Any, d: Dist) -> Any:
    """Rank 0's (picklable) ``obj``, for every rank."""
    if not d.enabled:
        return obj
    box = [obj if d.is_main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(d: Dist) -> None:
    if d.enabled:
        tdist.barrier()
