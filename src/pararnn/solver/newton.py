"""The generic solve for any :class:`pararnn.Cell`: Newton on the whole sequence, the
sequential loop it falls back to, and the autograd Function (docs/DESIGN.md, "The method").

Forward: ``F_t(H) = h_t - f(h_{t-1}, x_t) = 0`` for all t. Each iteration linearises
every step at the current guess and solves the resulting *linear* recurrence
``dh_t = J_t dh_{t-1} + r_t`` with a parallel scan. The result is checked against the
config's tolerance and, if it misses it, ``on_failure`` decides (docs/DESIGN.md, "Safety").
The check bounds the *accumulated* error, not each step's residual alone: a step's error
``r_t`` also shifts every later state through the Jacobians, ``e_t = J_t e_{t-1} + r_t``,
which one more Newton update gives for the price of one more scan (:func:`error_update`).

Backward: with ``g_t = ∂L/∂h_t`` the adjoints solve ``λ_t = g_t + J_{t+1}^T λ_{t+1}`` —
the forward's kind of affine recurrence, reversed in time with transposed Jacobians —
then every input, parameter and initial-state gradient is one batched VJP of
``cell.step`` over all steps with cotangent ``λ``. Only ``x``, ``h0`` and the states are
saved; Jacobians are recomputed, by the same cell call that records the VJP's graph when the
cell declares :meth:`~pararnn.Cell.jacobian_value_is_step` (ParaGRU, ParaLSTM).
"""

from __future__ import annotations

import math
import os
import sys
import warnings

import torch
from torch.func import functional_call

from ..layout import HeadMajor, gate_major
from ..scan.pytorch import solve_adjoint_loop
from ..structure import DIAGONAL
from .config import NewtonConfig, NewtonConvergenceError, SolveInfo
from .inputs import Sequences


def sequential_solve(cell, x: torch.Tensor, h0: torch.Tensor, sequences: Sequences,
                     step=None) -> torch.Tensor:
    """States ``(B, T, N)`` by the plain loop, one ``cell.step`` per time step: the reference
    every other path must match; differentiable by autograd. ``step``: the cell's stepper
    for ``x`` to use (default :meth:`~pararnn.Cell.sequence_stepper`)."""
    batch, steps, _ = x.shape
    # per-step views by unbind, not x[:, t]: the backward of T slices would write T
    # full-size gradients (O(T^2) work); unbind's backward is one stack.
    step = step or cell.sequence_stepper(x)
    if sequences.starts_only_at_zero:  # no per-step select of the initial state
        h = step(0, h0)
        check_step_output(cell, h, h0)
        states = [h]
        for t in range(1, steps):
            h = step(t, h)
            states.append(h)
        return torch.stack(states, dim=1)
    inits = sequences.initial_states(h0, batch, steps).unbind(1)
    starts = sequences.starts.unsqueeze(-1).unbind(1)
    h = step(0, inits[0])
    check_step_output(cell, h, inits[0])
    states = [h]
    for t in range(1, steps):
        h = step(t, torch.where(starts[t], inits[t], h))
        states.append(h)
    return torch.stack(states, dim=1)


def check_step_output(cell, out, h_prev: torch.Tensor) -> None:
    """Raise a TypeError naming what ``cell.step`` returned unless it is a floating-point
    tensor of ``h_prev``'s shape (the new state)."""
    if isinstance(out, torch.Tensor) and out.shape == h_prev.shape and out.is_floating_point():
        return
    got = (f"shape {tuple(out.shape)}, dtype {out.dtype}" if isinstance(out, torch.Tensor)
           else type(out).__name__)
    raise TypeError(f"{type(cell).__name__}.step must return the new state, a floating-point "
                    f"tensor of h_prev's shape {tuple(h_prev.shape)}; it returned {got}")


