"""ParaGRU cell: a GRU with diagonal recurrence (docs/DESIGN.md, "The cells")."""

from __future__ import annotations

import torch
from torch import nn

from ._init import (check_clip, clipped, gate_biases, preactivation, runs_own_step,
                    xavier_normal_vector_)
from .base import Cell


class ParaGRUCell(Cell):
    """``h' = z ⊙ ĥ + (1 − z) ⊙ h`` with

    ``z = σ(a_z ⊙ h + u_z + b_z)``, ``r = σ(a_r ⊙ h + u_r + b_r)``,
    ``ĥ = tanh(a_h ⊙ (r ⊙ h) + u_h + b_h)``.

    The input ``x_t`` of this cell is ``u = (u_z | u_r | u_h)`` of size ``3 * hidden_size``
    (gate-major: all ``z`` channels, then ``r``, then ``h``), i.e. the input projection
    ``B x`` computed for all steps before the solve. Parameters: ``a`` ``(3, hidden_size)``
    = ``(a_z, a_r, a_h)`` and, unless ``bias=False``, ``bias`` ``(3, hidden_size)`` =
    ``(b_z, b_r, b_h)`` (zeros at initialisation; the fused kernels add it in-kernel, so
    the projection needs no separate pass for it). The Jacobian ``∂h'/∂h`` is diagonal.
    """

    jacobian = "diagonal"
    num_gates = 3

    def __init__(self, hidden_size: int, *, recurrent_clip: float | None = None,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.hidden_size = self.state_size = hidden_size
        self.input_size = 3 * hidden_size
        self.recurrent_clip = check_clip(recurrent_clip)
        self.a = nn.Parameter(torch.empty(3, hidden_size, device=device, dtype=dtype))
        self.bias = (nn.Parameter(torch.empty(3, hidden_size, device=device, dtype=dtype))
                     if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_normal_vector_(self.a)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def recurrent_weights(self) -> torch.Tensor:
        """``a`` after the optional clipping: what the recurrence actually uses."""
        return clipped(self.a, self.recurrent_clip)

    def _gates(self, x, h):
        a_z, a_r, a_h = self.recurrent_weights().unbind(0)
        u_z, u_r, u_h = x.chunk(3, dim=-1)
        b_z, b_r, b_h = gate_biases(self.bias, 3)
        z = preactivation(u_z, a_z, h, b_z).sigmoid_()
        r = preactivation(u_r, a_r, h, b_r).sigmoid_()
        candidate = preactivation(u_h, a_h, r * h, b_h).tanh_()
        return (a_z, a_r, a_h), z, r, candidate

    def step(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        _, z, _, candidate = self._gates(x, h_prev)
        return torch.addcmul(h_prev, z, candidate - h_prev)

    def step_and_jacobian(self, x, h_prev):
        (a_z, a_r, a_h), z, r, candidate = self._gates(x, h_prev)
        update = candidate - h_prev
        h_next = torch.addcmul(h_prev, z, update)
        dz = z * (1 - z) * a_z
        dr = r * (1 - r) * a_r
        dcandidate = (1 - candidate * candidate) * a_h * torch.addcmul(r, dr, h_prev)
        jac = (dz * update).addcmul_(z, dcandidate).add_(1 - z)
        return h_next, jac

    def jacobian_value_is_step(self) -> bool:
        # both come from the same _gates unless a subclass replaced one of them
        return runs_own_step(self, ParaGRUCell, "step", "step_and_jacobian", "_gates")

    def fused_solver(self):
        """The fused ParaGRU kernels (:func:`pararnn.kernels.paragru.paragru_solve`) unless a
        subclass changed the step."""
        if not runs_own_step(self, ParaGRUCell, "step", "step_and_jacobian", "_gates"):
            return None
        return self._fused_solve

    def _fused_solve(self, pre, h0, resets, **options):
        from ..kernels.paragru import paragru_solve

        return paragru_solve(pre, self.recurrent_weights(), self.bias, h0, resets, **options)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, recurrent_clip={self.recurrent_clip}, "
                f"bias={self.bias is not None}")
