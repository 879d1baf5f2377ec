"""The sequential solve: one cell step per time step. The reference every other path must match."""

from __future__ import annotations

import torch

from .inputs import Sequences


def sequential_solve(cell, x: torch.Tensor, h0: torch.Tensor, sequences: Sequences) -> torch.Tensor:
    """States ``(B, T, N)`` by the plain loop; differentiable by autograd."""
    batch, steps, _ = x.shape
    # unbind, not x[:, t]: the backward of T slices would write T full-size gradients
    # (O(T^2) work); unbind's backward is one stack.
    inputs = x.unbind(1)
    inits = sequences.initial_states(h0, batch, steps).unbind(1)
    starts = sequences.starts.unsqueeze(-1).unbind(1)
    h = inits[0]
    states = []
    for x_t, init_t, start_t in zip(inputs, inits, starts):
        h = cell.step(x_t, torch.where(start_t, init_t, h))
        states.append(h)
    return torch.stack(states, dim=1)
