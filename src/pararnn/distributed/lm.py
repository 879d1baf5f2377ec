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
import torch.nn.functional as F
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


class _GatherChunks(torch.autograd.Function):
    """Every rank's ``(B, H, L_r, D)`` keys or values, padded to the longest chunk ``L`` and
    stacked ``(K, B, H, L, D)``. Backward: the gradient of this rank's chunk is the sum of
    what every rank's attention sent back to it; an all-reduce of the whole stack gives it
    (gloo has no reduce-scatter, and the stack is no larger than the sequence's keys)."""

    @staticmethod
    def forward(ctx, chunk, longest, group):
        padded = F.pad(chunk, (0, 0, 0, longest - chunk.shape[2])).contiguous()
        parts = [torch.empty_like(padded) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, padded, group=group)
        ctx.group, ctx.rank, ctx.steps = group, dist.get_rank(group), chunk.shape[2]
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank, :, :, :ctx.steps], None, None


def _attention_chunk_forward(attn: nn.Module, group, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
    """Causal attention for a time chunk (a hybrid's attention blocks): this chunk's queries
    attend to the keys of every earlier chunk and its own, gathered from the ranks. Ranks
    later in the sequence do more of the work (the last one attends to all keys)."""
    if cache is not None:
        raise ValueError("decoding with caches is not context-parallel; use the model unsplit")
    B, T, D = x.shape
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    # chunks may differ by one step (time_chunk): every rank needs every chunk's length
    lengths = [torch.empty(1, dtype=torch.long, device=x.device) for _ in range(size)]
    dist.all_gather(lengths, torch.tensor([T], device=x.device), group=group)
    lengths = torch.cat(lengths).tolist()
    start = sum(lengths[:rank])
    positions = torch.arange(start, start + T, device=x.device)
    q, k, v = attn.rotated_qkv(x, positions)
    keys, values = (_GatherChunks.apply(t, max(lengths), group) for t in (k, v))
    keys = torch.cat([keys[r, :, :, :lengths[r]] for r in range(rank + 1)], dim=2)
    values = torch.cat([values[r, :, :, :lengths[r]] for r in range(rank + 1)], dim=2)
    visible = torch.arange(start + T, device=x.device)[None, :] <= positions[:, None]
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
    return attn.out_proj(y.transpose(1, 2).reshape(B, T, D))


def _rnn_chunk_forward(layer: nn.Module, group, boundary_tol, x, state=None):
    output, final, _ = context_parallel_forward(layer, x, state, group=group, boundary_tol=boundary_tol)
    return output, final


def enable_context_parallel(model: nn.Module, group: dist.ProcessGroup | None = None, *,
                            boundary_tol: float | None = None) -> nn.Module:
    """Make a ParaGRU/ParaLSTM :class:`pararnn.models.LanguageModel` run on time chunks.

    Afterwards ``model(x_k, y_k)`` on rank ``k`` of ``group`` takes that rank's chunk of
    the tokens. Each mixer's recurrent layer goes through the context-parallel solve and
    its causal conv (the paper block) receives the previous chunk's last ``k - 1`` inputs;
    a hybrid's attention blocks gather the keys and values of the chunks before their own.
    The layers' forward methods are replaced on the instances, so parameter names, state
    dicts and checkpoints stay those of the plain model. Transformer and Mamba2 models
    raise a ValueError (context parallelism is for the recurrent models here).
    """
    from ..models.rnn_mixer import ParaRNNMixer
    from ..models.transformer import Attention

    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"model must be a pararnn LanguageModel, got {type(model).__name__}")
    mixers = [block.mixer for block in blocks]
    if not any(isinstance(m, ParaRNNMixer) for m in mixers) or not all(
            isinstance(m, (ParaRNNMixer, Attention)) for m in mixers):
        kinds = sorted({type(m).__name__ for m in mixers})
        raise ValueError(f"context parallelism supports the paragru and paralstm models only "
                         f"(hybrids included); this model's mixers are {', '.join(kinds)}")
    for mixer in mixers:
        if isinstance(mixer, Attention):
            mixer.forward = functools.partial(_attention_chunk_forward, mixer, group)
            continue
        mixer.rnn.forward = functools.partial(_rnn_chunk_forward, mixer.rnn, group, boundary_tol)
        if mixer.conv is not None:
            mixer.conv.forward = functools.partial(_conv_chunk_forward, mixer.conv, group)
    return model
