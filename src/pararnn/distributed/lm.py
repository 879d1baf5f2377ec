"""Context-parallel language models: a (data x context) device mesh, time chunks, and the
ParaRNN LM's layers switched to their context-parallel forms.

With ``pararnn train --context-parallel K`` under torchrun, the ``W`` processes form a
``(W / K) x K`` mesh: the ``K`` ranks of a context group read the same sequences and each
keeps its contiguous ``seq_len / K`` tokens; DDP / FSDP2 run over all ``W`` ranks (every
rank's loss is the mean over its equally many tokens, so the averaged gradient is the
gradient of the mean over all tokens).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .layer import context_parallel_forward


@dataclass
class ContextMesh:
    """Where this process sits in the (data x context) mesh."""

    size: int  # K: ranks that share one sequence
    rank: int  # this rank's chunk index in its context group
    group: dist.ProcessGroup
    data_rank: int  # index of this context group among the data-parallel replicas
    data_world: int

    def chunk(self, tensor: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's contiguous piece of ``tensor`` along ``dim`` (the time axis)."""
        return time_chunk(tensor, self.rank, self.size, dim)


def time_chunk(tensor: torch.Tensor, rank: int, size: int, dim: int = 1) -> torch.Tensor:
    """Piece ``rank`` of ``size`` contiguous pieces of ``tensor`` along ``dim``; lengths differ
    by at most one (the first ``T % size`` pieces are one longer), every piece non-empty."""
    steps = tensor.shape[dim]
    if not 0 <= rank < size or steps < size:
        raise ValueError(f"cannot take piece {rank} of {size} from a time axis of length {steps}")
    base, extra = divmod(steps, size)
    start = rank * base + min(rank, extra)
    return tensor.narrow(dim, start, base + (rank < extra))


def init_context_mesh(context_size: int, device_type: str) -> ContextMesh:
    """Split the initialised world into a ``(world / K) x K`` (data x context) device mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 1:
        raise ValueError(f"context_size must be a positive int, got {context_size!r}")
    if world % context_size:
        raise ValueError(f"--context-parallel {context_size} must divide the number of processes ({world})")
    mesh = init_device_mesh(device_type, (world // context_size, context_size),
                            mesh_dim_names=("data", "context"))
    return ContextMesh(size=context_size, rank=mesh.get_local_rank("context"),
                       group=mesh.get_group("context"), data_rank=mesh.get_local_rank("data"),
                       data_world=world // context_size)


# Boundary tolerance of ``pararnn train --context-parallel``: float32 rounding of O(1)
# states; a contractive cell meets it in 2-3 rounds whatever K (all K rounds otherwise).
TRAIN_BOUNDARY_TOL = 1e-5


def context_layout(context_size: int, rank: int, world: int, device_type: str) -> ContextMesh:
    """The mesh for a training run: ``context_size == 1`` is plain data parallelism (no
    context group; every rank keeps whole sequences), otherwise :func:`init_context_mesh`."""
    if context_size == 1:
        return ContextMesh(size=1, rank=0, group=None, data_rank=rank, data_world=world)
    if world == 1:
        raise ValueError(f"--context-parallel {context_size} needs {context_size} (or a multiple) "
                         "processes: launch with torchrun")
    return init_context_mesh(context_size, device_type)


class _HaloExchange(torch.autograd.Function):
    """Each rank receives the previous rank's last steps (zeros on rank 0); the gradient of
    what it received goes back to that rank. One all-gather each way."""

    @staticmethod
    def forward(ctx, tail, group):
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        parts = [torch.empty_like(tail) for _ in range(size)]
        dist.all_gather(parts, tail.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.size = group, rank, size
        return parts[rank - 1] if rank > 0 else torch.zeros_like(tail)

    @staticmethod
    def backward(ctx, grad):
        parts = [torch.empty_like(grad) for _ in range(ctx.size)]
        dist.all_gather(parts, grad.contiguous(), group=ctx.group)
        return (parts[ctx.rank + 1] if ctx.rank + 1 < ctx.size else torch.zeros_like(grad)), None


def _conv_chunk_forward(conv: nn.Module, group, x: torch.Tensor, cache: dict | None = None,
                        key: str = "conv", silu: bool = False) -> torch.Tensor:
    """The causal conv on a time chunk: the previous chunk's last ``k - 1`` inputs are its past."""
    if cache is not None:
        raise ValueError("decoding with caches is not context-parallel; use the model unsplit")
    halo = conv.kernel_size - 1
    original = type(conv).forward
    if halo == 0:
        return original(conv, x, silu=silu)
    if x.shape[1] < halo:
        raise ValueError(f"each time chunk needs at least {halo} steps for the causal conv "
                         f"(kernel {conv.kernel_size}), got {x.shape[1]}")
    past = _HaloExchange.apply(x[:, -halo:], group)
    # the conv reads its past inputs from a decode cache: hand it the halo that way
    return original(conv, x, {key: past.transpose(1, 2)}, key, silu=silu)


def _rnn_chunk_forward(layer: nn.Module, group, boundary_tol, x, state=None):
    output, final, _ = context_parallel_forward(layer, x, state, group=group, boundary_tol=boundary_tol)
    return output, final


def enable_context_parallel(model: nn.Module, group: dist.ProcessGroup | None = None, *,
                            boundary_tol: float | None = None) -> nn.Module:
    """Make a ParaGRU/ParaLSTM :class:`pararnn.models.LanguageModel` run on time chunks.

    Afterwards ``model(x_k, y_k)`` on rank ``k`` of ``group`` takes that rank's chunk of
    the tokens. Each mixer's recurrent layer goes through the context-parallel solve and
    its causal conv (the paper block) receives the previous chunk's last ``k - 1`` inputs.
    The layers' forward methods are replaced on the instances, so parameter names, state
    dicts and checkpoints stay those of the plain model. Transformer and Mamba2 models
    raise a ValueError (their mixers are not split along time here).
    """
    from ..models.rnn_mixer import ParaRNNMixer

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"model must be a pararnn LanguageModel, got {type(model).__name__}")
    for block in blocks:
        if not isinstance(block.mixer, ParaRNNMixer):
            raise ValueError(
                f"context parallelism supports the paragru and paralstm models only, without "
                f"attention blocks (attn_every); this model has a {type(block.mixer).__name__} "
                f"mixer (attention and Mamba2 are not split along time)")
    for block in blocks:
        mixer = block.mixer
        mixer.rnn.forward = functools.partial(_rnn_chunk_forward, mixer.rnn, group, boundary_tol)
        if mixer.conv is not None:
            mixer.conv.forward = functools.partial(_conv_chunk_forward, mixer.conv, group)
    return model
