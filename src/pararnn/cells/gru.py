"""ParaGRU cell: a GRU with diagonal recurrence (docs/DESIGN.md, "The cells")."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._init import (check_clip, clipped, preactivation, runs_own_step,
                    xavier_normal_vector_)
from . import cpu_loop
from .base import Cell


_sigmoid_backward = torch.ops.aten.sigmoid_backward.grad_input  # g s (1 - s), into grad_input
_tanh_backward = torch.ops.aten.tanh_backward.grad_input  # g (1 - t²)

# the methods that define the recurrence: a subclass that overrides one of them changes it,
# so the analytic backward, the prepared loop and the fused kernels no longer apply
_OWN_STEP = ("step", "step_and_jacobian", "_gates", "_step_parameters", "_split")
# the C loops and the fused kernels also clamp the raw parameters themselves (the clip in
# the loop or kernel): a subclass with its own recurrent_weights keeps the Python paths
_OWN_WEIGHTS = (*_OWN_STEP, "recurrent_weights")


class ParaGRUCell(Cell):
    """``h' = z ⊙ ĥ + (1 − z) ⊙ h`` (``lerp(h, ĥ, z)``) with

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

    def _step_parameters(self):
        """``(a_zr, a_h, b_zr, b_h)``: the clipped recurrent weights and biases of the z and
        r gates together (``(2, N)``) and of the candidate (``(N,)``; biases None without)."""
        weights = self.recurrent_weights()
        biases = (None, None) if self.bias is None else (self.bias[:2], self.bias[2])
        return weights[:2], weights[2], *biases

    def _split(self, x):
        """Pre-activations ``(..., 3N)`` -> views ``u_zr`` ``(..., 2, N)`` and ``u_h`` ``(..., N)``."""
        n = self.hidden_size
        return x[..., :2 * n].unflatten(-1, (2, n)), x[..., 2 * n:]

    @staticmethod
    def _gates(u_zr, u_h, h, parameters):
        a_zr, a_h, b_zr, b_h = parameters
        # z and r together: one (..., 2, N) multiply-add and one sigmoid instead of two each
        z, r = preactivation(u_zr, a_zr, h.unsqueeze(-2), b_zr).sigmoid_().unbind(-2)
        candidate = preactivation(u_h, a_h, r * h, b_h).tanh_()
        return z, r, candidate

    def step(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        z, _, candidate = self._gates(*self._split(x), h_prev, self._step_parameters())
        return torch.lerp(h_prev, candidate, z)

    def sequence_stepper(self, x):
        if not runs_own_step(self, ParaGRUCell, *_OWN_STEP):
            return super().sequence_stepper(x)
        parameters = self._step_parameters()
        u_zr, u_h = (u.unbind(1) for u in self._split(x))

        def step(t, h_prev):
            z, _, candidate = self._gates(u_zr[t], u_h[t], h_prev, parameters)
            return torch.lerp(h_prev, candidate, z)

        return step

    def taping_stepper(self, x):
        """The loop's step writing its gates ``(z, r, ĥ)`` in place into a tape
        ``(B, T, 3, N)`` that starts as the biased pre-activations ``u + b`` (one pass for
        all steps instead of two bias adds per step)."""
        if not runs_own_step(self, ParaGRUCell, *_OWN_STEP):
            return super().taping_stepper(x)
        tape = x.unflatten(-1, (3, self.hidden_size))
        tape = tape.clone() if self.bias is None else tape + self.bias
        weights = self.recurrent_weights()
        a_zr, a_h = weights[:2], weights[2]
        zr_steps, candidate_steps = tape[..., :2, :].unbind(1), tape[..., 2, :].unbind(1)

        def step(t, h_prev):
            z, r = zr_steps[t].addcmul_(a_zr, h_prev.unsqueeze(-2)).sigmoid_().unbind(-2)
            candidate = candidate_steps[t].addcmul_(r, a_h * h_prev).tanh_()
            return torch.lerp(h_prev, candidate, z)

        return step, tape

    def compiled_loop(self, x):
        """The C loop and adjoint (:mod:`pararnn.cells.cpu_loop`) on the CPU, unless a
        subclass changed the step, a parametrization computes the weights (the loop reads
        the parameters themselves) or the C loops could not be built."""
        if not runs_own_step(self, ParaGRUCell, *_OWN_WEIGHTS) or parametrize.is_parametrized(self):
            return None
        clip = self.recurrent_clip
        return cpu_loop.compiled_loop("gru", x,
                                      lambda parameters: (clipped(parameters["a"], clip),))

    def step_and_jacobian(self, x, h_prev):
        parameters = self._step_parameters()
        (a_z, a_r), a_h = parameters[0], parameters[1]
        z, r, candidate = self._gates(*self._split(x), h_prev, parameters)
        update = candidate - h_prev
        h_next = torch.lerp(h_prev, candidate, z)
        dz = z * (1 - z) * a_z
        dr = r * (1 - r) * a_r
        dcandidate = (1 - candidate * candidate) * a_h * torch.addcmul(r, dr, h_prev)
        jac = (dz * update).addcmul_(z, dcandidate).add_(1 - z)
        return h_next, jac

    def linearize(self, x, h_prev, tape=None):
        """Analytic Jacobian and VJP (see :meth:`Cell.linearize`), with the gates read from
        ``tape`` (:meth:`taping_stepper`) when given. With ``g`` the
        derivatives of ``h'`` by the gate pre-activations ``p_g = u_g + a_g ⊙ i_g + b_g``
        (inner inputs ``i = (h, h, r ⊙ h)``), the gradients are ``λ ⊙ g`` for ``u`` (and,
        summed, for ``b``) and ``Σ λ ⊙ g ⊙ i`` for ``a``, and
        ``J = 1 − z + a_z ⊙ g_z + a_r ⊙ g_r + a_h ⊙ r ⊙ g_h``."""
        if not runs_own_step(self, ParaGRUCell, *_OWN_STEP):
            return super().linearize(x, h_prev)
        parameters, bias = self._step_parameters(), self.bias  # bound now: see Cell.linearize
        with torch.no_grad():
            if tape is None:
                z, r, candidate = self._gates(*self._split(x), h_prev, parameters)
            else:
                z, r, candidate = tape.unbind(-2)
            (a_z, a_r), a_h = parameters[0], parameters[1]
            rh = r * h_prev
            # g = ∂h'/∂(p_z, p_r, p_h), each a fused derivative kernel: one pass apiece
            local = torch.empty(*z.shape[:-1], 3, z.shape[-1], dtype=z.dtype, device=z.device)
            g_z, g_r, g_h = local.unbind(-2)
            _sigmoid_backward(candidate - h_prev, z, grad_input=g_z)  # z(1-z)(ĥ-h)
            _tanh_backward(z, candidate, grad_input=g_h)  # z(1-ĥ²)
            _sigmoid_backward(g_h * h_prev, r, grad_input=g_r).mul_(a_h)  # through r ⊙ h
            jac = torch.rsub(z, 1).addcmul_(g_z, a_z).addcmul_(g_r, a_r).addcmul_(g_h * r, a_h)

        def pullback(cotangent):
            pairs = []
            with torch.no_grad():
                grad_pre = local * cotangent.unsqueeze(-2)  # (..., 3, N): d/d(u_z, u_r, u_h)
                lead = tuple(range(grad_pre.dim() - 2))
                if x.requires_grad:
                    pairs.append((x, grad_pre.flatten(-2)))
                if h_prev.requires_grad:
                    pairs.append((h_prev, cotangent * jac))
                weights_zr, weights_h = parameters[:2]  # views of the clipped a: autograd adds both
                if weights_zr.requires_grad:
                    pairs.append((weights_zr, (grad_pre[..., :2, :] * h_prev.unsqueeze(-2)).sum(lead)))
                    pairs.append((weights_h, (grad_pre[..., 2, :] * rh).sum(lead)))
                if bias is not None and bias.requires_grad:
                    pairs.append((bias, grad_pre.sum(lead)))
            return pairs

        return jac, pullback

    def jacobian_value_is_step(self) -> bool:
        # both come from the same _gates unless a subclass replaced one of them
        return runs_own_step(self, ParaGRUCell, *_OWN_STEP)

    def fused_solver(self):
        """The fused ParaGRU kernels (:func:`pararnn.kernels.paragru.paragru_solve`) unless a
        subclass changed the step."""
        if not runs_own_step(self, ParaGRUCell, *_OWN_WEIGHTS):
            return None
        return self._fused_solve

    fused_solver_writes_hidden = True  # a bf16 walk also writes the states in bf16

    def _fused_solve(self, pre, h0, resets, hidden=False, **options):
        from ..kernels.paragru import paragru_solve

        # the kernels clamp a themselves (recurrent_clip): no clamp launch either way
        return paragru_solve(pre, self.a, self.bias, h0, resets, clip=self.recurrent_clip,
                             hidden=hidden, **options)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, recurrent_clip={self.recurrent_clip}, "
                f"bias={self.bias is not None}")
