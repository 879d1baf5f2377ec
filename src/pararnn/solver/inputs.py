"""Validation of solver inputs, and the bookkeeping of where sequences (re)start.

Every check runs before any work, and errors name the argument, what it got and
what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .._reuse import LastTensorCache
from ..cells.base import Cell
from ..layout import HeadMajor
from .config import NewtonConfig

MODES = ("auto", "parallel", "sequential")
BACKENDS = ("auto", "torch", "triton")
_REDUCED = (torch.bfloat16, torch.float16)


@dataclass
class Sequences:
    """Where each step takes its previous state from.

    ``starts[b, t]`` is True where step t starts from an initial state (t = 0, a reset,
    a document boundary) rather than from ``h[b, t-1]``. The initial state of each
    sequence is ``h0[b]`` or, with ``cu_seqlens``, ``h0[segment_ids[t]]``. ``starts`` is
    built on first use: the fused kernels without resets never need it.
    """

    batch: int
    steps: int
    device: torch.device
    resets: Optional[torch.Tensor] = None  # (B, T) bool, as the caller passed them
    bounds: Optional[torch.Tensor] = None  # (S,) long, first step of each sequence (cu_seqlens)
    segment_ids: Optional[torch.Tensor] = None  # (T,) long, only with cu_seqlens
    ends: Optional[torch.Tensor] = None  # (S,) long, last step of each sequence (cu_seqlens)

    _starts: Optional[torch.Tensor] = None  # given with cu_seqlens (built with its checks)

    @property
    def starts(self) -> torch.Tensor:
        """``(B, T)`` bool: where a sequence starts."""
        # built on first use and kept (not functools.cached_property: its lock stops
        # torch.compile on Python 3.11)
        if self._starts is None:
            starts = torch.zeros(self.batch, self.steps, dtype=torch.bool, device=self.device)
            starts[:, 0] = True
            if self.resets is not None:
                starts = starts | self.resets
            self._starts = starts
        return self._starts

    def initial_states(self, h0: torch.Tensor, batch: int, steps: int) -> torch.Tensor:
        """``(B, T, N)`` initial state for every step (a broadcast view without cu_seqlens)."""
        if self.segment_ids is None:
            return h0.unsqueeze(1).expand(batch, steps, h0.shape[-1])
        return h0[self.segment_ids].unsqueeze(0)

    @property
    def starts_only_at_zero(self) -> bool:
        """Whether every row is one sequence from t = 0 (no resets, no cu_seqlens)."""
        return self.resets is None and self.bounds is None

    def previous_states(self, states: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        """``h_{t-1}`` as each step sees it: shifted states, initial states at starts."""
        batch, steps, _ = states.shape
        if self.starts_only_at_zero:  # one concatenation instead of a shift and a select
            return torch.cat((h0.unsqueeze(1), states[:, :-1]), dim=1)
        shifted = torch.cat((torch.zeros_like(states[:, :1]), states[:, :-1]), dim=1)
        init = self.initial_states(h0, batch, steps)
        return torch.where(self.starts.unsqueeze(-1), init, shifted)

    def final_states(self, states: torch.Tensor) -> torch.Tensor:
        """``h_n``: ``(B, N)``, or ``(S, N)`` (one per sequence) with cu_seqlens; a tensor of
        its own, so that keeping it does not keep all the states alive."""
        if self.ends is None:
            return states.select(1, -1).clone()
        return states[0, self.ends]


def _parameters(cell: Cell) -> list:
    """``list(cell.parameters())``, read straight from the module when it has no
    submodules (the reference cells): ``parameters()`` walks the module tree, host time
    on every call of a small solve."""
    if cell._modules:
        return list(cell.parameters())
    return [p for p in cell._parameters.values() if p is not None]


def check_cell(cell, params: list | None = None) -> torch.dtype | None:
    """Check the cell's definition; return its parameters' dtype (None if it has none).
    ``params``: the cell's parameters, when the caller has listed them already."""
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a pararnn.Cell, got {type(cell).__name__}")
    cell.check_definition()
    dtypes = {p.dtype for p in (cell.parameters() if params is None else params)
              if p.is_floating_point()}
    if len(dtypes) > 1:
        raise TypeError(f"cell parameters must share one dtype, got {sorted(map(str, dtypes))}")
    dtype = dtypes.pop() if dtypes else None
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"cell parameters must be float32 or float64, got {dtype}; keep the cell in "
            "float32 and pass bfloat16 inputs (the state math runs in float32)"
        )
    return dtype