def scaled_size(delta: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``max |delta_t| / (1 + |h_t|)`` as a 0-d tensor (NaN stays NaN); ``delta`` is used
    up (in place on it: two full-size allocations instead of four)."""
    return delta.abs_().div_(states.abs().add_(1)).amax()


def error_update(value: torch.Tensor, states: torch.Tensor, jac: torch.Tensor, structure,
                 linear_solver, info: SolveInfo) -> torch.Tensor:
    """The check of a solve: one more Newton update of ``states`` (whose step values
    ``f(h_{t-1}, x_t)`` are ``value``) with the Jacobians ``jac``
    (masked at restarts; the last iteration's, at the states before its update, serve: they
    only weigh the residuals), ``e_t = J_t e_{t-1} + r_t`` from the residuals
    ``r_t = f(h_{t-1}, x_t) - h_t``. To first order ``e`` is the error of ``states``: a step's
    residual also moves every later state through the Jacobians, and where those stay near 1
    for long (memory gates close to 1) the residuals of thousands of steps add up: checking
    each step's residual alone let float64 ParaGRU states at T = 2048 through 3-4x the bound
    away from the loop (tests/test_failure.py).
    Records ``info.residual`` and ``info.error`` (``max |e_t| / (1 + |h_t|)``, 0-d); returns
    ``e``, which applied leaves an error of second order."""
    residual = value - states  # not in place: a cell's step may return one of its inputs
    info.residual = scaled_size(residual.clone(), states)
    update = linear_solver(jac, residual, structure)
    info.error = scaled_size(update.clone(), states)
    return update


def initial_guess(cell, x, h0, sequences: Sequences) -> torch.Tensor:
    """One parallel cell evaluation: ``f(h0, x_t)`` where a sequence starts, ``f(0, x_t)`` elsewhere."""
    zeros = torch.zeros(*x.shape[:2], h0.shape[-1], dtype=h0.dtype, device=h0.device)
    return cell.step(x, sequences.previous_states(zeros, h0))


def newton_solve(cell, x, h0, sequences: Sequences, config: NewtonConfig, linear_solver,
                 backend: str = "torch") -> tuple[torch.Tensor, SolveInfo]:
    """Solve for all states; no autograd (callers wrap this in the parallel Function).

    ``linear_solver(jac, rhs, structure, reverse=False)`` solves the affine recurrence.
    """
    structure = cell.structure
    tol = config.tolerance(x.dtype)
    quasi_newton = config.jacobian == "diagonal" and structure.kind != "diagonal"
    step_structure = DIAGONAL if quasi_newton else structure
    states = initial_guess(cell, x, h0, sequences)
    info = SolveInfo(mode="parallel", backend=backend)
    for iteration in range(config.max_iters):
        value, jac = cell.step_and_jacobian(x, sequences.previous_states(states, h0))
        if quasi_newton:
            jac = structure.diagonal(jac)
        jac = mask_restarts(jac, sequences, step_structure)
        update = linear_solver(jac, value - states, step_structure)
        del value
        states = states + update
        info.iterations = iteration + 1
        if config.stops_early:
            # the update is the error of the states before it (error_update at them):
            # once that is below tol, the updated states are closer still
            info.error = scaled_size(update, states)
            if info.error <= tol:
                info.converged = True
                return states, info
    if tol is None:
        return states, info

    value = cell.step(x, sequences.previous_states(states, h0))
    update = error_update(value, states, jac, step_structure, linear_solver, info)
    del jac
    if torch.compiler.is_compiling() and config.on_failure == "sequential":
        # no host round trip inside a compiled graph: the fallback is chosen by torch.cond
        # and SolveInfo reads the flag lazily (input NaN checks need the eager path)
        met = info.error <= tol
        info.set_fallback_flags(~met)
        states = torch.cond(met, lambda s, e: s + e,
                            lambda s, e: sequential_solve(cell, x, h0, sequences), (states, update))
        return states, info
    info.converged = bool(info.error <= tol)  # False for NaN too
    if info.converged:
        return states + update, info
    return handle_failure(cell, x, h0, sequences, config, tol, states, info)


def mask_restarts(jac: torch.Tensor, sequences: Sequences, structure) -> torch.Tensor:
    """Zero the Jacobians of the steps that restart from an initial state. Without resets
    or packed sequences that is only step 0, whose Jacobian the linear solvers never read
    (``h_{-1} = 0``), so the full-size masked copy is skipped."""
    if sequences.starts_only_at_zero:
        return jac
    return structure.zero_where(jac, sequences.starts)


def check_finite(cell, x, h0) -> None:
    """Raise a ValueError naming the first of ``x``, ``h0`` and the cell's parameters that
    holds a NaN or an Inf (for a layer, ``x`` is its projected input)."""
    for name, tensor in (("x", x), ("h0", h0), *cell.named_parameters()):
        if not torch.isfinite(tensor).all():
            what = name if name in ("x", "h0") else f"the cell's parameter {name!r}"
            raise ValueError(f"{what} contains NaN or Inf; the recurrence has no finite solution")


_LIBRARY_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (sys.modules["pararnn"], torch))


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside pararnn and torch (the user's call,
    which reaches the solver through layers, modules and autograd Functions at depths that
    vary by path)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def handle_failure(cell, x, h0, sequences, config: NewtonConfig, tol: float, states,
                   info: SolveInfo):
    """Apply ``config.on_failure`` to Newton states whose estimated error missed ``tol``.

    A non-finite error from finite inputs and parameters means Newton diverged (an
    expanding or chaotic cell): the sequential loop, which needs no convergence, is the
    answer. If that loop overflows too, the recurrence itself has no finite solution.
    """
    check_finite(cell, x, h0)
    error = float(info.error)
    if not math.isfinite(error):
        message = (
            f"Newton diverged: the estimated error is {error} after {config.max_iters} "
            "iterations although the inputs are finite, so the cell's Jacobians grow too fast "
            "along the sequence (an expanding or chaotic recurrence) for Newton from the "
            "initial guess. Use on_failure='sequential' (the default), or mode='sequential'."
        )
    else:
        message = (
            f"Newton did not converge: estimated scaled error {error:.3e} > tol {tol:.1e} "
            f"after {config.max_iters} iterations (scaled residual {float(info.residual):.3e}; "
            "the error adds up the residuals carried through the Jacobians). Raise "
            "NewtonConfig.max_iters, bound the cell's Jacobian (e.g. recurrent_clip), or use "
            "on_failure='sequential'."
        )
    if config.on_failure == "raise":
        raise NewtonConvergenceError(message)
    if config.on_failure == "warn":
        warnings.warn(message, RuntimeWarning, stacklevel=_caller_stacklevel())
        return states, info
    info.fell_back = True
    states = sequential_solve(cell, x, h0, sequences)
    if not torch.isfinite(states).all():
        raise ValueError(
            f"the sequential recurrence of {type(cell).__name__} overflows to NaN/Inf on this "
            "input (finite x, h0 and parameters): the states themselves are not finite, so "
            "no solver can return them; rescale the inputs or the cell's weights")
    check_structure_at_states(cell, x, h0, sequences, states)
    return states, info


def verify_structure(cell, x, h0: torch.Tensor, *, skip_nonfinite: bool = False) -> None:
    """Check once per cell instance that its declared Jacobian structure (and its
    ``step_and_jacobian``) matches ``step``; raise a ValueError naming both if not. Newton
    and the loop's adjoint backward both compute with that Jacobian.

    One probe at real operating points (one step from ``h0`` at the first few inputs of
    the first row and a few spread over it; ``x`` may be head-major,
    :class:`pararnn.layout.HeadMajor`, and in another dtype than ``h0``'s, the compute
    dtype): the structured Jacobian times a random
    vector must equal the JVP of ``step`` along it. A structure that drops non-zero
    entries fails this for almost every probe vector; a NaN or Inf where the probe reads is
    reported as such (:func:`check_finite`). The same probe checks that ``step`` returns a
    state (:func:`check_step_output`) and gives the same values on the few steps at once as
    step by step. Cached on the instance by structure, so a
    later solve pays nothing; skipped while ``torch.compile`` traces (the eager call
    verified it). ``skip_nonfinite`` (the loop, which carries NaN/Inf in ``x`` or ``h0``
    into its outputs as ``torch.nn.GRU`` does): where the probe meets them it checks
    nothing, and the next call probes again.
    """
    structure = cell.structure
    if cell.__dict__.get("_verified_structure") == structure or torch.compiler.is_compiling():
        return
    # the first steps and steps spread over the sequence: inputs that leave some Jacobian
    # entries zero at the start (say, padding) cannot hide a wrong structure
    length = x.shape[1]
    at = torch.cat([torch.arange(min(length, 4)),
                    torch.linspace(0, length - 1, min(length, 4)).round().long()]).unique()
    steps = at.numel()
    with torch.no_grad():
        if isinstance(x, HeadMajor):  # the probe's few steps, gate-major
            xs = gate_major(x.data[:, :1].index_select(2, at.to(x.device)), x.gates)
        else:
            xs = x[:1].index_select(1, at.to(x.device))
        xs = xs.to(h0.dtype)
        start = h0[:1].unsqueeze(1).expand(1, steps, h0.shape[-1])
        probe_at = cell.step(xs, start)
        check_step_output(cell, probe_at, start)
        if skip_nonfinite and not (torch.isfinite(xs).all() and torch.isfinite(probe_at).all()):
            return
        # Newton evaluates step on (B, T, ...) at once, the loop on (B, ...) per step: a step
        # that mixes its leading dimensions would solve another system in parallel
        per_step = torch.stack([cell.step(xs[:, t], start[:, t]) for t in range(steps)], dim=1)
        # relative to the states, loosely: the two evaluations may take other kernels (TF32
        # GEMMs of other shapes round differently), and a mixing step is off by O(1)
        mixing = float((per_step - probe_at).abs().amax()) / (1.0 + float(probe_at.abs().amax()))
    bound = 1e-3 if h0.dtype != torch.float64 else 1e-8
    if not mixing <= 10 * bound and math.isfinite(mixing):
        raise ValueError(
            f"{type(cell).__name__}.step gives other values on a sequence (B, T, ...) than step "
            f"by step (differing by {mixing:.2e}): the parallel solve evaluates step on every "
            f"time step at once, so step must treat every leading dimension of x and h_prev "
            f"as a batch dimension (reduce over the last one only).")
    check_jacobian_structure(cell, xs, probe_at, h0[:1])
    cell.__dict__["_verified_structure"] = structure


def check_jacobian_structure(cell, x, h_prev, h0) -> None:
    """Raise a ValueError naming the cell and its declared structure unless the structured
    Jacobian of ``step`` at the points ``(x, h_prev)`` (``(..., F)``, ``(..., N)``) times a
    random vector equals the JVP of ``step`` along it; a NaN or Inf where it reads is
    reported as such (``h0``: the initial states, for that message)."""
    structure = cell.structure
    with torch.no_grad():
        direction = torch.randn(h_prev.shape, dtype=h_prev.dtype, device=h_prev.device,
                                generator=torch.Generator(h_prev.device).manual_seed(0))
        _, exact = torch.func.jvp(lambda h: cell.step(x, h), (h_prev,), (direction,))
        _, jac = cell.step_and_jacobian(x, h_prev)
        error = float((structure.apply(jac, direction) - exact).abs().amax())
        scale = 1.0 + float(exact.abs().amax())
    bound = 1e-3 if h_prev.dtype != torch.float64 else 1e-8
    if not error <= bound * scale:
        if not math.isfinite(error):  # NaN or Inf in what the probe read?
            check_finite(cell, x, h0)
        declared = structure.kind + (f" (block_size={structure.block_size})"
                                     if structure.kind == "block" else "")
        raise ValueError(
            f"{type(cell).__name__} declares jacobian={declared!r}, but its step's Jacobian "
            f"does not have that structure (or its step_and_jacobian is wrong): the "
            f"structured Jacobian times a probe vector differs from the JVP of step by "
            f"{error:.2e}. Declare the structure that holds every non-zero entry of "
            f"d step/d h_prev (e.g. jacobian='dense'), or fix step_and_jacobian.")


def check_structure_at_states(cell, x, h0, sequences: Sequences, states) -> bool:
    """The declared structure checked at the solution, on up to 4 batch rows x 8 steps
    spread over them (``x`` may be head-major). The first probe reads the first row, one
    step from ``h0``: a structure wrong only in other rows or at other operating points
    passes it, and the backward would then use the wrong Jacobians, so a mismatch raises.
    False where nothing was checked: points that are not finite (the loop carries NaN/Inf
    in ``x`` into the states after it, as ``torch.nn.GRU`` does; the cell is not to blame)."""
    if cell.structure.kind == "dense":  # holds every entry
        return True
    batch, length = states.shape[:2]
    rows = torch.linspace(0, batch - 1, min(batch, 4)).round().long().unique().to(states.device)
    steps = torch.linspace(0, length - 1, min(length, 8)).round().long().unique().to(states.device)
    if isinstance(x, HeadMajor):
        xs = gate_major(x.data.index_select(1, rows).index_select(2, steps), x.gates)
    else:
        xs = x.index_select(0, rows).index_select(1, steps)
    xs = xs.to(states.dtype)
    prev = sequences.previous_states(states.detach(), h0).index_select(0, rows).index_select(1, steps)
    if not (torch.isfinite(xs).all() and torch.isfinite(prev).all()):
        return False
    check_jacobian_structure(cell, xs, prev, h0)
    return True


def verify_structure_at_states(cell, x, h0, sequences: Sequences, states) -> None:
    """:func:`check_structure_at_states` once per cell instance (cached by structure, as
    :func:`verify_structure`), after its first solve: Newton can meet its bound with
    Jacobians that miss entries, and the loop needs none in the forward, so neither forward
    shows such a structure; their backwards compute with it."""
    structure = cell.structure
    if cell.__dict__.get("_verified_at_states") == structure or torch.compiler.is_compiling():
        return
    if check_structure_at_states(cell, x, h0, sequences, states):
        cell.__dict__["_verified_at_states"] = structure


def reject_double_backward(what: str) -> None:
    """Raise if ``what``'s backward is being differentiated (``create_graph=True``)."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{what} does not support double backward (create_graph=True); "
            "use mode='sequential' for higher-order gradients"
        )


