"""``solve``: the one entry point that layers call."""

from __future__ import annotations

import torch

from .backends import select_scan
from .config import NewtonConfig, SolveInfo
from .function import ParallelSolve
from .inputs import check_inputs, check_options
from .sequential import sequential_solve


def solve(cell, x: torch.Tensor, h0: torch.Tensor | None = None, *, mode: str = "auto",
          newton: NewtonConfig | None = None, resets: torch.Tensor | None = None,
          cu_seqlens: torch.Tensor | None = None, backend: str = "auto"):
    """Apply ``cell`` over a whole sequence.

    Args:
        cell: a :class:`pararnn.Cell`.
        x: ``(B, T, cell.input_size)``.
        h0: initial state ``(B, N)`` (``(S, N)``, one per sequence, with ``cu_seqlens``);
            zeros if None.
        mode: ``"sequential"`` (step loop), ``"parallel"`` (Newton + scan) or ``"auto"``.
        newton: :class:`NewtonConfig` for the parallel mode (default ``NewtonConfig()``).
        resets: optional bool ``(B, T)``; True where the state restarts from ``h0``.
        cu_seqlens: optional cumulative lengths ``(S + 1,)`` of sequences packed in
            batch 1, as in flash-attention; each sequence starts from its own ``h0``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.

    Returns:
        ``(states, h_n, info)``: all states ``(B, T, N)`` in the dtype of ``x``, the final
        state of each sequence, and a :class:`SolveInfo`.
    """
    config = check_options(mode, newton, backend)
    dtype, sequences = check_inputs(cell, x, h0, resets, cu_seqlens)
    out_dtype = x.dtype
    n_init = x.shape[0] if sequences.ends is None else sequences.ends.numel()
    xc = x.to(dtype)
    h0c = xc.new_zeros(n_init, cell.state_size) if h0 is None else h0.to(dtype)

    if mode == "auto":
        mode = "sequential" if x.shape[1] == 1 else "parallel"

    with torch.autocast(x.device.type, enabled=False):
        if mode == "sequential":
            states = sequential_solve(cell, xc, h0c, sequences)
            info = SolveInfo(mode="sequential", backend="torch")
        else:
            linear_solver, name = select_scan(cell.structure, x.device, dtype, backend)
            info_out: list[SolveInfo] = []
            states = ParallelSolve.apply(cell, sequences, config, linear_solver, name, info_out,
                                         xc, h0c, *cell.parameters())
            info = info_out[0]
    states = states.to(out_dtype)
    return states, sequences.final_states(states), info
