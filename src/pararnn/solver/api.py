"""``solve``: the one entry point that layers call."""

from __future__ import annotations

import contextlib

import torch

from .._grad import needs_grad
from ..layout import HeadMajor
from .backends import select_fused, select_scan
from .config import NewtonConfig, SolveInfo
from .inputs import check_inputs, check_options
from .newton import (LoopSolve, ParallelSolve, error_update, handle_failure, mask_restarts,
                     newton_solve, sequential_solve, verify_structure,
                     verify_structure_at_states)

# On the CPU (PyTorch path) the step loop beats Newton once a step is this wide
# (batch x state): the loop's per-step overhead is amortised, while Newton makes ~5 cell
# evaluations and 3 scans over the whole sequence, each a pass over memory. Without
# gradients from 512 (ParaGRU, T = 2048, 2 threads: Newton faster at 256, the loop at 512;
# BENCHMARKS.md, "CPU: sequential vs parallel"). With gradients (training: the loop with its adjoint backward,
# LoopSolve, against Newton with the adjoint-scan backward; both backwards linearise the
# cell once) from 512 per intra-op thread: Newton's whole-sequence passes split over the
# threads, the loop's small steps do not (ParaGRU and ParaLSTM, T = 128, 1 thread:
# crossover between 128 and 512). Measured in BENCHMARKS.md ("CPU training path").
# A cell that trains through its compiled C loop (Cell.compiled_loop: ParaGRU/ParaLSTM,
# float32/float64, sequences from t = 0) takes the loop with gradients from 128 per thread:
# its C adjoint beat Newton at every width measured, from 128 (1 thread, B = 8: 2.6-4.7x
# for ParaGRU at 128-1024, 7-17x for ParaLSTM at 256-1024; "CPU training path, round 5").
CPU_SEQUENTIAL_MIN_WIDTH = 512
CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD = 512
CPU_SEQUENTIAL_MIN_WIDTH_GRAD_COMPILED_PER_THREAD = 128


