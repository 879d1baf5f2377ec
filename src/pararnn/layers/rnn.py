"""``RNN``: apply any :class:`pararnn.Cell` over sequences, torch.nn.GRU style."""

from __future__ import annotations

import torch
from torch import nn

from ..solver import NewtonConfig, SolveInfo, check_cell, check_options, solve


class SequenceModule(nn.Module):
    """Shared options of every sequence layer: mode, Newton config, backend, batch_first."""

    def __init__(self, *, mode: str, newton: NewtonConfig | None, backend: str, batch_first: bool):
        super().__init__()
        check_options(mode, newton, backend)
        self.mode = mode
        self.newton = newton
        self.backend = backend
        self.batch_first = batch_first
        self.last_solve: SolveInfo | None = None

    def __setattr__(self, name, value):
        if name in ("mode", "newton", "backend"):
            options = {"mode": getattr(self, "mode", "auto"), "newton": getattr(self, "newton", None),
                       "backend": getattr(self, "backend", "auto"), name: value}
            check_options(**options)
        super().__setattr__(name, value)

    def _check_input(self, x, input_size: int, h0, state_size: int, cu_seqlens, resets=None,
                     h0_name: str = "h0") -> None:
        """Check ``x``, ``resets`` and the initial state as the user passed them (before any
        projection, packing, transposing or unsqueezing), so that errors quote the user's
        shapes. ``resets`` have ``x``'s shape without the features."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        layout = "(batch, time, features)" if self.batch_first else "(time, batch, features)"
        if x.dim() not in (2, 3) or x.shape[-1] != input_size:
            raise ValueError(
                f"x must have shape {layout} or (time, features) with features = "
                f"input_size ({input_size}), got {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"x must have batch >= 1 and time >= 1, got shape {tuple(x.shape)}")
        if resets is not None and not isinstance(resets, torch.Tensor):
            raise TypeError(f"resets must be a bool tensor, got {type(resets).__name__}")
        if resets is not None and resets.shape != x.shape[:-1]:
            axes = "(time,)" if x.dim() == 2 else layout.replace(", features", "")
            raise ValueError(f"resets must have shape {tuple(x.shape[:-1])} {axes}, x's without "
                             f"its features, got {tuple(resets.shape)}")
        if h0 is None:
            return
        if not isinstance(h0, torch.Tensor):
            raise TypeError(f"{h0_name} must be a torch.Tensor or None, got {type(h0).__name__}")
        if cu_seqlens is not None:
            if not (isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dim() == 1):
                return  # the solver names what is wrong with cu_seqlens
            expected, what = (cu_seqlens.numel() - 1, state_size), "one row per sequence of cu_seqlens"
        elif x.dim() == 2:
            expected, what = (state_size,), "unbatched x: (state_size,)"
        else:
            expected = (x.shape[0] if self.batch_first else x.shape[1], state_size)
            what = "(batch, state_size)"
        if tuple(h0.shape) != expected:
            raise ValueError(f"{h0_name} must have shape {expected} ({what}), got {tuple(h0.shape)}")

    def _solve(self, cell, x, h0, resets, cu_seqlens, hidden=False):
        """Run the solver on batch-first or time-first, batched or unbatched input
        (``hidden``: see :func:`pararnn.solve`). With ``cu_seqlens`` the initial and final
        states are one row per sequence, unbatched input too."""
        unbatched = x.dim() == 2
        per_sequence = cu_seqlens is not None
        if unbatched:
            x = x.unsqueeze(0)
            if h0 is not None and not per_sequence:
                h0 = h0.unsqueeze(0)
            resets = None if resets is None else resets.unsqueeze(0)
        elif not self.batch_first and x.dim() == 3:
            x = x.transpose(0, 1)
            resets = None if resets is None else resets.transpose(0, 1)
        states, h_n, info = solve(cell, x, h0, mode=self.mode, newton=self.newton, resets=resets,
                                  cu_seqlens=cu_seqlens, backend=self.backend, hidden=hidden)
        # plain attribute write: nn.Module.__setattr__'s checks are host time on every call
        object.__setattr__(self, "last_solve", info)
        if unbatched:
            return states.squeeze(0), h_n if per_sequence else h_n.squeeze(0)
        if not self.batch_first:
            states = states.transpose(0, 1)
        return states, h_n


class RNN(SequenceModule):
    """Apply ``cell`` along the time axis.

    ``output, h_n = rnn(x, h0=None, *, resets=None, cu_seqlens=None)`` with ``x`` of shape
    ``(B, T, input_size)`` (``(T, B, ...)`` if ``batch_first=False``; ``(T, input_size)``
    unbatched), ``output`` all states ``(B, T, state_size)`` and ``h_n`` the last state
    ``(B, state_size)``. ``resets`` has ``x``'s shape without the features (``(T, B)``
    time-first); with ``cu_seqlens``, ``h0`` and ``h_n`` have one row per sequence. See
    :func:`pararnn.solve` for the options; ``mode``, ``newton``
    and ``backend`` are settable attributes, and ``last_solve`` records what the last
    call did (:class:`pararnn.SolveInfo`).
    """

    def __init__(self, cell, *, mode: str = "auto", newton: NewtonConfig | None = None,
                 backend: str = "auto", batch_first: bool = True) -> None:
        super().__init__(mode=mode, newton=newton, backend=backend, batch_first=batch_first)
        check_cell(cell)
        self.cell = cell

    def forward(self, x, h0=None, *, resets=None, cu_seqlens=None):
        self._check_input(x, self.cell.input_size, h0, self.cell.state_size, cu_seqlens, resets)
        return self._solve(self.cell, x, h0, resets, cu_seqlens)
