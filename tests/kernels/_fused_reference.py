"""float64 references for the fused-kernel tests: autograd through the loop of ``cell.step``,
and the launch plans both cells' tests run."""

from __future__ import annotations

import torch

from pararnn.kernels._fused_common import make_plan

# seg_len/warmup: one segment (the sequential kernel); short segments with a too-short
# warm-up (the boundary Newton rounds must repair them); a warm-up reaching t = 0;
# segments and warm-up in whole step blocks (the kernels' ALIGNED path at 24 steps: 6 step
# blocks of 4 on the CPU, 3 segments of 8, so a middle segment as well as a first and last).
PLANS = {"single": dict(seg_len=None), "repair": dict(seg_len=5, warmup=2),
         "warm": dict(seg_len=8, warmup=40), "whole": dict(seg_len=8, warmup=8)}

# (plan, steps, with_h0, with_resets) of walks in whole step blocks: one walk, segments with
# warm-up with and without resets, a warm-up reaching t = 0
WHOLE_BLOCK_CASES = [("single", 24, True, False), ("whole", 24, True, False),
                     ("whole", 24, False, True), ("warm", 24, True, True)]


def plan_is_whole(kernel: str, plan: str, steps: int, device) -> bool:
    """Whether ``PLANS[plan]`` walks ``steps`` steps of ``kernel`` in whole step blocks
    (``Plan.whole_blocks``) on ``device``: the whole-block tests' precondition."""
    return make_plan(kernel, 2, steps, 5, device, **{"warmup": None, **PLANS[plan]},
                     block_n=None, num_warps=None).whole_blocks(steps)


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


def warmup_start_error(cell, pre, states, plan: str, segment: int = 2) -> float:
    """How far ``PLANS[plan]``'s warm-up alone (its steps walked from a zero state) lands
    from segment ``segment``'s true start (``states``: the float64 loop's); float64."""
    seg_len, warmup = PLANS[plan]["seg_len"], PLANS[plan]["warmup"]
    start = segment * seg_len
    zeros = torch.zeros(pre.shape[0], states.shape[-1], dtype=torch.float64)
    warm = sequential_states(cell, pre[:, start - warmup:start].double(), zeros, None)[:, -1]
    return (warm - states[:, start - 1]).abs().max().item()


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


def output_loss(loss_on: str, w_h: torch.Tensor, w_s: torch.Tensor):
    """``loss(states, h)``: a weighted sum of a layer's output ``h`` (``loss_on="hidden"``),
    of the final state (``"final state"``, what a caller carrying the state on uses) or of
    both, in float64 on the CPU."""
    def loss(states, h):
        total = 0.0
        if loss_on != "final state":
            total = total + (h.double().cpu() * w_h).sum()
        if loss_on != "hidden":
            total = total + (states[:, -1].double().cpu() * w_s).sum()
        return total
    return loss
