"""``ContextParallel``: run an ``RNN`` / ``ParaGRU`` / ``ParaLSTM`` layer on one time chunk."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..cells import ParaLSTMCell
from ..layers import RNN, ParaGRU, ParaLSTM
from .context import ContextSolveInfo, context_parallel_solve

LAYERS = (RNN, ParaGRU, ParaLSTM)


def context_parallel_forward(layer: nn.Module, x: torch.Tensor, state=None, *,
                             group: dist.ProcessGroup | None = None, resets: torch.Tensor | None = None,
                             boundary_tol: float | None = None):
    """``layer(x, state, resets=resets)`` where ``x`` is this rank's chunk of the sequence.

    Returns what the layer returns — ``(output, h_n)``, or ``(output, (h_n, c_n))`` for
    :class:`pararnn.ParaLSTM` — with ``output`` this chunk's ``(B, T_k, hidden)`` and the
    final state that of the whole sequence, on every rank (see
    :mod:`pararnn.distributed.context` for the gradient conventions), plus the record of
    the solve as the third element.
    """
    if not isinstance(layer, LAYERS):
        raise TypeError(f"layer must be a pararnn RNN, ParaGRU or ParaLSTM, got {type(layer).__name__}")
    if not layer.batch_first:
        raise ValueError("context parallelism needs a batch_first=True layer (chunks are split along dim 1)")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be this rank's chunk (batch, time, features), got {shape}")
    h0 = state
    if isinstance(layer, ParaLSTM) and state is not None:
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise TypeError("state must be a tuple (h0, c0) or None for ParaLSTM")
        h0 = ParaLSTMCell.pack_state(*state)
    u = x if isinstance(layer, RNN) else layer.projection(x)
    states, h_n, info = context_parallel_solve(
        layer.cell, u, h0, group=group, resets=resets, mode=layer.mode, newton=layer.newton,
        backend=layer.backend, boundary_tol=boundary_tol)
    if isinstance(layer, ParaLSTM):
        output, _ = ParaLSTMCell.unpack_state(states)
        return output, ParaLSTMCell.unpack_state(h_n), info
    return states, h_n, info


class ContextParallel(nn.Module):
    """Wrap a ``RNN`` / ``ParaGRU`` / ``ParaLSTM`` so that each rank of ``group`` runs its
    contiguous time chunk of one sequence.

    ``output, h_n = ContextParallel(layer, group)(x_k, h0=None, *, resets=None)`` with
    ``x_k`` rank ``k``'s chunk ``(B, T_k, input_size)``; ``output`` is that chunk's
    states and ``h_n`` (``(h_n, c_n)`` for ParaLSTM) the whole sequence's final state,
    returned on every rank. ``last_solve`` holds the :class:`ContextSolveInfo` of the last
    call. Gradients: see :mod:`pararnn.distributed.context` (parameter gradients are this
    rank's part: all-reduce them over the group, as DDP does).

    Args:
        layer: the layer; its ``mode``, ``newton`` and ``backend`` drive every chunk solve.
        group: the context process group (default: the whole world).
        boundary_tol: see :func:`pararnn.distributed.context_parallel_solve`.
    """

    def __init__(self, layer: nn.Module, group: dist.ProcessGroup | None = None, *,
                 boundary_tol: float | None = None) -> None:
        super().__init__()
        if not isinstance(layer, LAYERS):
            raise TypeError(f"layer must be a pararnn RNN, ParaGRU or ParaLSTM, got {type(layer).__name__}")
        self.layer = layer
        self.group = group
        self.boundary_tol = boundary_tol
        self.last_solve: ContextSolveInfo | None = None

    def forward(self, x, state=None, *, resets=None):
        output, final, self.last_solve = context_parallel_forward(
            self.layer, x, state, group=self.group, resets=resets, boundary_tol=self.boundary_tol)
        return output, final