def compute_dtype(x: torch.Tensor, param_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the state math runs in: float32 for reduced-precision inputs."""
    if x.dtype not in (torch.float32, torch.float64, *_REDUCED):
        raise TypeError(f"x must be float32, float64, bfloat16 or float16, got {x.dtype}")
    wanted = torch.float32 if x.dtype in _REDUCED else x.dtype
    if param_dtype is not None and param_dtype != wanted:
        raise TypeError(
            f"x has dtype {x.dtype} but the cell's parameters are {param_dtype}; "
            f"expected x of dtype {param_dtype}"
            + (" (or bfloat16/float16)" if param_dtype == torch.float32 else "")
        )
    return wanted


def check_inputs(cell, x, h0, resets, cu_seqlens) -> tuple[torch.dtype, Sequences]:
    """Validate everything a solve needs; return the compute dtype and the sequence layout.
    Metadata only (shapes, dtypes, devices): no tensor is read, except ``cu_seqlens``."""
    params = _parameters(cell) if isinstance(cell, Cell) else None
    param_dtype = check_cell(cell, params)
    if not isinstance(x, (torch.Tensor, HeadMajor)):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(
            f"x must have shape (batch, time, input_size), got {tuple(x.shape)} ({x.dim()} dims)"
        )
    batch, steps, features = x.shape
    if features != cell.input_size:
        raise ValueError(
            f"x has {features} features in its last dim but the cell expects "
            f"input_size={cell.input_size}"
        )
    if steps < 1 or batch < 1:
        raise ValueError(f"x must have batch >= 1 and time >= 1, got shape {tuple(x.shape)}")
    dtype = compute_dtype(x, param_dtype)
    if params and params[0].device != x.device:
        raise ValueError(f"x is on {x.device} but the cell's parameters are on {params[0].device}")

    if resets is not None and cu_seqlens is not None:
        raise ValueError("pass either resets or cu_seqlens, not both")
    sequences = _sequences(x, resets, cu_seqlens)
    n_init = batch if sequences.ends is None else sequences.ends.numel()

    if h0 is not None:
        if not isinstance(h0, torch.Tensor):
            raise TypeError(f"h0 must be a torch.Tensor or None, got {type(h0).__name__}")
        expected = (n_init, cell.state_size)
        if tuple(h0.shape) != expected:
            what = "number of sequences in cu_seqlens" if sequences.ends is not None else "batch"
            raise ValueError(
                f"h0 must have shape (N_init, state_size) = {expected} (N_init = {what}), "
                f"got {tuple(h0.shape)}"
            )
        if h0.dtype not in (x.dtype, dtype):
            allowed = x.dtype if x.dtype == dtype else f"{x.dtype} (the dtype of x) or {dtype} (the solve's)"
            raise TypeError(f"h0 has dtype {h0.dtype}, expected {allowed}")
        if h0.device != x.device:
            raise ValueError(f"h0 is on {h0.device} but x is on {x.device}")
    return dtype, sequences


def _sequences(x: torch.Tensor, resets, cu_seqlens) -> Sequences:
    batch, steps, _ = x.shape
    if resets is not None:
        if not isinstance(resets, torch.Tensor) or resets.dtype != torch.bool:
            raise TypeError(
                f"resets must be a bool tensor, got "
                f"{resets.dtype if isinstance(resets, torch.Tensor) else type(resets).__name__}"
            )
        if tuple(resets.shape) != (batch, steps):
            raise ValueError(
                f"resets must have shape (batch, time) = {(batch, steps)}, got {tuple(resets.shape)}"
            )
        if resets.device != x.device:
            raise ValueError(f"resets is on {resets.device} but x is on {x.device}")
        return Sequences(batch, steps, x.device, resets=resets)
    if cu_seqlens is None:
        return Sequences(batch, steps, x.device)

    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError("cu_seqlens must be an int32/int64 tensor of cumulative sequence lengths")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be 1-D with at least 2 entries, got shape {tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"with cu_seqlens, x must hold the packed sequences in batch 1, got batch {batch}")
    bounds, segment_ids, ends, starts = _packed_bookkeeping(cu_seqlens, steps, x.device)
    return Sequences(batch, steps, x.device, bounds=bounds, segment_ids=segment_ids, ends=ends,
                     _starts=starts)


# The last cu_seqlens checked and its bookkeeping. Checking the values reads them on the
# host, which waits for the GPU when they live there; every layer of a model receives the
# same tensor, and a training loop may reuse it, so an unchanged tensor is checked once,
# and its step starts (which the fused kernels take as resets, packed once per tensor
# too) are built once.
_last_packed = LastTensorCache()


def _packed_bookkeeping(cu_seqlens: torch.Tensor, steps: int, device: torch.device):
    """``(bounds, segment_ids, ends, starts)`` of :class:`Sequences` from checked
    ``cu_seqlens``."""
    return _last_packed.get(None, cu_seqlens, (steps, device),
                            lambda: _check_packed(cu_seqlens, steps, device))


def _check_packed(cu_seqlens: torch.Tensor, steps: int, device: torch.device):
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != steps or any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(
            f"cu_seqlens must rise strictly from 0 to the sequence length {steps}, got {bounds}"
        )
    bounds_t = torch.as_tensor(bounds, device=device, dtype=torch.long)
    lengths = bounds_t.diff()
    # output_size: without it the result's length is read back from the device
    segment_ids = torch.repeat_interleave(torch.arange(lengths.numel(), device=device), lengths,
                                          output_size=steps)
    starts = torch.zeros(1, steps, dtype=torch.bool, device=device)
    starts[0, bounds_t[:-1]] = True
    return bounds_t[:-1], segment_ids, bounds_t[1:] - 1, starts


def check_options(mode, newton, backend) -> NewtonConfig:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if newton is None:
        return NewtonConfig()
    if not isinstance(newton, NewtonConfig):
        raise TypeError(f"newton must be a pararnn.NewtonConfig or None, got {type(newton).__name__}")
    return newton
