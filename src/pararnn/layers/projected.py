"""``ParaGRU`` and ``ParaLSTM``: a multi-head input projection feeding ParaGRUCell /
ParaLSTMCell, solved by :func:`pararnn.solve` (docs/DESIGN.md, "The cells")."""

from __future__ import annotations

import torch

from ..cells import ParaGRUCell, ParaLSTMCell
from ..solver import NewtonConfig
from ..solver.backends import select_fused
from .projection import MultiHeadProjection
from .rnn import SequenceModule


class _ProjectedRNN(SequenceModule):
    cell_class: type

    def __init__(self, input_size: int, hidden_size: int, *, num_heads: int = 1, bias: bool = True,
                 mode: str = "auto", newton: NewtonConfig | None = None, backend: str = "auto",
                 recurrent_clip: float | None = None, batch_first: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(mode=mode, newton=newton, backend=backend, batch_first=batch_first)
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"{type(self).__name__} parameters must be float32 or float64, got dtype={dtype}; "
                "keep the parameters in float32 and run under torch.autocast(device_type, "
                "dtype=torch.bfloat16) for mixed precision (the state math runs in float32)")
        self.input_size, self.hidden_size = input_size, hidden_size
        # the gate bias lives in the cell, where the fused kernels add it for free
        self.projection = MultiHeadProjection(
            input_size, hidden_size, self.cell_class.num_gates, num_heads=num_heads, bias=False,
            device=device, dtype=dtype)
        self.cell = self.cell_class(hidden_size, recurrent_clip=recurrent_clip, bias=bias,
                                    device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        """Draw the projection's and the cell's initial weights again (as at construction)."""
        self.projection.reset_parameters()
        self.cell.reset_parameters()

    def _run(self, x, h0, resets, cu_seqlens, hidden=False):
        weight_dtype = self.projection.weight.dtype
        autocast = torch.is_autocast_enabled(x.device.type)
        # e.g. after layer.half() (under autocast a decode copy's reduced-precision
        # projection weights compute what autocast does: the cell checks its own)
        if weight_dtype not in (torch.float32, torch.float64) and not autocast:
            raise TypeError(
                f"{type(self).__name__} parameters must be float32 or float64, got {weight_dtype}; "
                "keep the layer in float32 (layer.float()) and run under torch.autocast for "
                "mixed precision (the state math runs in float32)")
        if x.dtype != weight_dtype and not autocast:
            raise TypeError(
                f"x has dtype {x.dtype} but the layer's parameters are {weight_dtype}; pass x in "
                f"{weight_dtype}, or run under torch.autocast for mixed precision"
            )
        pre = self.projection.head_major(x) if self._head_major(x) else self.projection(x)
        return self._solve(self.cell, pre, h0, resets, cu_seqlens, hidden)

    def _head_major(self, x) -> bool:
        """Whether the projection hands the solver head-major pre-activations: several
        heads and batch-first ``(B, T, D)`` input for the cell's fused kernels, or for CPU
        training, whose C loop reads them in place too (one batched GEMM each way, and the
        copies into and out of the gate-major layout skipped; the solver makes the
        gate-major copy where it takes another path)."""
        projection = self.projection
        if not (projection.num_heads > 1 and type(projection) is MultiHeadProjection
                and projection.bias is None and x.dim() == 3 and self.batch_first):
            return False
        if x.device.type == "cpu" and torch.is_grad_enabled():
            return True
        return select_fused(self.cell, x, self.backend) is not None


class ParaGRU(_ProjectedRNN):
    """GRU with diagonal recurrence, solved in parallel over time (docs/DESIGN.md, "The cells").

    ``output, h_n = gru(x, h0=None, *, resets=None, cu_seqlens=None)``: ``x`` ``(B, T, input_size)``,
    ``output`` ``(B, T, hidden_size)``, ``h0``/``h_n`` ``(B, hidden_size)`` (no leading
    num_layers dim, unlike ``torch.nn.GRU``). Unbatched ``(T, input_size)`` works too.

    Args:
        num_heads: heads of the block-diagonal input projection.
        recurrent_clip: clamp the recurrent vectors ``a`` to ``[-c, c]`` (the paper uses 0.5
            for language models) so that Newton converges in a few iterations.
        mode, newton, backend: see :func:`pararnn.solve`.
    """

    cell_class = ParaGRUCell

    def forward(self, x, h0=None, *, resets=None, cu_seqlens=None):
        self._check_input(x, self.input_size, h0, self.hidden_size, cu_seqlens, resets)
        # the fused solve then writes a bf16 layer's output itself (no cast of the states)
        return self._run(x, h0, resets, cu_seqlens, hidden=True)


class ParaLSTM(_ProjectedRNN):
    """CIFG LSTM with peepholes and diagonal recurrence, solved in parallel over time.

    ``output, (h_n, c_n) = lstm(x, state=None, *, resets=None, cu_seqlens=None)`` with
    ``state = (h0, c0)`` each ``(B, hidden_size)``; other conventions as :class:`ParaGRU`.
    """

    cell_class = ParaLSTMCell

    def forward(self, x, state=None, *, resets=None, cu_seqlens=None):
        packed = None
        self._check_input(x, self.input_size, None, self.hidden_size, cu_seqlens, resets)
        if state is not None:
            if not (isinstance(state, (tuple, list)) and len(state) == 2):
                raise TypeError("state must be a tuple (h0, c0) or None")
            h0, c0 = state
            for name, part in (("h0", h0), ("c0", c0)):
                if part is None:
                    raise TypeError(f"state {name} is None: pass both h0 and c0, or state=None "
                                    f"to start from zeros")
                self._check_input(x, self.input_size, part, self.hidden_size, cu_seqlens,
                                  h0_name=f"state {name}")
            if h0.dtype != c0.dtype:
                raise TypeError(f"h0 and c0 must share one dtype, got {h0.dtype} and {c0.dtype}")
            if h0.device != x.device or c0.device != x.device:
                raise ValueError(f"state h0 and c0 must be on x's device {x.device}, got "
                                 f"{h0.device} and {c0.device}")
            packed = ParaLSTMCell.pack_state(h0, c0)
        # h only: the CPU training loop then writes it contiguously (pararnn.solve)
        output, final = self._run(x, packed, resets, cu_seqlens, hidden=True)
        h_n, c_n = ParaLSTMCell.unpack_state(final)
        return output, (h_n, c_n)
