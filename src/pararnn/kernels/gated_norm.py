"""The gated RMSNorm after the ParaRNN cell, ``RMSNorm(h) * silu(gate)``, one kernel each way.

The op: ``gated_rms_norm(h, gate, weight, eps, out_dtype) -> y`` over the last dim ``N``:

    y = h / sqrt(mean(h^2) + eps) * weight * silu(gate)

differentiable (autograd Function below), and ``gated_rms_norm_naive``, the plain PyTorch
ops of :class:`pararnn.models.lm.GatedRMSNorm` that it must match.

Why a kernel: the plain ops (or inductor's code for them) read ``h`` and ``gate`` once
for the forward and twice for the backward, where the row reduction of the input
gradient and the column reduction of the weight gradient are separate passes (on the
H200, inductor's three kernels took ~150 µs per layer of a ``small`` LM step at T = 512,
where the bytes the norm must move take ~65 µs). Here the forward is one pass over ``h`` and ``gate``
and the backward one pass over ``h``, ``gate`` and ``dy``: each program owns whole rows
(tokens) of ``N`` channels, so ``1 / rms`` and the ``mean(dn * n)`` term of the input
gradient are reductions inside the program, and the backward's programs walk several
row blocks each, summing the weight gradient in registers and writing one partial row
each; one ``sum`` over those rows reduces them afterwards, in a fixed order, so the
gradient is the same bits every run. ``1 / rms`` is recomputed in the backward from
``h`` (one row sum) rather than stored.

Dtypes: ``h`` and ``gate`` may differ (a bfloat16 gate from the input projection under
autocast, a float32 cell output), the math is in float32 (float64 when any operand is
float64), the output is in ``out_dtype``, and the gradients come back in the dtypes of
``h``, ``gate`` and ``weight`` (the weight's reduced in the math dtype). ``weight`` is used as it is
(the plain ops round it to ``h``'s dtype first). Rows of ``N`` up to :data:`MAX_WIDTH`
channels; the module keeps the plain ops for wider ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._grad import needs_grad
from ._fused_common import (acc_dtype, cdiv, check_block_operands, fused_op, host_cache,
                            launcher, math_dtype, multiprocessors, next_power_of_2,
                            reject_double_backward, sigmoid, tl, triton, unit_channel_stride)

__all__ = ["gated_rms_norm", "gated_rms_norm_naive", "forward", "backward", "MAX_WIDTH"]

#: Widest row the kernels take: a program holds whole rows in registers, 8 elements of
#: each input per thread on up to 16 warps (a wider row would need more per thread).
MAX_WIDTH = 4096
# Elements of each input a program holds at once (rows of a block x the padded width): on
# the GPU 16 per thread of 4 warps (four rows of 512 channels, two of 1024), wider rows one
# per program on up to 16 warps. Measured on the H200 (`benchmarks/gpu_gated_norm.py
# --sweep`, results/gpu_h200_2026-12-05/c1/norm): forward + backward of 32x512x1024 in
# 100 us against 110 us at 1024 elements per program, the same at 1536 and 2048 channels.
# Compiled for sm_90 the backward takes 115-160 registers per thread, no spills
# (`benchmarks/kernel_resources.py --norm`, results/cpu/kernel_resources_norm_cpu20.json).
# On the CPU (Triton's interpreter) two-row blocks, so that the tests' small shapes span
# several blocks, a ragged last one, and backward programs of several blocks each.
CUDA_TILE_ELEMENTS = 2048
CPU_TILE_ELEMENTS = 64
# Backward programs per SM: each walks a run of row blocks and writes one partial row of
# the weight gradient, so fewer programs mean fewer partial rows to sum, more mean more
# loads in flight (at 80-96 registers per thread an SM holds 5-6 programs of 4 warps).
PROGRAMS_PER_SM = 8


@triton.jit
def _row_offsets(block, ROWS, T, sb, st, BR: tl.constexpr):
    """Rows ``block * BR ...`` of the flattened ``(B*T)`` rows: the mask of those that
    exist and their element offsets in a tensor of row strides ``(sb, st)``."""
    r = (block * BR + tl.arange(0, BR)).to(tl.int64)
    return r < ROWS, (r // T) * sb + (r % T) * st


@triton.jit
def _inverse_rms(h, N, eps):
    """``1 / sqrt(mean(h^2) + eps)`` of each row of ``h`` ``(BR, BN)`` (padding zero), in
    ``h``'s dtype: torch.compile's launcher passes ``eps`` as a float64 scalar, which would
    otherwise carry the rows' arithmetic to float64."""
    return 1.0 / tl.sqrt(tl.sum(h * h, axis=1) / N + tl.cast(eps, h.dtype))