def _save_solve(ctx, cell, sequences, x, h0, states, params) -> None:
    """What the solve Functions' backwards need. The parameter names go with the tensors
    that were the cell's parameters during forward: backward may run after a
    functional_call swapped them back, so it calls the cell with these."""
    ctx.cell, ctx.sequences = cell, sequences
    ctx.param_names = [name for name, _ in cell.named_parameters()]
    ctx.save_for_backward(x, h0, states, *params)


def _saved_solve(ctx, what: str):
    """``(cell, sequences, (x, h0, states, *params))`` saved by :func:`_save_solve`; a
    double backward of ``what`` raises here."""
    reject_double_backward(what)
    return ctx.cell, ctx.sequences, ctx.saved_tensors


class ParallelSolve(torch.autograd.Function):
    """Newton forward (:func:`newton_solve`), adjoint-scan backward (module doc)."""

    @staticmethod
    def forward(ctx, cell, sequences, config, linear_solver, backend, info_out, x, h0, *params):
        states, info = newton_solve(cell, x, h0, sequences, config, linear_solver, backend)
        info_out.append(info)
        ctx.linear_solver = linear_solver
        _save_solve(ctx, cell, sequences, x, h0, states, params)
        return states

    @staticmethod
    def backward(ctx, grad_states):
        cell, sequences, (x, h0, states, *params) = _saved_solve(ctx, "the parallel solve")
        structure = cell.structure
        needs = ctx.needs_input_grad[6:]
        leaves = [t.detach().requires_grad_(need) for t, need in zip((x, h0, *params), needs)]
        x_in, h0_in, *params_in = leaves
        with torch.enable_grad():
            prev_in = sequences.previous_states(states, h0_in)
            jac, pullback = functional_call(cell, dict(zip(ctx.param_names, params_in)),
                                            (x_in, prev_in), {"linearize": True})
        jac = mask_restarts(jac, sequences, structure)
        # Coefficient of λ_{t+1} in λ_t is J_{t+1}^T; the last slot is unused.
        next_jac_t = structure.transpose(torch.cat((jac[:, 1:], jac[:, :1]), dim=1))
        adjoint = ctx.linear_solver(next_jac_t, grad_states.contiguous(), structure, reverse=True)
        return (None,) * 6 + complete_vjp(pullback(adjoint), leaves, needs)


