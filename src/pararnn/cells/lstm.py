"""ParaLSTM cell: a CIFG LSTM with peepholes and diagonal recurrence (docs/DESIGN.md, "The cells")."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._init import (check_clip, clipped, gate_biases, preactivation, runs_own_step,
                    xavier_normal_vector_)
from . import cpu_loop
from .base import Cell


_sigmoid_backward = torch.ops.aten.sigmoid_backward  # (g, s) -> g s (1 - s)
_tanh_backward = torch.ops.aten.tanh_backward  # (g, t) -> g (1 - t²)

# the methods that define the recurrence: a subclass that overrides one of them changes it,
# so the analytic backward, the prepared loop and the fused kernels no longer apply
_OWN_STEP = ("step", "step_and_jacobian", "_forward", "_step_parameters")
# the C loops and the fused kernels also clamp the raw parameters themselves (the clip in
# the loop or kernel): a subclass with its own recurrent_weights keeps the Python paths
_OWN_WEIGHTS = (*_OWN_STEP, "recurrent_weights")


class ParaLSTMCell(Cell):
    """CIFG LSTM with peephole connections, all recurrences elementwise::

        f  = σ(a_f ⊙ h + u_f + c_f ⊙ c + b_f)
        c̃  = tanh(a_c ⊙ h + u_c + b_c)
        c' = f ⊙ c + (1 − f) ⊙ c̃
        o  = σ(a_o ⊙ h + u_o + c_o ⊙ c' + b_o)
        h' = o ⊙ tanh(c')

    Input ``x_t`` is ``u = (u_f | u_c | u_o)`` of size ``3 * hidden_size`` (gate-major),
    the input projection ``B x``. Parameters: ``a`` ``(3, hidden_size)`` =
    ``(a_f, a_c, a_o)``, ``peephole`` ``(2, hidden_size)`` = ``(c_f, c_o)`` and, unless
    ``bias=False``, ``bias`` ``(3, hidden_size)`` = ``(b_f, b_c, b_o)`` (zeros at
    initialisation).

    The state is a flat vector of size ``2 * hidden_size`` that interleaves cell and
    hidden state per channel, ``(c_0, h_0, c_1, h_1, ...)``, so that ``∂(c', h')/∂(c, h)``
    is block-diagonal with one 2x2 block per channel. Use :meth:`pack_state` /
    :meth:`unpack_state` to convert from/to ``(h, c)``.
    """

    jacobian = "block"
    block_size = 2
    num_gates = 3

    def __init__(self, hidden_size: int, *, recurrent_clip: float | None = None,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.state_size = 2 * hidden_size
        self.input_size = 3 * hidden_size
        self.recurrent_clip = check_clip(recurrent_clip)
        self.a = nn.Parameter(torch.empty(3, hidden_size, device=device, dtype=dtype))
        self.peephole = nn.Parameter(torch.empty(2, hidden_size, device=device, dtype=dtype))
        self.bias = (nn.Parameter(torch.empty(3, hidden_size, device=device, dtype=dtype))
                     if bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        xavier_normal_vector_(self.a)
        xavier_normal_vector_(self.peephole)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def recurrent_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, peephole)`` after the optional clipping."""
        return clipped(self.a, self.recurrent_clip), clipped(self.peephole, self.recurrent_clip)

    @staticmethod
    def pack_state(h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``(h, c)`` each ``(..., H)`` -> interleaved state ``(..., 2H)``."""
        return torch.stack((c, h), dim=-1).flatten(-2)

    @staticmethod
    def unpack_state(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interleaved state ``(..., 2H)`` -> ``(h, c)`` each ``(..., H)``: stride-2 views
        (one slice each: these run on every layer call, where host time counts)."""
        return state[..., 1::2], state[..., 0::2]

    def hidden(self, states: torch.Tensor) -> torch.Tensor:
        """``h`` of interleaved states ``(..., 2H)``: a stride-2 view ``(..., H)``."""
        return self.unpack_state(states)[0]

    def _step_parameters(self):
        """``(a_f, a_c, a_o, p_f, p_o, b_f, b_c, b_o)``: the rows of the clipped weights and
        of the bias (Nones without)."""
        (a_f, a_c, a_o), (p_f, p_o) = (w.unbind(0) for w in self.recurrent_weights())
        return a_f, a_c, a_o, p_f, p_o, *gate_biases(self.bias, 3)

    def _forward(self, u_f, u_c, u_o, state, parameters):
        a_f, a_c, a_o, p_f, p_o, b_f, b_c, b_o = parameters
        h, c = self.unpack_state(state)
        f = preactivation(u_f, a_f, h, b_f).addcmul_(p_f, c).sigmoid_()
        candidate = preactivation(u_c, a_c, h, b_c).tanh_()
        c_next = torch.lerp(candidate, c, f)
        o = preactivation(u_o, a_o, h, b_o).addcmul_(p_o, c_next).sigmoid_()
        tanh_c = torch.tanh(c_next)
        h_next = o * tanh_c
        return h, c, f, candidate, c_next, o, tanh_c, h_next

    def step(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        values = self._forward(*x.chunk(3, dim=-1), h_prev, self._step_parameters())
        return self.pack_state(values[-1], values[4])

    def sequence_stepper(self, x):
        if not runs_own_step(self, ParaLSTMCell, *_OWN_STEP):
            return super().sequence_stepper(x)
        parameters = self._step_parameters()
        u_f, u_c, u_o = (u.unbind(1) for u in x.chunk(3, dim=-1))

        def step(t, h_prev):
            values = self._forward(u_f[t], u_c[t], u_o[t], h_prev, parameters)
            return self.pack_state(values[-1], values[4])

        return step

    def taping_stepper(self, x):
        """The loop's step writing ``(f, c̃, o, tanh(c'))`` in place into a tape
        ``(B, T, 4, N)`` whose first three rows start as the biased pre-activations
        ``u + b`` (one pass for all steps instead of three bias adds per step)."""
        if not runs_own_step(self, ParaLSTMCell, *_OWN_STEP):
            return super().taping_stepper(x)
        n = self.hidden_size
        tape = x.new_empty(*x.shape[:-1], 4, n)
        pre = x.unflatten(-1, (3, n))
        if self.bias is None:
            tape[..., :3, :] = pre
        else:
            torch.add(pre, self.bias, out=tape[..., :3, :])
        a_f, a_c, a_o, p_f, p_o = self._step_parameters()[:5]
        f_steps, c_steps, o_steps, tanh_steps = (tape[..., i, :].unbind(1) for i in range(4))
        # the last state returned with its contiguous (h, c): the loop passes that state
        # back, and ops on contiguous halves run ~2x faster than on the interleaved views
        last = [None, None, None]

        def step(t, h_prev):
            h, c = last[1:] if h_prev is last[0] else self.unpack_state(h_prev)
            f = f_steps[t].addcmul_(a_f, h).addcmul_(p_f, c).sigmoid_()
            candidate = c_steps[t].addcmul_(a_c, h).tanh_()
            c_next = torch.lerp(candidate, c, f)
            o = o_steps[t].addcmul_(a_o, h).addcmul_(p_o, c_next).sigmoid_()
            h_next = o * torch.tanh(c_next, out=tanh_steps[t])
            # interleaved (c, h) in one op: a complex number's parts are stored that way
            # (pack_state's stack costs ~3x as much per step)
            last[:] = torch.view_as_real(torch.complex(c_next, h_next)).flatten(-2), h_next, c_next
            return last[0]

        return step, tape

    def compiled_loop(self, x):
        """The C loop and adjoint (:mod:`pararnn.cells.cpu_loop`) on the CPU, unless a
        subclass changed the step, a parametrization computes the weights (the loop reads
        the parameters themselves) or the C loops could not be built."""
        if not runs_own_step(self, ParaLSTMCell, *_OWN_WEIGHTS) or parametrize.is_parametrized(self):
            return None
        clip = self.recurrent_clip
        return cpu_loop.compiled_loop("lstm", x, lambda parameters: (
            clipped(parameters["a"], clip), clipped(parameters["peephole"], clip)))

    def step_and_jacobian(self, x, h_prev):
        parameters = self._step_parameters()
        a_f, a_c, a_o, p_f, p_o = parameters[:5]
        h, c, f, candidate, c_next, o, tanh_c, h_next = self._forward(*x.chunk(3, dim=-1), h_prev,
                                                                      parameters)
        df = f * (1 - f)
        dcand_dh = (1 - candidate * candidate) * a_c
        dc_dc = df * p_f * (c - candidate) + f
        dc_dh = df * a_f * (c - candidate) + (1 - f) * dcand_dh
        do = o * (1 - o)
        # h' = o(c') tanh(c'):  dh'/dX = do/dX tanh(c') + o (1 - tanh²) dc'/dX
        through_c = do * p_o * tanh_c + o * (1 - tanh_c * tanh_c)
        dh_dc = through_c * dc_dc
        dh_dh = through_c * dc_dh + do * a_o * tanh_c
        # rows (c', h'), columns (c, h), matching the interleaved layout
        # (..., H, 2, 2) blocks, stored entry-major (all H blocks' (0, 0) entries, then
        # (0, 1), ...): contiguous writes here, and the planar layout the PyTorch scan uses
        jac = torch.stack((dc_dc, dc_dh, dh_dc, dh_dh), dim=-2).unflatten(-2, (2, 2)).movedim(-1, -3)
        return self.pack_state(h_next, c_next), jac

    def linearize(self, x, h_prev, tape=None):
        """Analytic Jacobian and VJP (see :meth:`Cell.linearize`), from the derivatives of
        ``c'`` by the pre-activations of ``f`` and ``c̃``, of ``h'`` by that of ``o``, and the
        total ``∂h'/∂c'`` (directly and through ``o``'s peephole). The gates come from
        ``tape`` (:meth:`taping_stepper`) when given."""
        if not runs_own_step(self, ParaLSTMCell, *_OWN_STEP):
            return super().linearize(x, h_prev)
        parameters, bias = self._step_parameters(), self.bias  # bound now: see Cell.linearize
        a_f, a_c, a_o, p_f, p_o = parameters[:5]  # rows of the clipped a and peepholes
        with torch.no_grad():
            if tape is None:
                h, c, f, candidate, c_next, o, tanh_c, _ = self._forward(*x.chunk(3, dim=-1),
                                                                         h_prev, parameters)
            else:
                (h, c), (f, candidate, o, tanh_c) = self.unpack_state(h_prev), tape.unbind(-2)
                c_next = torch.lerp(candidate, c, f)
            # fused derivative kernels, one pass apiece
            d_f = _sigmoid_backward(c - candidate, f)  # ∂c'/∂pre_f = f(1-f)(c-c̃)
            d_c = _tanh_backward(torch.rsub(f, 1), candidate)  # ∂c'/∂pre_c = (1-f)(1-c̃²)
            d_o = _sigmoid_backward(tanh_c, o)  # ∂h'/∂pre_o = o(1-o) tanh(c')
            through_c = _tanh_backward(o, tanh_c).addcmul_(d_o, p_o)
            # rows (c', h'), columns (c, h), stored entry-major as step_and_jacobian does
            jac = torch.empty(*f.shape[:-1], 4, f.shape[-1], dtype=f.dtype, device=f.device)
            dc_dc, dc_dh, dh_dc, dh_dh = jac.unbind(-2)
            torch.addcmul(f, d_f, p_f, out=dc_dc)
            torch.mul(d_f, a_f, out=dc_dh).addcmul_(d_c, a_c)
            torch.mul(through_c, dc_dc, out=dh_dc)
            torch.mul(through_c, dc_dh, out=dh_dh).addcmul_(d_o, a_o)
            jac = jac.unflatten(-2, (2, 2)).movedim(-1, -3)

        def pullback(cotangent):
            pairs = []
            with torch.no_grad():
                grad_h, grad_c = self.unpack_state(cotangent)
                grad_c_next = torch.addcmul(grad_c, grad_h, through_c)  # total ∂L/∂c'
                grad_pre = torch.empty(*f.shape[:-1], 3, f.shape[-1], dtype=f.dtype, device=f.device)
                g_f, g_c, g_o = grad_pre.unbind(-2)
                torch.mul(grad_c_next, d_f, out=g_f)
                torch.mul(grad_c_next, d_c, out=g_c)
                torch.mul(grad_h, d_o, out=g_o)
                lead = tuple(range(grad_pre.dim() - 2))
                if x.requires_grad:
                    pairs.append((x, grad_pre.flatten(-2)))
                if h_prev.requires_grad:
                    grad_h_prev = torch.mul(g_f, a_f).addcmul_(g_c, a_c).addcmul_(g_o, a_o)
                    grad_c_prev = torch.mul(grad_c_next, f).addcmul_(g_f, p_f)
                    pairs.append((h_prev, self.pack_state(grad_h_prev, grad_c_prev)))
                # rows of the clipped weights: autograd adds them up into a and the peepholes
                for weight, grad, inner in ((a_f, g_f, h), (a_c, g_c, h), (a_o, g_o, h),
                                            (p_f, g_f, c), (p_o, g_o, c_next)):
                    if weight.requires_grad:
                        pairs.append((weight, (grad * inner).sum(lead)))
                if bias is not None and bias.requires_grad:
                    pairs.append((bias, grad_pre.sum(lead)))
            return pairs

        return jac, pullback

    def jacobian_value_is_step(self) -> bool:
        # both come from the same _forward unless a subclass replaced one of them
        return runs_own_step(self, ParaLSTMCell, *_OWN_STEP)

    def fused_solver(self):
        """The fused ParaLSTM kernels (:func:`pararnn.kernels.paralstm.paralstm_solve`)
        unless a subclass changed the step."""
        if not runs_own_step(self, ParaLSTMCell, *_OWN_WEIGHTS):
            return None
        return self._fused_solve

    fused_solver_writes_hidden = True  # the forward walk writes h alone as well

    def _fused_solve(self, pre, h0, resets, hidden=False, **options):
        from ..kernels.paralstm import paralstm_solve

        # the kernels clamp a and the peepholes themselves (recurrent_clip), as paragru's
        return paralstm_solve(pre, self.a, self.peephole, self.bias, h0, resets,
                              clip=self.recurrent_clip, hidden=hidden, **options)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, recurrent_clip={self.recurrent_clip}, "
                f"bias={self.bias is not None}")
