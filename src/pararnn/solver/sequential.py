"""The sequential solve: one cell step per time step. The reference every other path must match."""

from __future__ import annotations

import torch

from .inputs import Sequences


def sequential_solve(cell, x: torch.Tensor, h0: torch.Tensor, sequences: Sequences) -> torch.Tensor:
    """States ``(B, T, N)`` by the plain loop; differentiable by autograd."""
    batch, steps, _ = x.shape
    init = sequences.initial_states(h0, batch, steps)
    starts = sequences.starts.unsqueeze(-1)
    h = init[:, 0]
    states = []
    for t in range(steps):
        h = cell.step(x[:, t], torch.where(starts[:, t], init[:, t], h))
        states.append(h)
    return torch.stack(states, dim=1)
