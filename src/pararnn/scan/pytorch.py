"""Parallel solution of affine recurrences in plain PyTorch (any device, any dtype).

Solves ``h_t = J_t h_{t-1} + r_t`` for ``t = 0..T-1`` with ``h_{-1} = 0`` by odd-even
reduction: compose neighbouring pairs of affine maps (one batched op), solve the
half-length recurrence recursively, then fill in the even steps (one batched op).
Depth O(log T), work O(T) compositions, no Python loop over time; any T >= 1.

Initial states and resets are not arguments: callers fold an initial state into
``r_0`` and zero ``J_t`` where the state restarts (see :mod:`pararnn.solver`).
"""

from __future__ import annotations

import torch

from ..structure import JacobianStructure


def solve_linear_recurrence(
    jac: torch.Tensor,
    rhs: torch.Tensor,
    structure: JacobianStructure,
    *,
    reverse: bool = False,
) -> torch.Tensor:
    """All states of an affine recurrence along dim 1.

    Args:
        jac: Jacobians in ``structure``'s storage with leading dims ``(B, T)``.
        rhs: ``(B, T, N)``.
        reverse: if False, ``h_t = J_t h_{t-1} + r_t`` (``J_0`` unused); if True,
            ``h_t = J_t h_{t+1} + r_t`` (``J_{T-1}`` unused), i.e. the recurrence
            runs backwards in time, as adjoints do.

    Returns:
        ``(B, T, N)`` states.
    """
    if reverse:
        return solve_linear_recurrence(
            jac.flip(1), rhs.flip(1), structure, reverse=False
        ).flip(1)
    return _odd_even_solve(jac, rhs, structure)


def _odd_even_solve(jac, rhs, structure: JacobianStructure) -> torch.Tensor:
    steps = rhs.shape[1]
    if steps == 1:
        return rhs
    pairs = steps // 2
    even_jac, odd_jac = jac[:, 0 : 2 * pairs : 2], jac[:, 1 : 2 * pairs : 2]
    even_rhs, odd_rhs = rhs[:, 0 : 2 * pairs : 2], rhs[:, 1 : 2 * pairs : 2]
    # Step 2i+1 expressed through step 2i-1: (J_{2i+1}, r_{2i+1}) ∘ (J_{2i}, r_{2i}).
    pair_jac = structure.compose(odd_jac, even_jac)
    pair_rhs = structure.apply(odd_jac, even_rhs) + odd_rhs
    odd_states = _odd_even_solve(pair_jac, pair_rhs, structure)  # h_1, h_3, ...

    # Even steps from the odd state before them (h_{-1} = 0 for step 0).
    n_even = (steps + 1) // 2
    before_even = torch.cat(
        (torch.zeros_like(odd_states[:, :1]), odd_states[:, : n_even - 1]), dim=1
    )
    even_states = structure.apply(jac[:, 0::2], before_even) + rhs[:, 0::2]

    states = torch.empty_like(rhs)
    states[:, 0::2] = even_states
    states[:, 1::2] = odd_states
    return states


def solve_linear_recurrence_sequential(
    jac: torch.Tensor,
    rhs: torch.Tensor,
    structure: JacobianStructure,
    *,
    reverse: bool = False,
) -> torch.Tensor:
    """The same recurrence as :func:`solve_linear_recurrence`, by a plain loop (reference)."""
    steps = rhs.shape[1]
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    states = torch.empty_like(rhs)
    h = torch.zeros_like(rhs[:, 0])
    for t in order:
        h = structure.apply(jac[:, t], h) + rhs[:, t]
        states[:, t] = h
    return states