def solve(cell, x: torch.Tensor | HeadMajor, h0: torch.Tensor | None = None, *, mode: str = "auto",
          newton: NewtonConfig | None = None, resets: torch.Tensor | None = None,
          cu_seqlens: torch.Tensor | None = None, backend: str = "auto", hidden: bool = False):
    """Apply ``cell`` over a whole sequence.

    Args:
        cell: a :class:`pararnn.Cell`.
        x: ``(B, T, cell.input_size)``, or a gated cell's pre-activations held head-major
            (:class:`pararnn.layout.HeadMajor`, as a multi-head projection writes them):
            the cell's fused kernels read those in place, every other path takes a
            gate-major copy.
        h0: initial state ``(B, N)`` (``(S, N)``, one per sequence, with ``cu_seqlens``);
            zeros if None.
        mode: ``"sequential"`` (step loop), ``"parallel"`` (Newton + scan) or ``"auto"``:
            sequential for a single step, and on the CPU once ``B * state_size`` is at
            least 512 without gradients, or with them 128 per torch thread where the
            cell trains through its C loop (ParaGRU/ParaLSTM) and 512 per thread
            elsewhere; parallel otherwise (the fused kernels then pick their own
            sequential/segmented plan per shape).
        newton: :class:`NewtonConfig` for the parallel mode (default ``NewtonConfig()``).
        resets: optional bool ``(B, T)``; True where the state restarts from ``h0``.
        cu_seqlens: optional cumulative lengths ``(S + 1,)`` of sequences packed in
            batch 1, as in flash-attention; each sequence starts from its own ``h0``
            (the fused kernels run packed sequences that start from zeros, ``h0=None``).
        backend: ``"auto"`` (Triton kernels on CUDA where they apply, else PyTorch),
            ``"torch"`` or ``"triton"`` (see :mod:`pararnn.solver.backends`).
        hidden: return :meth:`cell.hidden(states) <pararnn.Cell.hidden>` (what a layer
            outputs: ParaLSTM's ``h``) in place of all the states. Training through the C
            loop on the CPU, and the fused kernels of a cell that sets
            ``fused_solver_writes_hidden`` (ParaLSTM's ``h``, ParaGRU's bf16 copy of its
            states), then write it as a contiguous tensor of its own, whose gradient goes
            to their backward as it is (the view's gradient would be a zero-filled one of
            all the states; the cast copy's an fp32 one).

    Returns:
        ``(states, h_n, info)``: all states ``(B, T, N)`` (the hidden ones with ``hidden``)
        in the dtype of ``x``, the final state of each sequence in the compute dtype (float32
        for bfloat16/float16 ``x``, so that feeding it back, e.g. from a decode cache, does
        not round the state), and a :class:`SolveInfo`.
    """
    config = check_options(mode, newton, backend)
    dtype, sequences = check_inputs(cell, x, h0, resets, cu_seqlens)
    out_dtype = x.dtype
    n_init = x.shape[0] if sequences.ends is None else sequences.ends.numel()
    # packed documents (cu_seqlens) that all start from zeros are resets to the kernels;
    # one initial state per document is not in their interface: generic path
    packed_with_h0 = sequences.segment_ids is not None and h0 is not None
    fused = None if packed_with_h0 else select_fused(cell, x, backend)
    auto = mode == "auto"
    if auto:
        mode = _auto_mode(cell, x, h0, fused, sequences)
    takes_fused = fused is not None and (mode == "parallel" or not _needs_grad(cell, x, h0))
    # training through the loop: the adjoint backward instead of autograd's node per op
    # and step (mode="sequential" keeps those: double backward)
    through_loop = (not takes_fused and auto and mode == "sequential" and _needs_grad(cell, x, h0)
                    and not torch.compiler.is_compiling())
    # head-major pre-activations go as they are to the fused kernels and to a compiled
    # loop (the CPU's C loops read them in place); every other path takes the gate-major copy
    if isinstance(x, HeadMajor) and not takes_fused and not (
            through_loop and sequences.starts_only_at_zero and cell.compiled_loop(x) is not None):
        x = x.gate_major()

    hidden_states = None  # cell.hidden(states) where the C loop or a fused solver wrote it
    with _no_autocast(x.device.type):
        if takes_fused:
            # the kernels read bf16 input as it is and compute in fp32 (no upcast copy)
            # and start from zeros without an h0 (no zeros tensor)
            tol = config.tolerance(dtype)
            on_device = tol is not None and config.on_failure == "sequential"
            args = (x.data if isinstance(x, HeadMajor) else x,
                    None if h0 is None else h0.to(dtype),
                    None if sequences.starts_only_at_zero else sequences.starts)
            options = dict(rounds=config.boundary_rounds, sequential=mode == "sequential",
                           verify_tol=tol if on_device else None)
            if hidden and cell.fused_solver_writes_hidden:
                states, hidden_states, report = fused(*args, hidden=True, **options)
            else:
                states, report = fused(*args, **options)
            info = SolveInfo(mode, "triton-fused", segments=report.segments,
                             boundary_rounds=report.boundary_rounds,
                             fallback_flags=report.fell_back)
            if mode == "parallel" and tol is not None and not on_device:
                x = x.gate_major() if isinstance(x, HeadMajor) else x
                # "warn" or "raise": the states stay the kernel's (and so does its h)
                _check_solution(cell, x.to(dtype), _initial(h0, n_init, cell, x, dtype),
                                sequences, config, tol, states, info)
            elif mode == "parallel" and report.segments == 1:
                info.converged = True  # one exact walk: nothing to converge
        elif mode == "sequential":
            h0c = _initial(h0, n_init, cell, x, dtype)
            if through_loop:
                # the loop's backward reads the Jacobians
                verify_structure(cell, x, h0c, skip_nonfinite=True)
                head_major = isinstance(x, HeadMajor)
                xc = (x.data if head_major else x).to(dtype)
                states, hidden_states = LoopSolve.apply(
                    cell, sequences, hidden, xc.shape[0] if head_major else 1, xc, h0c,
                    *cell.parameters())
                verify_structure_at_states(cell, x, h0c, sequences, states)
            else:
                states = sequential_solve(cell, x.to(dtype), h0c, sequences)
            info = SolveInfo(mode="sequential", backend="torch")
        else:
            xc, h0c = x.to(dtype), _initial(h0, n_init, cell, x, dtype)
            verify_structure(cell, xc, h0c)
            linear_solver, name = select_scan(cell.structure, x.device, dtype, backend)
            if _needs_grad(cell, x, h0):
                info_out: list[SolveInfo] = []
                states = ParallelSolve.apply(cell, sequences, config, linear_solver, name,
                                             info_out, xc, h0c, *cell.parameters())
                info = info_out[0]
            else:  # nothing to differentiate: no autograd Function around Newton
                states, info = newton_solve(cell, xc, h0c, sequences, config, linear_solver, name)
            verify_structure_at_states(cell, xc, h0c, sequences, states)
    # the final state stays in the compute dtype: a decode cache that feeds it back must
    # not round the state to bfloat16 every token
    out = states
    if hidden:
        out = cell.hidden(states) if hidden_states is None else hidden_states
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    return out, sequences.final_states(states), info


