"""Small affine-recurrence helpers for the context-parallel solve.

They act on per-step Jacobians stored in a :class:`pararnn.JacobianStructure` layout
``(B, T, ...)`` and use only its ``apply`` / ``compose`` / ``transpose`` operations, so
diagonal, 2x2-block and dense cells go through the same code.
"""

from __future__ import annotations

import torch

from ..structure import JacobianStructure


def compose_chunk(structure: JacobianStructure, jac: torch.Tensor) -> torch.Tensor:
    """``J_T ... J_2 J_1`` for ``jac`` ``(B, T, ...)``: the Jacobian of a chunk's end state
    with respect to its incoming state, by a pairwise tree (log2 T rounds, O(T) work)."""
    while jac.shape[1] > 1:
        paired = jac.shape[1] // 2 * 2
        # later step on the left: (J_{2i+1} J_{2i}) keeps time order for the next round
        merged = structure.compose(jac[:, 1:paired:2], jac[:, 0:paired:2])
        jac = torch.cat((merged, jac[:, paired:]), dim=1)
    return jac[:, 0]


def affine_scan(structure: JacobianStructure, coeff: torch.Tensor, rhs: torch.Tensor,
                *, reverse: bool = False) -> torch.Tensor:
    """Solve ``y_t = coeff_t y_{t-1} + rhs_t`` (``y_{-1} = 0``) for all t.

    With ``reverse=True`` the recurrence runs backwards: ``y_t = coeff_t y_{t+1} + rhs_t``
    (``y_T = 0``), the form of the adjoint recurrence. Hillis-Steele doubling: log2 T
    rounds of ``apply``/``compose`` over the whole chunk.
    """
    if reverse:
        return affine_scan(structure, coeff.flip(1), rhs.flip(1)).flip(1)
    steps = rhs.shape[1]
    offset = 1
    while offset < steps:
        rhs = torch.cat((rhs[:, :offset],
                         rhs[:, offset:] + structure.apply(coeff[:, offset:], rhs[:, :-offset])), dim=1)
        if offset * 2 < steps:  # the last round's composed coefficients are never read
            coeff = torch.cat((coeff[:, :offset],
                               structure.compose(coeff[:, offset:], coeff[:, :-offset])), dim=1)
        offset *= 2
    return rhs
