"""The ``Cell`` base class: one step ``h_t = f(h_{t-1}, x_t)`` plus its Jacobian structure."""

from __future__ import annotations

import torch
from torch import nn

from ..structure import JacobianStructure


class Cell(nn.Module):
    """Base class for recurrent cells solved by :class:`pararnn.RNN`.

    A subclass sets, usually in ``__init__``:

    * ``input_size``: features of ``x_t``;
    * ``state_size``: size ``N`` of ``h_t`` (a flat vector);
    * ``jacobian``: ``"dense"``, ``"diagonal"`` or ``"block"`` (then also ``block_size``),
      the structure of ``∂f/∂h``. For ``"block"`` with ``block_size=k`` the state is
      viewed as ``(N // k, k)``: consecutive groups of ``k`` entries form one block;

    and implements :meth:`step` on batched tensors. Jacobians are then obtained
    automatically with ``torch.func``; override :meth:`step_and_jacobian` to supply an
    analytic one. The declared structure must be right: one that drops non-zero
    entries is found on the first parallel solve or loop-trained call of the cell (one
    probe of the Jacobian against ``step``'s JVP) and raises a ValueError.
    """

    input_size: int
    state_size: int
    jacobian: str = "dense"
    block_size: int = 1

    def step(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """``h_t = f(h_{t-1}, x_t)`` for ``x``: ``(..., input_size)``, ``h_prev``: ``(..., state_size)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement step(x, h_prev)")

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor, *, jacobian: bool = False,
                linearize: bool = False, tape: torch.Tensor | None = None):
        """:meth:`step`, or :meth:`step_and_jacobian` when ``jacobian=True``, or
        :meth:`linearize` when ``linearize=True`` (with ``tape`` when given).

        The solver calls cells through ``forward`` under ``torch.func.functional_call``
        so that parameters swapped in by the caller (``functional_call``, FSDP, ...) are
        the ones differentiated.
        """
        if linearize:
            return self.linearize(x, h_prev) if tape is None else self.linearize(x, h_prev, tape=tape)
        if jacobian:
            return self.step_and_jacobian(x, h_prev)
        return self.step(x, h_prev)

    # Whether the fused solver writes :meth:`hidden` of the states itself on request
    # (``hidden=True``, see :meth:`fused_solver`): a cell whose output is part of its state
    # (ParaLSTM's h) then hands the layer a tensor of its own, whose gradient the fused
    # backward reads as it is, instead of a strided view of all the states; in pre's dtype,
    # so that a bf16 layer's output and its gradient are bf16 (ParaGRU's copy of its states).
    fused_solver_writes_hidden = False

    def hidden(self, states: torch.Tensor) -> torch.Tensor:
        """The part of ``states`` ``(..., state_size)`` that a layer outputs: all of it by
        default; ParaLSTM's ``h``."""
        return states

    def sequence_stepper(self, x: torch.Tensor):
        """:meth:`step` bound to a whole sequence ``x`` ``(B, T, input_size)``: a function
        ``(t, h_prev) -> step(x[:, t], h_prev)`` that the step loop calls once per step.

        A cell may prepare here, once per sequence, what does not depend on the state
        (clipped weights, per-step views of ``x``), so that a step runs only its
        arithmetic: on a CPU the loop's cost is the number of ops per step.
        """
        inputs = x.unbind(1)  # one call for all the per-step views
        return lambda t, h_prev: self.step(inputs[t], h_prev)

    def taping_stepper(self, x: torch.Tensor):
        """``(step, tape)``: a :meth:`sequence_stepper` for a loop without autograd that also
        records, per step, what :meth:`linearize` would recompute (``tape`` ``(B, T, …)``,
        filled as the loop runs), so that the loop's backward can pass
        ``linearize(x, h_prev, tape=tape[:, steps])`` instead. The default records nothing
        (``tape`` None); ParaGRU and ParaLSTM record their gates.
        """
        return self.sequence_stepper(x), None

    def compiled_loop(self, x: torch.Tensor):
        """The step loop and its adjoint backward as compiled code for ``x``, or None.

        Training through the loop (:class:`~pararnn.solver.newton.LoopSolve`) runs this
        instead of :meth:`taping_stepper` and :meth:`linearize` when a cell returns one:
        ParaGRU and ParaLSTM on the CPU (:class:`pararnn.cells.cpu_loop.CompiledLoop`, C
        loops built at first use). None by default.
        """
        return None

    def fused_solver(self):
        """A fused whole-sequence solve for this cell, or None (the generic Newton path).

        The solver's dispatch hook (docs/DESIGN.md, "Solver/kernel contract"): a cell with
        a fused kernel returns a callable ``solve(pre, h0, resets, *, rounds, verify_tol,
        sequential) -> (states, report)`` giving float32 states ``(B, T, state_size)``,
        differentiable with respect to ``pre``, ``h0`` and the cell's parameters, and a
        report with ``segments``, ``boundary_rounds`` and ``fell_back`` (device flags or
        None). ``pre`` is ``(B, T, input_size)``, or ``(H, B, T, input_size / H)`` where
        the caller passed head-major pre-activations (:class:`pararnn.layout.HeadMajor`);
        the solver calls it only for float32/bfloat16 input on a device where Triton runs.
        A cell that sets :attr:`fused_solver_writes_hidden` also takes ``hidden=True``
        and then returns ``(states, hidden, report)``, ``hidden`` being
        :meth:`hidden` of the states, contiguous, in the dtype of ``pre``.
        """
        return None

    def jacobian_value_is_step(self) -> bool:
        """Whether :meth:`step_and_jacobian` computes its value with the same differentiable
        ops as :meth:`step`. Then the solver's backward makes one call under autograd for
        both the Jacobians (detached) and the graph of the step's VJP, instead of two cell
        evaluations. False unless a cell declares it (ParaGRUCell and ParaLSTMCell do)."""
        return False

    def linearize(self, x: torch.Tensor, h_prev: torch.Tensor):
        """What the backward needs at a batch of steps: ``(jac, pullback)``.

        ``jac`` is ``∂f/∂h_prev`` in this cell's structure (no autograd history).
        ``pullback(cotangent)`` returns pairs ``(tensor, grad)``: autograd from those
        tensors back to ``x``, ``h_prev`` and the parameters completes the VJP of the
        step with ``cotangent`` (``(..., state_size)``). Called in grad mode on inputs
        that require grad where a gradient is wanted.

        The default records the step's autograd graph (once for value and Jacobian when
        :meth:`jacobian_value_is_step`) and pairs its value with the cotangent. A cell
        with an analytic VJP (ParaGRUCell, ParaLSTMCell) returns the gradients of its
        inputs and (clipped) weights instead, so the backward never builds a graph of
        the whole step.
        """
        if self.jacobian_value_is_step():  # one cell evaluation for both
            value, jac = self.step_and_jacobian(x, h_prev)
            jac = jac.detach()
        else:
            value = self.step(x, h_prev)
            with torch.no_grad():
                _, jac = self.step_and_jacobian(x, h_prev)
        return jac, lambda cotangent: ((value, cotangent),)

    @property
    def structure(self) -> JacobianStructure:
        block_size = self.block_size if self.jacobian == "block" else 1
        return JacobianStructure(self.jacobian, block_size)

    def check_definition(self) -> None:
        """Raise a clear error if the subclass left out or mis-set a required attribute."""
        for name in ("input_size", "state_size"):
            value = getattr(self, name, None)
            if not isinstance(value, int) or value < 1:
                raise TypeError(
                    f"{type(self).__name__}.{name} must be a positive int, got {value!r}"
                )
        self.structure.check_state_size(self.state_size)

    def step_and_jacobian(
        self, x: torch.Tensor, h_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``f(h_prev, x)`` and ``∂f/∂h_prev`` stored in this cell's structure.

        The default uses forward-mode AD: one JVP for a diagonal Jacobian, ``k``
        JVPs for ``k x k`` blocks, ``N`` for a dense one, vectorised with ``vmap``.
        """
        structure = self.structure
        n = h_prev.shape[-1]

        def f(h: torch.Tensor) -> torch.Tensor:
            return self.step(x, h)

        if structure.kind == "diagonal":
            return torch.func.jvp(f, (h_prev,), (torch.ones_like(h_prev),))

        k = structure.block_size if structure.kind == "block" else n
        # Tangent j is 1 on entry j of every block: its JVP is column j of each block.
        basis = torch.eye(k, dtype=h_prev.dtype, device=h_prev.device)
        tangents = basis.repeat(1, n // k)  # (k, n)
        tangents = tangents.reshape(k, *([1] * (h_prev.dim() - 1)), n).expand(k, *h_prev.shape)

        def column(tangent: torch.Tensor) -> torch.Tensor:
            return torch.func.jvp(f, (h_prev,), (tangent,))[1]

        value = f(h_prev)
        columns = torch.func.vmap(column)(tangents)  # (k, ..., n)
        if structure.kind == "dense":
            return value, columns.movedim(0, -1)  # J[..., i, j] = columns[j, ..., i]
        blocks = columns.unflatten(-1, (n // k, k))  # (k=j, ..., nb, i)
        return value, blocks.movedim(0, -1)  # (..., nb, i, j)