def _no_autocast(device_type: str):
    """Autocast switched off for the solve (a no-op context, cheaper to enter, when it is
    off already)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _initial(h0, n_init: int, cell, x, dtype):
    """The initial states in the compute dtype (zeros when the caller gave none)."""
    if h0 is not None:
        return h0.to(dtype)
    return (x.data if isinstance(x, HeadMajor) else x).new_zeros(n_init, cell.state_size, dtype=dtype)


@torch.compiler.assume_constant_result
def _torch_threads() -> int:
    """torch's intra-op threads: a constant of a compiled graph (dynamo cannot trace
    ``torch.get_num_threads``, which broke ``fullgraph=True`` of ``mode="auto"``)."""
    return torch.get_num_threads()


def _auto_mode(cell, x, h0, fused, sequences) -> str:
    """The measured choice between the step loop and Newton (fused kernels choose inside)."""
    batch, steps, _ = x.shape
    if steps == 1:
        return "sequential"
    if fused is None and x.device.type == "cpu":
        width, threads = batch * cell.state_size, _torch_threads()
        if not _needs_grad(cell, x, h0):
            return "sequential" if width >= CPU_SEQUENTIAL_MIN_WIDTH else "parallel"
        if width >= CPU_SEQUENTIAL_MIN_WIDTH_GRAD_PER_THREAD * threads:
            return "sequential"
        # the compiled loop asked for last: its first call builds the C code
        if (width >= CPU_SEQUENTIAL_MIN_WIDTH_GRAD_COMPILED_PER_THREAD * threads
                and sequences.starts_only_at_zero and not torch.compiler.is_compiling()
                and cell.compiled_loop(x) is not None):
            return "sequential"
    return "parallel"


def _needs_grad(cell, x, h0) -> bool:
    return needs_grad(x, h0, *cell.parameters())


def _check_solution(cell, x, h0, sequences, config: NewtonConfig, tol: float, states,
                    info: SolveInfo) -> None:
    """Host check of a fused solve's estimated error, for ``on_failure`` "raise"/"warn"
    (which keep the states; the fused path checks "sequential" on the device)."""
    with torch.no_grad():
        value, jac = cell.step_and_jacobian(x, sequences.previous_states(states, h0))
        linear_solver, _ = select_scan(cell.structure, states.device, states.dtype, "auto")
        error_update(value, states, mask_restarts(jac, sequences, cell.structure),
                     cell.structure, linear_solver, info)
    info.converged = bool(info.error <= tol)
    if not info.converged:
        handle_failure(cell, x, h0, sequences, config, tol, states, info)
