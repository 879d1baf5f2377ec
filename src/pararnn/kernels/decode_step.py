"""One fused decode step of the ParaGRU / ParaLSTM cells for a batch of single tokens.

A decode step of a ParaRNN layer is the input projection of one token (a matrix product,
left to cuBLAS) and one cell step: a dozen elementwise operations that eager PyTorch runs
as a dozen kernels, each reading and writing ``(B, N)`` tensors. These kernels do the
gates and the state update in one pass: each program reads the pre-activations of a
block of channels of one row, the recurrent vectors (clipped in-kernel) and the previous
state, and writes the new state, possibly in place over the old one (every entry is read
before it is written by the same program). Math in float32 whatever the input dtype.

Layouts as the cells: ``pre`` ``(B, 3N)`` gate-major, ``a`` / ``bias`` ``(3, N)``,
``peephole`` ``(2, N)``, states ``(B, N)`` float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._fused_common import sigmoid, tanh


@triton.jit
def _load3(PTR, offs, mask, stride):
    """Entries ``offs`` of rows 0, 1, 2 of a row-major ``(3, stride)`` array, as float32."""
    return (tl.load(PTR + offs, mask=mask, other=0.0).to(tl.float32),
            tl.load(PTR + stride + offs, mask=mask, other=0.0).to(tl.float32),
            tl.load(PTR + 2 * stride + offs, mask=mask, other=0.0).to(tl.float32))


@triton.jit
def _gates(PRE, AW, BIAS, row, offs, mask, N, clip,
           HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr):
    u0, u1, u2 = _load3(PRE + row * 3 * N, offs, mask, N)
    if HAS_BIAS:
        b0, b1, b2 = _load3(BIAS, offs, mask, N)
        u0, u1, u2 = u0 + b0, u1 + b1, u2 + b2
    a0, a1, a2 = _load3(AW, offs, mask, N)
    if HAS_CLIP:
        a0 = tl.minimum(tl.maximum(a0, -clip), clip)
        a1 = tl.minimum(tl.maximum(a1, -clip), clip)
        a2 = tl.minimum(tl.maximum(a2, -clip), clip)
    return u0, u1, u2, a0, a1, a2


@triton.jit
def _gru_step_kernel(PRE, AW, BIAS, H, HOUT, N, clip,
                     HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr, BN: tl.constexpr):
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BN + tl.arange(0, BN)
    mask = offs < N
    uz, ur, uh, a_z, a_r, a_h = _gates(PRE, AW, BIAS, row, offs, mask, N, clip, HAS_BIAS, HAS_CLIP)
    h = tl.load(H + row * N + offs, mask=mask, other=0.0).to(tl.float32)
    z = sigmoid(a_z * h + uz)
    r = sigmoid(a_r * h + ur)
    cand = tanh(a_h * (r * h) + uh)
    tl.store(HOUT + row * N + offs, (h + z * (cand - h)).to(HOUT.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_step_kernel(PRE, AW, PEEP, BIAS, H, C, HOUT, COUT, N, clip,
                      HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr, BN: tl.constexpr):
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BN + tl.arange(0, BN)
    mask = offs < N
    uf, uc, uo, a_f, a_c, a_o = _gates(PRE, AW, BIAS, row, offs, mask, N, clip, HAS_BIAS, HAS_CLIP)
    p_f = tl.load(PEEP + offs, mask=mask, other=0.0).to(tl.float32)
    p_o = tl.load(PEEP + N + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_CLIP:
        p_f = tl.minimum(tl.maximum(p_f, -clip), clip)
        p_o = tl.minimum(tl.maximum(p_o, -clip), clip)
    h = tl.load(H + row * N + offs, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(C + row * N + offs, mask=mask, other=0.0).to(tl.float32)
    f = sigmoid(a_f * h + uf + p_f * c)
    cand = tanh(a_c * h + uc)
    c_next = cand + f * (c - cand)
    o = sigmoid(a_o * h + uo + p_o * c_next)
    tl.store(HOUT + row * N + offs, (o * tanh(c_next)).to(HOUT.dtype.element_ty), mask=mask)
    tl.store(COUT + row * N + offs, c_next.to(COUT.dtype.element_ty), mask=mask)


def _check(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape or not tensor.is_contiguous():
        raise ValueError(f"{name} must be a contiguous tensor of shape {shape}, got "
                         f"{tuple(tensor.shape)}{'' if tensor.is_contiguous() else ' (not contiguous)'}")


def _launch_shape(batch: int, n: int) -> tuple[tuple[int, int], int]:
    block = min(1024, triton.next_power_of_2(n))
    return (triton.cdiv(n, block), batch), block


def gru_step(pre: torch.Tensor, cell, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """:meth:`pararnn.ParaGRUCell.step` of ``pre`` ``(B, 3N)`` from ``h`` ``(B, N)`` into
    ``out`` (a new tensor like ``h`` by default; may be ``h`` itself)."""
    batch, n = h.shape
    out = torch.empty_like(h) if out is None else out
    for name, tensor, shape in (("pre", pre, (batch, 3 * n)), ("h", h, (batch, n)),
                                ("out", out, (batch, n)), ("a", cell.a, (3, n))):
        _check(name, tensor, shape)
    grid, block = _launch_shape(batch, n)
    bias = cell.bias if cell.bias is not None else cell.a
    clip = cell.recurrent_clip
    _gru_step_kernel[grid](pre, cell.a, bias, h, out, n, 0.0 if clip is None else clip,
                           HAS_BIAS=cell.bias is not None, HAS_CLIP=clip is not None, BN=block)
    return out


def lstm_step(pre: torch.Tensor, cell, h: torch.Tensor, c: torch.Tensor,
              out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`pararnn.ParaLSTMCell.step` of ``pre`` ``(B, 3N)`` from ``(h, c)`` each
    ``(B, N)``; returns ``(h', c')``, written into ``out`` when given (may be ``(h, c)``)."""
    batch, n = h.shape
    h_out, c_out = (torch.empty_like(h), torch.empty_like(c)) if out is None else out
    for name, tensor, shape in (("pre", pre, (batch, 3 * n)), ("h", h, (batch, n)), ("c", c, (batch, n)),
                                ("h_out", h_out, (batch, n)), ("c_out", c_out, (batch, n)),
                                ("a", cell.a, (3, n)), ("peephole", cell.peephole, (2, n))):
        _check(name, tensor, shape)
    grid, block = _launch_shape(batch, n)
    bias = cell.bias if cell.bias is not None else cell.a
    clip = cell.recurrent_clip
    _lstm_step_kernel[grid](pre, cell.a, cell.peephole, bias, h, c, h_out, c_out, n,
                            0.0 if clip is None else clip, HAS_BIAS=cell.bias is not None,
                            HAS_CLIP=clip is not None, BN=block)
    return h_out, c_out
