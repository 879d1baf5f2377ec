"""Newton's method on the whole sequence at once (DESIGN.md section 1).

``F_t(H) = h_t - f(h_{t-1}, x_t) = 0`` for all t. Each iteration linearises every step
at the current guess and solves the resulting *linear* recurrence
``dh_t = J_t dh_{t-1} + r_t`` with a parallel scan.
"""

from __future__ import annotations

import warnings

import torch

from ..structure import DIAGONAL
from .config import NewtonConfig, NewtonConvergenceError, SolveInfo
from .inputs import Sequences
from .sequential import sequential_solve


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
    quasi_newton = config.jacobian == "diagonal" and structure.kind != "diagonal"
    states = initial_guess(cell, x, h0, sequences)
    info = SolveInfo(mode="parallel", backend=backend)
    for iteration in range(config.max_iters):
        value, jac = cell.step_and_jacobian(x, sequences.previous_states(states, h0))
        residual = value - states
        if config.tol is not None:
            info.residual = residual.abs().amax()
            if info.residual <= config.tol:
                info.converged = True
                return states, info
        step_structure = structure
        if quasi_newton:
            jac, step_structure = structure.diagonal(jac), DIAGONAL
        jac = step_structure.zero_where(jac, sequences.starts)
        states = states + linear_solver(jac, residual, step_structure)
        info.iterations = iteration + 1
    if config.tol is None:
        return states, info

    value = cell.step(x, sequences.previous_states(states, h0))
    info.residual = (value - states).abs().amax()
    info.converged = bool(info.residual <= config.tol)  # False for NaN too
    if info.converged:
        return states, info
    return handle_failure(cell, x, h0, sequences, config, states, info)


def handle_failure(cell, x, h0, sequences, config: NewtonConfig, states, info: SolveInfo):
    """Apply ``config.on_failure`` to unconverged Newton states."""
    for name, tensor in (("x", x), ("h0", h0)):
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} contains NaN or Inf; the recurrence has no finite solution")
    message = (
        f"Newton did not converge: max-abs residual {float(info.residual):.3e} > tol "
        f"{config.tol:.1e} after {config.max_iters} iterations. Raise NewtonConfig.max_iters, "
        "bound the cell's Jacobian (e.g. recurrent_clip), or use on_failure='sequential'."
    )
    if config.on_failure == "raise":
        raise NewtonConvergenceError(message)
    if config.on_failure == "warn":
        warnings.warn(message, RuntimeWarning, stacklevel=4)
        return states, info
    info.fell_back = True
    return sequential_solve(cell, x, h0, sequences), info
