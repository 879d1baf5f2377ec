"""The composed Jacobian of a time chunk, for the context-parallel solve.

It acts on per-step Jacobians stored in a :class:`pararnn.JacobianStructure` layout
``(B, T, ...)`` and uses only its ``compose``, so diagonal, 2x2-block and dense cells go
through the same code. The chunk's affine recurrences themselves are solved by the
library's scan, :func:`pararnn.scan.solve_linear_recurrence`.
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
