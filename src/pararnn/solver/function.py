"""The parallel solve as an autograd Function: Newton forward, adjoint-scan backward.

Backward (DESIGN.md section 1): with ``g_t = ∂L/∂h_t`` the adjoints solve
``λ_t = g_t + J_{t+1}^T λ_{t+1}`` — the forward's kind of affine recurrence, reversed in
time with transposed Jacobians — then every input, parameter and initial-state
gradient is one batched VJP of ``cell.step`` over all steps with cotangent ``λ``.
Only ``x``, ``h0`` and the states are saved; Jacobians are recomputed.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .newton import newton_solve


class ParallelSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, sequences, config, linear_solver, backend, info_out, x, h0, *params):
        states, info = newton_solve(cell, x, h0, sequences, config, linear_solver, backend)
        info_out.append(info)
        ctx.cell, ctx.sequences, ctx.linear_solver = cell, sequences, linear_solver
        ctx.num_params = len(params)
        ctx.save_for_backward(x, h0, states, *params)
        return states

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_states):
        x, h0, states, *params = ctx.saved_tensors
        cell, sequences = ctx.cell, ctx.sequences
        structure = cell.structure
        with torch.no_grad():
            _, jac = cell.step_and_jacobian(x, sequences.previous_states(states, h0))
            jac = structure.zero_where(jac, sequences.starts)
            # Coefficient of λ_{t+1} in λ_t is J_{t+1}^T; the last slot is unused.
            next_jac_t = structure.transpose(torch.cat((jac[:, 1:], jac[:, :1]), dim=1))
            adjoint = ctx.linear_solver(next_jac_t, grad_states.contiguous(), structure, reverse=True)

        needs_x, needs_h0 = ctx.needs_input_grad[6], ctx.needs_input_grad[7]
        needs_params = ctx.needs_input_grad[8:]
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(needs_x)
            h0_in = h0.detach().requires_grad_(needs_h0)
            value = cell.step(x_in, sequences.previous_states(states.detach(), h0_in))
            wrt = [t for t, need in zip((x_in, h0_in, *params), (needs_x, needs_h0, *needs_params)) if need]
            grads = iter(torch.autograd.grad(value, wrt, adjoint, allow_unused=True)) if wrt else iter(())
        outputs = [next(grads) if need else None for need in (needs_x, needs_h0, *needs_params)]
        return (None, None, None, None, None, None, *outputs)
