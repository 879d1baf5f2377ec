"""Process groups, DDP / FSDP2 wrapping and full state dicts.

``pararnn train`` is the same command with or without ``torchrun``: when torchrun's
environment (``WORLD_SIZE`` > 1) is present, it joins a process group (NCCL on GPUs,
gloo on CPU) and wraps the model in DistributedDataParallel, or, with ``--fsdp``, shards
every block and then the whole model with FSDP2 (``torch.distributed.fsdp.fully_shard``).
Checkpoints always hold the full, unsharded weights and optimizer state.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:  # torch names the device types it knows
        raise ValueError(f"--device {name!r} is not a device: {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA device is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device_name))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device)


def wait_for_all(info: DistInfo) -> None:
    """Barrier at the end of a run: a rank that tears its process group down while the
    main rank still writes its last checkpoint can abort inside gloo (seen on CPU as
    'terminate called without an active exception')."""
    if info.world > 1 and dist.is_initialized():
        dist.barrier()


def close_distributed(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, fsdp: bool) -> nn.Module:
    if info.world == 1 and not fsdp:
        return model
    if fsdp:
        if info.world == 1:
            raise ValueError("--fsdp needs several processes: launch with torchrun")
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def no_grad_sync(model: nn.Module, skip: bool):
    """Context for a micro-step whose gradients need no all-reduce yet (accumulation)."""
    if not skip:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2

        @contextlib.contextmanager
        def fsdp_no_sync():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)
        return fsdp_no_sync()
    return contextlib.nullcontext()


def _dcp_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module, fsdp: bool) -> dict:
    """Unsharded weights (on CPU under FSDP), with names of the unwrapped model."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        return get_model_state_dict(model, options=_dcp_options())
    return model.state_dict()


def full_optimizer_state(model: nn.Module, optimizer, fsdp: bool) -> dict:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer, options=_dcp_options())
    return optimizer.state_dict()


def load_full_state(model: nn.Module, optimizer, model_state: dict, optim_state: dict | None,
                    fsdp: bool) -> None:
    """Load full states (every rank read the same files) into a possibly sharded model."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
        set_model_state_dict(model, model_state, options=_dcp_options())
        if optim_state is not None:
            set_optimizer_state_dict(model, optimizer, _keyed_by_name(model, optimizer, optim_state),
                                     options=_dcp_options())
        return
    model.load_state_dict(model_state)
    if optim_state is not None:
        optimizer.load_state_dict(optim_state)


def _keyed_by_name(model: nn.Module, optimizer, optim_state: dict) -> dict:
    """An optimizer state saved without FSDP (``optimizer.state_dict()``, the parameters
    numbered) keyed by parameter name, as FSDP's loader takes it: the k-th number of a
    saved group is the k-th parameter of the same group now (the groups are built alike).
    A state keyed by name (saved under FSDP) is returned as it is; the plain
    ``optimizer.load_state_dict`` takes either, matching parameters by position."""
    saved_groups = optim_state["param_groups"]
    if not all(isinstance(key, int) for group in saved_groups for key in group["params"]):
        return optim_state
    names = {id(p): name for name, p in model.named_parameters()}
    name_of = {key: names[id(p)] for saved, group in zip(saved_groups, optimizer.param_groups)
               for key, p in zip(saved["params"], group["params"])}
    return {"state": {name_of[key]: value for key, value in optim_state["state"].items()},
            "param_groups": [{**group, "params": [name_of[key] for key in group["params"]]}
                             for group in saved_groups]}


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()
