"""The parallel solve as an autograd Function: Newton forward, adjoint-scan backward.

Backward (DESIGN.md section 1): with ``g_t = ∂L/∂h_t`` the adjoints solve
``λ_t = g_t + J_{t+1}^T λ_{t+1}`` — the forward's kind of affine recurrence, reversed in
time with transposed Jacobians — then every input, parameter and initial-state
gradient is one batched VJP of ``cell.step`` over all steps with cotangent ``λ``.
Only ``x``, ``h0`` and the states are saved; Jacobians are recomputed.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from .newton import newton_solve


def reject_double_backward() -> None:
    """Raise if a parallel backward is being differentiated (``create_graph=True``)."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "the parallel solve does not support double backward (create_graph=True); "
            "use mode='sequential' for higher-order gradients"
        )


class ParallelSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, sequences, config, linear_solver, backend, info_out, x, h0, *params):
        states, info = newton_solve(cell, x, h0, sequences, config, linear_solver, backend)
        info_out.append(info)
        ctx.cell, ctx.sequences, ctx.linear_solver = cell, sequences, linear_solver
        # The tensors that were the cell's parameters during forward: backward may run
        # after a functional_call swapped them back, so it calls the cell with these.
        ctx.param_names = [name for name, _ in cell.named_parameters()]
        ctx.save_for_backward(x, h0, states, *params)
        return states

    @staticmethod
    def backward(ctx, grad_states):
        reject_double_backward()
        x, h0, states, *params = ctx.saved_tensors
        cell, sequences = ctx.cell, ctx.sequences
        structure = cell.structure
        weights = dict(zip(ctx.param_names, params))
        prev = sequences.previous_states(states, h0)
        _, jac = functional_call(cell, weights, (x, prev), {"jacobian": True})
        jac = structure.zero_where(jac, sequences.starts)
        # Coefficient of λ_{t+1} in λ_t is J_{t+1}^T; the last slot is unused.
        next_jac_t = structure.transpose(torch.cat((jac[:, 1:], jac[:, :1]), dim=1))
        adjoint = ctx.linear_solver(next_jac_t, grad_states.contiguous(), structure, reverse=True)

        needs = ctx.needs_input_grad[6:]
        leaves = [t.detach().requires_grad_(need) for t, need in zip((x, h0, *params), needs)]
        x_in, h0_in, *params_in = leaves
        with torch.enable_grad():
            value = functional_call(cell, dict(zip(ctx.param_names, params_in)),
                                    (x_in, sequences.previous_states(states, h0_in)))
            wanted = [t for t, need in zip(leaves, needs) if need]
            grads = iter(torch.autograd.grad(value, wanted, adjoint, allow_unused=True))
        outputs = [next(grads) if need else None for need in needs]
        return (None,) * 6 + tuple(outputs)