@triton.jit
def _gated_norm_fwd_kernel(H, G, W, Y, ROWS, T, N, shb, sht, sgb, sgt, eps,
                           ACC: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr):
    cols = tl.arange(0, BN)
    cm = cols < N
    rm, h_rows = _row_offsets(tl.program_id(0), ROWS, T, shb, sht, BR)
    _, g_rows = _row_offsets(tl.program_id(0), ROWS, T, sgb, sgt, BR)
    m = rm[:, None] & cm[None, :]
    h = tl.load(H + h_rows[:, None] + cols[None, :], mask=m, other=0.0).to(ACC)
    g = tl.load(G + g_rows[:, None] + cols[None, :], mask=m, other=0.0).to(ACC)
    w = tl.load(W + cols, mask=cm, other=0.0).to(ACC)
    y = h * _inverse_rms(h, N, eps)[:, None] * w[None, :] * (g * sigmoid(g))
    r = (tl.program_id(0) * BR + tl.arange(0, BR)).to(tl.int64)
    tl.store(Y + r[:, None] * N + cols[None, :], y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _gated_norm_bwd_kernel(H, G, W, DY, DH, DG, PART, ROWS, T, N, shb, sht, sgb, sgt, eps,
                           blocks_per_program, ACC: tl.constexpr, BR: tl.constexpr,
                           BN: tl.constexpr):
    # With n = h / rms (rows), s = silu(g):  y = n * w * s, so
    #   dg = dy * n * w * silu'(g),   dw = sum over rows of dy * s * n,
    #   dh = (dn - n * mean(dn * n)) / rms  with  dn = dy * s * w.
    cols = tl.arange(0, BN)
    cm = cols < N
    w = tl.load(W + cols, mask=cm, other=0.0).to(ACC)
    grad_w = tl.zeros([BN], dtype=ACC)
    first = tl.program_id(0) * blocks_per_program
    for block in range(first, tl.minimum(first + blocks_per_program, tl.cdiv(ROWS, BR))):
        rm, h_rows = _row_offsets(block, ROWS, T, shb, sht, BR)
        _, g_rows = _row_offsets(block, ROWS, T, sgb, sgt, BR)
        m = rm[:, None] & cm[None, :]
        r = (block * BR + tl.arange(0, BR)).to(tl.int64)
        dense = r[:, None] * N + cols[None, :]
        h = tl.load(H + h_rows[:, None] + cols[None, :], mask=m, other=0.0).to(ACC)
        g = tl.load(G + g_rows[:, None] + cols[None, :], mask=m, other=0.0).to(ACC)
        dy = tl.load(DY + dense, mask=m, other=0.0).to(ACC)
        inv_rms = _inverse_rms(h, N, eps)[:, None]
        normed = h * inv_rms
        sig = sigmoid(g)
        dy_silu = dy * (g * sig)
        grad_w += tl.sum(dy_silu * normed, axis=0)
        grad_g = dy * normed * w[None, :] * sig * (1.0 + g * (1.0 - sig))
        grad_normed = dy_silu * w[None, :]
        mean_dot = tl.sum(grad_normed * normed, axis=1) / N
        grad_h = (grad_normed - normed * mean_dot[:, None]) * inv_rms
        tl.store(DH + dense, grad_h.to(DH.dtype.element_ty), mask=m)
        tl.store(DG + dense, grad_g.to(DG.dtype.element_ty), mask=m)
    tl.store(PART + tl.program_id(0).to(tl.int64) * N + cols, grad_w, mask=cm)


def _tile(width: int, tile_elements: int, cuda: bool) -> tuple[int, int, int]:
    """``(block_rows, block_width, warps)`` of either kernel for rows of ``width``
    channels, about ``tile_elements`` elements of each input per program."""
    block_n = next_power_of_2(width)
    warps = min(16, max(4, block_n // 256)) if cuda else 1
    return max(1, tile_elements // block_n), block_n, warps


@host_cache  # eager calls: the SM count is a device query
def _launch_plan(rows: int, width: int, device: torch.device, tile_elements: int,
                 programs_per_sm: int) -> tuple[int, int, int, int, int]:
    """``(block_rows, block_width, warps, backward programs, row blocks per backward
    program)`` for ``rows`` rows of ``width`` channels."""
    cuda = device.type == "cuda"
    block_r, block_n, warps = _tile(width, tile_elements, cuda)
    blocks = cdiv(rows, block_r)
    sms = multiprocessors(device) if cuda else 1
    per_program = cdiv(blocks, max(1, min(blocks, programs_per_sm * sms)))
    return block_r, block_n, warps, cdiv(blocks, per_program), per_program


def _plan(h: torch.Tensor):
    cuda = h.device.type == "cuda"
    rows = h.shape[0] * h.shape[1]
    return _launch_plan(rows, h.shape[2], h.device,
                        CUDA_TILE_ELEMENTS if cuda else CPU_TILE_ELEMENTS,
                        PROGRAMS_PER_SM if cuda else 2)


def _check(h: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor) -> None:
    if h.dim() != 3:
        raise ValueError(f"h must be (B, T, N), got shape {tuple(h.shape)}")
    if gate.shape != h.shape:
        raise ValueError(f"gate must have h's shape {tuple(h.shape)}, got {tuple(gate.shape)}")
    if tuple(weight.shape) != (h.shape[2],):
        raise ValueError(f"weight must be ({h.shape[2]},), got shape {tuple(weight.shape)}")
    if h.shape[2] > MAX_WIDTH:
        raise ValueError(f"the fused gated norm takes rows of up to {MAX_WIDTH} channels, "
                         f"got {h.shape[2]}; use gated_rms_norm_naive")
    check_block_operands(("h", h), ("gate", gate), ("weight", weight))


def forward(h: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float,
            out_dtype: torch.dtype) -> torch.Tensor:
    """The gated norm of ``h`` ``(B, T, N)``: a new contiguous ``(B, T, N)`` tensor of
    ``out_dtype``."""
    _check(h, gate, weight)
    h, gate = unit_channel_stride(h), unit_channel_stride(gate)
    y = torch.empty(h.shape, device=h.device, dtype=out_dtype)
    if y.numel() == 0:
        return y
    block_r, block_n, warps, _, _ = _plan(h)
    rows = h.shape[0] * h.shape[1]
    launcher(_gated_norm_fwd_kernel, h)[(cdiv(rows, block_r),)](
        h, gate, weight.contiguous(), y, rows, h.shape[1], h.shape[2], h.stride(0),
        h.stride(1), gate.stride(0), gate.stride(1), eps, ACC=acc_dtype(_promoted(h, gate, weight)),
        BR=block_r, BN=block_n, num_warps=warps)
    return y


def backward(h: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float,
             grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``sum(grad_y * y)``: ``(grad_h, grad_gate, grad_weight)``, contiguous,
    in the dtypes of ``h``, ``gate`` and ``weight``."""
    _check(h, gate, weight)
    if grad_y.shape != h.shape:
        raise ValueError(f"grad_y must have h's shape {tuple(h.shape)}, got {tuple(grad_y.shape)}")
    h, gate, grad_y = unit_channel_stride(h), unit_channel_stride(gate), grad_y.contiguous()
    grad_h = torch.empty(h.shape, device=h.device, dtype=h.dtype)
    grad_gate = torch.empty(h.shape, device=h.device, dtype=gate.dtype)
    if grad_h.numel() == 0:
        return grad_h, grad_gate, torch.zeros_like(weight)
    block_r, block_n, warps, programs, per_program = _plan(h)
    width = h.shape[2]
    # the math in the operands' promoted dtype: a float64 one is never rounded to float32
    compute = _promoted(h, gate, weight)
    part = torch.empty(programs, width, device=h.device, dtype=math_dtype(compute))
    launcher(_gated_norm_bwd_kernel, h)[(programs,)](
        h, gate, weight.contiguous(), grad_y, grad_h, grad_gate, part, h.shape[0] * h.shape[1],
        h.shape[1], width, h.stride(0), h.stride(1), gate.stride(0), gate.stride(1), eps,
        per_program, ACC=acc_dtype(compute), BR=block_r, BN=block_n, num_warps=warps)
    # a fixed-order reduction: the same bits every run
    return grad_h, grad_gate, part.sum(0).to(weight.dtype)


def _reject_double_backward() -> None:
    reject_double_backward("gated norm's backward", remedy="use gated_rms_norm_naive")


class _GatedRMSNorm(torch.autograd.Function):
    """:func:`forward` with :func:`backward` as its gradient: the eager path with
    gradients (cheaper on the host than the registered op below)."""

    @staticmethod
    def forward(ctx, h, gate, weight, eps, out_dtype):
        ctx.eps = eps
        ctx.save_for_backward(h, gate, weight)
        return forward(h, gate, weight, eps, out_dtype)

    @staticmethod
    def backward(ctx, grad_y):
        _reject_double_backward()
        h, gate, weight = ctx.saved_tensors
        return *backward(h, gate, weight, ctx.eps, grad_y), None, None


# The op as torch.compile sees it (a triton_op on a GPU, see ``_fused_common.fused_op``).
def _forward_shape(h, gate, weight, eps, out_dtype):
    _check(h, gate, weight)
    return h.new_empty(h.shape, dtype=out_dtype)


@fused_op("pararnn::gated_rms_norm", fake=_forward_shape, kernels=(_gated_norm_fwd_kernel,))
def _forward_op(h: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float,
                out_dtype: torch.dtype) -> torch.Tensor:
    return forward(h, gate, weight, eps, out_dtype)


def _backward_shapes(h, gate, weight, eps, grad_y):
    _check(h, gate, weight)
    # contiguous, as the kernel writes them (empty_like would copy a strided gate's strides)
    return h.new_empty(h.shape), gate.new_empty(h.shape), weight.new_empty(weight.shape)


@fused_op("pararnn::gated_rms_norm_backward", fake=_backward_shapes,
          kernels=(_gated_norm_bwd_kernel,))
def _backward_op(h: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float,
                 grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backward(h, gate, weight, eps, grad_y)


def _setup_backward(ctx, inputs, output):
    h, gate, weight, eps, _ = inputs
    ctx.eps = eps
    ctx.save_for_backward(h, gate, weight)


def _op_backward(ctx, grad_y):
    _reject_double_backward()
    h, gate, weight = ctx.saved_tensors
    return *_backward_op(h, gate, weight, ctx.eps, grad_y), None, None


_forward_op.register_autograd(_op_backward, setup_context=_setup_backward)


def _promoted(h: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(h.dtype, gate.dtype), weight.dtype)


def output_dtype(h: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype :func:`gated_rms_norm` returns: the plain ops' (the three operands
    promoted), or under autocast the autocast dtype (float64 stays float64), which the
    output projection after the norm casts to anyway."""
    dtype, device = _promoted(h, gate, weight), h.device.type
    if torch.is_autocast_enabled(device) and dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return dtype


def gated_rms_norm(h: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """``RMSNorm(h) * weight * silu(gate)`` over the last dim of ``h`` and ``gate``
    ``(B, T, N)`` (float16/bfloat16/float32/float64, any strides; ``N`` up to
    :data:`MAX_WIDTH`), ``weight`` ``(N,)``: ``(B, T, N)`` in :func:`output_dtype`.

    Differentiable with respect to all three (gradients in their own dtypes); traced by
    ``torch.compile`` as one op (``torch.ops.pararnn.gated_rms_norm``).
    """
    out_dtype = output_dtype(h, gate, weight)
    eps = float(eps)
    if torch.compiler.is_compiling():
        return _forward_op(h, gate, weight, eps, out_dtype)
    if not needs_grad(h, gate, weight):
        return forward(h, gate, weight, eps, out_dtype)
    return _GatedRMSNorm.apply(h, gate, weight, eps, out_dtype)


def gated_rms_norm_naive(h: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor,
                         eps: float) -> torch.Tensor:
    """:func:`gated_rms_norm` by the plain PyTorch ops of the module: ``F.rms_norm`` with
    the weight cast to ``h``'s dtype, times ``silu(gate)``."""
    return F.rms_norm(h, (h.shape[-1],), weight.to(h.dtype), eps) * F.silu(gate)
