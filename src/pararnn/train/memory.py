"""Refuse, before building anything, a training run that cannot fit in memory.

Building a 7B model on a laptop takes minutes and then dies inside the allocator; the
need is known from the configuration alone. :func:`check_training_memory` counts the
parameters on the ``meta`` device (no memory is allocated), adds a rough activation
estimate and compares the sum with what the device has free.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

# float32 weights, float32 gradients and AdamW's two float32 moments
STATE_BYTES_PER_PARAM = 4 + 4 + 8
# values per token and layer that the backward keeps (norm inputs, projections, cell
# states, the SwiGLU hidden layer: about 20 x d_model counted by hand for the ParaRNN
# block); 16 keeps the estimate on the low side so that only hopeless runs are refused.
# (On the CPU, the `tiny` models' forward at batch 16 x 256 grew the process by 1.8x
# (ParaGRU, ParaLSTM, Transformer) to 4.4x (Mamba2's PyTorch fallback) this estimate.)
ACTIVATION_VALUES_PER_TOKEN_LAYER = 16


def parameter_count(model_cfg) -> int:
    """Parameters of the model ``model_cfg`` describes, counted without allocating them."""
    from ..models import build_model
    with torch.device("meta"):
        return build_model(model_cfg).num_params()


def training_bytes(model_cfg, *, batch_size: int, seq_len: int, autocast_bf16: bool,
                   shards: int = 1) -> dict:
    """Rough bytes one process needs to train: parameter state (split over ``shards``
    processes under FSDP) and the activations of one micro-batch, logits included."""
    params = parameter_count(model_cfg)
    value_bytes = 2 if autocast_bf16 else 4
    tokens = batch_size * seq_len
    activations = (tokens * model_cfg.n_layers * model_cfg.d_model * ACTIVATION_VALUES_PER_TOKEN_LAYER
                   * value_bytes)
    activations += 2 * tokens * model_cfg.vocab_size * 4  # float32 logits and their gradient
    state = params * STATE_BYTES_PER_PARAM // shards
    return {"params": params, "state": state, "activations": activations, "total": state + activations}


def _cgroup_free_bytes() -> int | None:
    """Memory left under this container's cgroup (v2 or v1) limit, if it has one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        # v1 reports "no limit" as a huge number, v2 as "max"
        if limit.isdigit() and int(limit) < 1 << 60:
            return max(0, int(limit) - usage)
    return None


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: GPU memory on CUDA, available RAM (within the cgroup
    limit) on the CPU; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = None
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        free = int(match.group(1)) * 1024 if match else None
    except OSError:
        pass
    if free is None and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            free = None
    cgroup = _cgroup_free_bytes()
    if cgroup is not None:
        free = cgroup if free is None else min(free, cgroup)
    return free


def check_training_memory(model_cfg, *, model: str, size: str, batch_size: int, seq_len: int,
                          device: torch.device, autocast_bf16: bool, fsdp: bool, world: int) -> None:
    """Raise ValueError (one line, with the numbers) if training cannot fit on ``device``."""
    free = available_bytes(device)
    if free is None:
        return
    need = training_bytes(model_cfg, batch_size=batch_size, seq_len=seq_len,
                          autocast_bf16=autocast_bf16, shards=world if fsdp else 1)
    # processes on one host share its RAM; each GPU process has its own device
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    total = need["total"] * processes
    if total <= free:
        return
    gib = 2.0 ** 30
    per = f" per process x {processes} processes" if processes > 1 else ""
    sharded = f" / {world} FSDP shards" if fsdp and world > 1 else ""
    raise ValueError(
        f"--model {model} --size {size} needs about {total / gib:.1f} GiB to train on {device}{per} "
        f"({need['params']:,} parameters x {STATE_BYTES_PER_PARAM} bytes for float32 weights, gradients "
        f"and AdamW state{sharded} = {need['state'] / gib:.1f} GiB, + roughly "
        f"{need['activations'] / gib:.1f} GiB of activations at --batch-size {batch_size} --seq-len "
        f"{seq_len}), but {device} has {free / gib:.1f} GiB free; choose a smaller --size "
        "(see `pararnn sizes`), shard it over GPUs with --fsdp under torchrun, or lower "
        "--batch-size / --seq-len")