def complete_vjp(pairs, leaves, needs) -> tuple:
    """Gradients of ``leaves`` (None where not ``needs``) from a cell's pullback pairs."""
    wanted = [t for t, need in zip(leaves, needs) if need]
    if not pairs:
        return (None,) * len(needs)
    outputs, cotangents = zip(*pairs)
    grads = iter(torch.autograd.grad(outputs, wanted, cotangents, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)


# The sequential backward takes time in chunks of about this many state entries
# (batch x steps x state, 512 KiB per float32 tensor): a chunk's ~15 temporaries then
# mostly stay in a CPU core's L2 cache instead of streaming whole-sequence tensors from
# memory, while the per-chunk overhead (one linearize, one autograd call) stays small.
# Measured on ParaGRU/ParaLSTM at B = 8, state 512/1024, 1 thread: 2^17 beats 2^14-2^16
# (per-chunk overhead) and 2^18-2^20 (cache misses) by 10-60%.
CHUNK_ENTRIES = 1 << 17


class LoopSolve(torch.autograd.Function):
    """The step loop without an autograd graph, and a backward that walks the adjoint
    recurrence ``λ_t = g_t + J_{t+1}^T λ_{t+1}`` step by step (:func:`solve_adjoint_loop`),
    backwards through time in chunks: per chunk one :meth:`~pararnn.Cell.linearize` of
    all its steps, the adjoint loop, one batched VJP. What ``mode="auto"`` trains with when
    it picks the loop (on the CPU): autograd through the loop records ~15 nodes per step
    and runs them one step at a time. Exact for the states the loop returns, like
    :class:`ParallelSolve`; no double backward (``mode="sequential"`` has it).

    Returns ``(states, hidden)``: with ``hidden=True`` a compiled loop that writes
    :meth:`~pararnn.Cell.hidden` as a tensor of its own (ParaLSTM) returns it there, and its
    backward takes that tensor's gradient as it is; otherwise ``hidden`` is None.

    ``heads`` > 1: ``x`` is head-major pre-activations ``(H, B, T, G N/H)``
    (:class:`pararnn.layout.HeadMajor`'s data), which a compiled loop reads in place and
    its gradient comes back in; the caller checks that the compiled loop runs.
    """

    @staticmethod
    def forward(ctx, cell, sequences, hidden, heads, x, h0, *params):
        # a compiled loop (ParaGRU/ParaLSTM on the CPU) handles sequences that start at t = 0
        ctx.compiled = cell.compiled_loop(x) if sequences.starts_only_at_zero else None
        ctx.heads = heads
        if ctx.compiled is not None:
            states, ctx.tape, hidden = ctx.compiled.forward(dict(cell.named_parameters()), x, h0,
                                                            hidden, heads)
        elif heads > 1:
            raise RuntimeError("head-major pre-activations need the cell's compiled loop")
        else:
            step, ctx.tape = cell.taping_stepper(x)  # what linearize need not recompute
            states, hidden = sequential_solve(cell, x, h0, sequences, step), None
        if hidden is not None:  # the C backward reads a missing gradient as zeros, unfilled
            ctx.set_materialize_grads(False)
        _save_solve(ctx, cell, sequences, x, h0, states, params)
        return states, hidden

    @staticmethod
    def backward(ctx, grad_states, grad_hidden):
        cell, sequences, (x, h0, states, *params) = _saved_solve(
            ctx, "the step loop's adjoint backward (what mode='auto' trains with)")
        structure = cell.structure
        need_x, need_h0, *need_params = ctx.needs_input_grad[4:]
        params_in = [p.detach().requires_grad_(need) for p, need in zip(params, need_params)]
        weights = dict(zip(ctx.param_names, params_in))
        if ctx.compiled is not None:
            grad_x, grad_h0, grads = ctx.compiled.backward(weights, ctx.tape, states, h0,
                                                           grad_states, grad_hidden, ctx.heads)
            return (None, None, None, None, grad_x if need_x else None,
                    grad_h0 if need_h0 else None, *(grads.get(name) for name in ctx.param_names))
        batch, steps, width = states.shape
        chunk = max(1, CHUNK_ENTRIES // (batch * width))
        only_at_zero = sequences.starts_only_at_zero
        prev = None if only_at_zero else sequences.previous_states(states, h0)
        grad_x = torch.empty_like(x) if need_x else None
        # with restarts inside the sequence, h0 is reached through every start: collect
        # the gradients of all previous states and let autograd route them (below)
        grad_prev = torch.zeros_like(states) if need_h0 and not only_at_zero else None
        grad_h0, grad_params, carry = None, [None] * len(params), None
        for end in range(steps, 0, -chunk):
            start = max(0, end - chunk)
            if only_at_zero:
                prev_chunk = (states[:, start - 1:end - 1] if start else
                              torch.cat((h0.unsqueeze(1), states[:, :end - 1]), dim=1))
            else:
                prev_chunk = prev[:, start:end]
            need_prev = need_h0 and (start == 0 or not only_at_zero)
            x_in = x[:, start:end].detach().requires_grad_(need_x)
            prev_in = prev_chunk.detach().requires_grad_(need_prev)
            options = {"linearize": True}
            if ctx.tape is not None:
                options["tape"] = ctx.tape[:, start:end]
            with torch.enable_grad():
                jac, pullback = functional_call(cell, weights, (x_in, prev_in), options)
            if not only_at_zero:
                jac = structure.zero_where(jac, sequences.starts[:, start:end])
            # the chunk's adjoints, and J_start^T λ_start: what the chunk before adds to its last one
            adjoint, carry = solve_adjoint_loop(jac, grad_states[:, start:end], structure, carry,
                                                with_carry=True)
            grad_x_in, grad_prev_in, *grads = complete_vjp(
                pullback(adjoint), (x_in, prev_in, *params_in), (need_x, need_prev, *need_params))
            if need_x:
                grad_x[:, start:end] = grad_x_in
            if grad_prev is not None:
                grad_prev[:, start:end] = grad_prev_in
            elif need_prev:
                grad_h0 = grad_prev_in[:, 0]
            grad_params = [g if total is None else total if g is None else total.add_(g)
                           for total, g in zip(grad_params, grads)]
        if grad_prev is not None:
            h0_in = h0.detach().requires_grad_()
            with torch.enable_grad():
                grad_h0, = torch.autograd.grad(sequences.previous_states(states, h0_in), h0_in,
                                               grad_prev)
        return (None, None, None, None, grad_x, grad_h0, *grad_params)
