"""float64 references for the fused-kernel tests: autograd through the loop of ``cell.step``."""

from __future__ import annotations

import torch


def sequential_states(cell, pre, h0, resets):
    """States of the plain loop; ``resets[:, t]`` restarts step t from ``h0``."""
    batch, steps, _ = pre.shape
    if h0 is None:
        h0 = pre.new_zeros(batch, cell.state_size)
    h = h0
    out = []
    for t in range(steps):
        if t == 0:
            prev = h0
        elif resets is None:
            prev = h
        else:
            prev = torch.where(resets[:, t, None], h0, h)
        h = cell.step(pre[:, t], prev)
        out.append(h)
    return torch.stack(out, 1)


def reference_grads(cell, pre, h0, resets, grad_states):
    """(states, grad_pre, [grad of each parameter], grad_h0) in float64. The parameter
    gradients are copies: a later ``cell.to(device)`` moves a parameter's ``.grad`` in
    place, which would move the reference with it."""
    cell = cell.double()
    pre = pre.detach().double().requires_grad_()
    h0_in = (torch.zeros(pre.shape[0], cell.state_size, dtype=torch.float64)
             if h0 is None else h0.detach().double()).requires_grad_()
    for p in cell.parameters():
        p.grad = None
    states = sequential_states(cell, pre, h0_in, resets)
    (states * grad_states.double()).sum().backward()
    return (states.detach(), pre.grad, [p.grad.clone() for p in cell.parameters()],
            h0_in.grad)
