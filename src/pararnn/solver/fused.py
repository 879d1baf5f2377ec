"""The reference cells' fused Triton solve as an autograd Function.

The cell's clipped recurrent weights and its gate bias are inputs of the Function, so
autograd chains their gradients through the clipping into the parameters (also under
``functional_call``), and the input projection's gradient flows through ``x``.
"""

from __future__ import annotations

import torch

from .function import reject_double_backward


class FusedParallelSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fused, resets, rounds, verify_tol, sequential, report_out, x, h0, bias,
                *weights):
        states, report = fused.forward(x, h0, resets, rounds, weights, bias, verify_tol,
                                       sequential)
        report_out.append(report)
        ctx.fused, ctx.resets = fused, resets
        ctx.save_for_backward(x, h0, bias, states, *weights)
        return states

    @staticmethod
    def backward(ctx, grad_states):
        reject_double_backward()
        x, h0, bias, states, *weights = ctx.saved_tensors
        grad_x, grad_weights, grad_h0, grad_bias = ctx.fused.backward(
            x, h0, ctx.resets, states, grad_states.contiguous(), tuple(weights), bias)
        needs_x, needs_h0, needs_bias, *needs_w = ctx.needs_input_grad[6:]
        grad_weights = tuple(g if need else None for g, need in zip(grad_weights, needs_w))
        return (None,) * 6 + (grad_x if needs_x else None,
                              grad_h0.to(h0.dtype) if needs_h0 else None,
                              grad_bias if needs_bias else None, *grad_weights)


def fused_solve(fused, cell, x, h0, resets, rounds: int, *, sequential: bool, verify_tol):
    """States ``(B, T, N)`` float32 from the fused kernels and their ``ForwardReport``.

    ``sequential`` walks one segment (exact); otherwise the segmented plan with at most
    ``rounds`` boundary-Newton rounds, verified on the device when ``verify_tol`` is set.
    The backward solves the (linear) adjoint recurrence, exact for whatever forward ran.
    """
    weights = cell.recurrent_weights()
    weights = weights if isinstance(weights, tuple) else (weights,)
    report_out = []
    states = FusedParallelSolve.apply(fused, resets, rounds, verify_tol, sequential, report_out,
                                      x, h0, cell.bias, *weights)
    return states, report_out[0]
