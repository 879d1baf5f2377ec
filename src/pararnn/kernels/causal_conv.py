"""A fused causal depthwise convolution (+ SiLU) over time on the ``(B, T, C)`` layout.

The op: ``causal_conv1d(x, weight, bias, silu) -> y`` with

    y[b, t, c] = act(bias[c] + sum_k weight[c, k] * x[b, t - K + 1 + k, c])

(zeros before ``t = 0``; ``act`` SiLU or the identity), differentiable (autograd Function
below), and ``causal_conv1d_naive``, the plain PyTorch ops of
:class:`pararnn.models.lm.CausalConv1d` that it must match.

PyTorch runs this conv as a transpose to channels-first, a zero pad, a grouped
``F.conv1d`` and a transpose back (layout copies around cuDNN), then SiLU; its backward
is cuDNN's depthwise data and weight gradients. Here each direction is one kernel on the
natural layout, contiguous in C, and both walk time the same way: a program owns a run of
time blocks of one (row, channel block), each thread holding whole columns of a block
(all its steps of a few channels), and steps through the run block by block, keeping the
previous block in registers. The ``K`` time-shifted copies a step needs are then register
moves within a thread (:func:`_rows_back`, :func:`_rows_ahead`), so every element of
``x``, ``dy`` and ``dx`` crosses memory once; a run reads one block before it (and the
backward one after it) more.

The backward needs ``dz``, the gradient of the pre-activation, at ``K`` shifts:
``dx[t] = sum_j w[K-1-j] dz[t + j]``, and with SiLU ``dz = dy * silu'(z)`` needs the
pre-activation ``z``, recomputed from ``x`` rather than stored by the forward. The walk
computes block ``i``'s ``dz`` once, in float32, and finishes block ``i - 1`` with it: its
``dx`` and its weight-gradient products ``x[t] dz[t + j]``, summed over time inside the
thread. (An earlier version wrote ``dz`` to a float32 buffer in a first kernel and read
its shifts back from cache in a second: two launches and the buffer's round trip through
memory.) Each program writes one partial row of parameter gradients, and one ``sum`` over
the rows reduces them afterwards: deterministic (no atomics), so gradients are
reproducible run to run.

Dtypes as the module under autocast: ``weight`` and ``bias`` are rounded to ``x``'s dtype
(as ``weight.to(x.dtype)`` does), the math is in float32 (float64 for float64 input),
the output is in ``x``'s dtype, and the weight and bias gradients come back in the
parameters' own dtypes (reduced in float32, never rounded to ``x``'s dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._grad import needs_grad
from ._fused_common import (acc_dtype, cdiv, channel_offsets, check_block_operands, fused_op,
                            host_cache, launcher, math_dtype, multiprocessors, next_power_of_2,
                            put_row, reject_double_backward, row_of, sigmoid, tl, triton,
                            unit_channel_stride)

__all__ = ["causal_conv1d", "causal_conv1d_naive", "forward", "backward"]

# (time block, channel block, warps, load stages) per program of either kernel: each thread
# holds whole columns of a time block (all its steps of channel block / (32 warps)
# channels), the walk loads blocks through Triton's software pipeliner, STAGES - 1 blocks
# ahead. Of the 8 tiles `benchmarks/gpu_conv.py --sweep` tried on the H200, 8 steps of 128
# channels on 2 warps, 3 stages, was the fastest bf16 forward + backward at 3 of the 4
# shapes and within 1% at the fourth (results/gpu_h200_2026-12-04c/c2/sweep.log). On the
# CPU (Triton's interpreter) small blocks, so that the tests' small shapes span several
# blocks and runs with ragged edges.
CUDA_TILE = (8, 128, 2, 3)
CUDA_BWD_TILE = (8, 128, 2, 3)
CPU_TILE = (8, 16, 1, 1)
# Both kernels launch about this many programs per SM, splitting time into runs when rows
# x channel blocks alone give fewer: enough resident walks to keep memory busy, few enough
# runs for their extra block (and the backward's partial rows) to stay small.
PROGRAMS_PER_SM = 16


@triton.jit
def _rows_back(below, tile, rows, d: tl.constexpr, BT: tl.constexpr):
    """``tile`` ``d`` steps back in time: row ``r`` holds row ``r - d`` of ``tile``, or row
    ``BT + r - d`` of ``below`` (the time block before it) where ``r < d``. The rows lie
    in-thread (:func:`channel_offsets`), so every row moved is a register move."""
    out = tile
    if d > 0:
        for r in tl.static_range(BT):
            if r >= d:
                out = put_row(out, rows, r, row_of(tile, rows, r - d))
            else:
                out = put_row(out, rows, r, row_of(below, rows, BT + r - d))
    return out


@triton.jit
def _rows_ahead(tile, above, rows, j: tl.constexpr, BT: tl.constexpr):
    """``tile`` ``j`` steps ahead in time: row ``r`` holds row ``r + j`` of ``tile``, or row
    ``r + j - BT`` of ``above`` (the time block after it) where ``r + j >= BT``."""
    out = tile
    if j > 0:
        for r in tl.static_range(BT):
            if r + j < BT:
                out = put_row(out, rows, r, row_of(tile, rows, r + j))
            else:
                out = put_row(out, rows, r, row_of(above, rows, r + j - BT))
    return out


@triton.jit
def _load_rows(X, t, c, cm, T, sxt, ACC: tl.constexpr):
    """Steps ``t`` of channels ``c`` (zeros outside ``[0, T)``), in ``ACC``."""
    m = ((t >= 0) & (t < T))[:, None] & cm[None, :]
    return tl.load(X + t[:, None] * sxt + c[None, :], mask=m, other=0.0).to(ACC)


@triton.jit
def _preactivation(below, x, w, bias, rows, taps, K: tl.constexpr, BT: tl.constexpr):
    """``z[t] = bias + sum_k w[k] x[t - K + 1 + k]`` on a time block ``x`` whose
    predecessor is ``below`` (``w``: the ``(KP, BC)`` taps)."""
    z = bias[None, :] + tl.zeros_like(x)
    for k in tl.static_range(K):
        z += row_of(w, taps, k)[None, :] * _rows_back(below, x, rows, K - 1 - k, BT)
    return z


@triton.jit
def _conv_parameters(W, BIAS, c, cm, taps, K: tl.constexpr, dt, ACC: tl.constexpr):
    """The taps ``(KP, BC)`` and the bias ``(BC,)`` of channels ``c``, rounded to the input
    dtype ``dt``, in ``ACC``."""
    w = tl.load(W + c[None, :] * K + taps[:, None], mask=(taps < K)[:, None] & cm[None, :],
                other=0.0).to(dt).to(ACC)
    bias = tl.load(BIAS + c, mask=cm, other=0.0).to(dt).to(ACC)
    return w, bias


@triton.jit
def _conv1d_fwd_kernel(X, W, BIAS, Y, T, C, sxb, sxt, blocks_per_run, K: tl.constexpr,
                       KP: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
                       BT: tl.constexpr, BC: tl.constexpr, VEC: tl.constexpr,
                       STAGES: tl.constexpr):
    c = channel_offsets(tl.program_id(0), BC, VEC)
    b = tl.program_id(1).to(tl.int64)
    run = tl.program_id(2)
    cm = c < C
    rows = tl.arange(0, BT)
    taps = tl.arange(0, KP)
    x_b = X + b * sxb
    w, bias = _conv_parameters(W, BIAS, c, cm, taps, K, X.dtype.element_ty, ACC)
    first = run * blocks_per_run
    below = _load_rows(x_b, (first - 1) * BT + rows, c, cm, T, sxt, ACC)
    for i in tl.range(first, tl.minimum(first + blocks_per_run, tl.cdiv(T, BT)),
                      num_stages=STAGES):
        t = i * BT + rows
        x = _load_rows(x_b, t, c, cm, T, sxt, ACC)
        z = _preactivation(below, x, w, bias, rows, taps, K, BT)
        if SILU:
            z = z * sigmoid(z)
        tl.store(Y + b * T * C + t[:, None] * C + c[None, :], z.to(Y.dtype.element_ty),
                 mask=(t < T)[:, None] & cm[None, :])
        below = x


@triton.jit
def _conv1d_bwd_kernel(X, W, BIAS, G, DX, PART, T, C, sxb, sxt, blocks_per_run,
                       K: tl.constexpr, KP: tl.constexpr, SILU: tl.constexpr,
                       ACC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                       VEC: tl.constexpr, STAGES: tl.constexpr):
    # Block i's pre-activation gradient dz is computed once, from x and dy, and kept in
    # registers. dx and the weight gradient of block i - 1 need dz of blocks i - 1 and i:
    # dx[t] = sum_j w[K-1-j] dz[t + j] and grad w[K-1-j] = sum_t x[t] dz[t + j] (the sum
    # over t of dz[t] x[t - j], indexed by x's step), so step i of the walk finishes block
    # i - 1, and the walk steps one block past its run (its dz feeds the run's last block).
    c = channel_offsets(tl.program_id(0), BC, VEC)
    b = tl.program_id(1).to(tl.int64)
    run = tl.program_id(2)
    cm = c < C
    rows = tl.arange(0, BT)
    taps = tl.arange(0, KP)
    x_b = X + b * sxb
    g_b = G + b * T * C
    w, bias = _conv_parameters(W, BIAS, c, cm, taps, K, X.dtype.element_ty, ACC)
    first = run * blocks_per_run
    end = tl.minimum(first + blocks_per_run, tl.cdiv(T, BT))
    below = _load_rows(x_b, (first - 1) * BT + rows, c, cm, T, sxt, ACC)
    dz_below = tl.zeros([BT, BC], dtype=ACC)
    grad_w = tl.zeros([KP, BC], dtype=ACC)
    grad_b = tl.zeros([BC], dtype=ACC)
    for i in tl.range(first, end + 1, num_stages=STAGES):
        t = i * BT + rows
        x = _load_rows(x_b, t, c, cm, T, sxt, ACC)
        dz = tl.load(g_b + t[:, None] * C + c[None, :], mask=(t < T)[:, None] & cm[None, :],
                     other=0.0).to(ACC)
        if SILU:  # dz = dy * d silu(z) / dz = dy s (1 + z (1 - s)), s = sigmoid(z)
            z = _preactivation(below, x, w, bias, rows, taps, K, BT)
            s = sigmoid(z)
            dz = dz * s * (1.0 + z * (1.0 - s))
        # block i - 1 (the previous run's at the first step: its dx unwritten, its x zero)
        x_below = tl.where(i > first, below, 0.0)
        grad_b += tl.sum(dz_below, axis=0)
        grad_x = tl.zeros_like(dz)
        for j in tl.static_range(K):
            ahead = _rows_ahead(dz_below, dz, rows, j, BT)
            grad_x += row_of(w, taps, K - 1 - j)[None, :] * ahead
            grad_tap = tl.sum(x_below * ahead, axis=0)
            grad_w += tl.where(taps[:, None] == K - 1 - j, grad_tap[None, :], 0.0)
        t_below = t - BT
        tl.store(DX + b * T * C + t_below[:, None] * C + c[None, :],
                 grad_x.to(DX.dtype.element_ty),
                 mask=((t_below >= first * BT) & (t_below < T))[:, None] & cm[None, :])
        below = x
        dz_below = dz
    # partial row (b, run): K weight-gradient rows, then the bias gradient
    part = PART + (b * tl.num_programs(2) + run) * (K + 1) * C
    tl.store(part + taps[:, None] * C + c[None, :], grad_w, mask=(taps < K)[:, None] & cm[None, :])
    tl.store(part + K * C + c, grad_b, mask=cm)


def _tile(device: torch.device, k: int, backward: bool = False) -> tuple[int, int, int, int]:
    """The launch tile for kernel size ``k``: a time block of at least ``k - 1`` steps, so
    that a step's taps reach back (forward) or ahead (backward) one block at most."""
    block_t, block_c, warps, stages = (CPU_TILE if device.type != "cuda"
                                       else CUDA_BWD_TILE if backward else CUDA_TILE)
    return max(block_t, next_power_of_2(k - 1)), block_c, warps, stages


def _launch_plan(x: torch.Tensor, k: int, backward: bool) -> tuple[tuple[int, int, int], int, dict]:
    """``(grid, blocks_per_run, constants)`` of either kernel on ``x`` for kernel size
    ``k``: programs over (channel block, row, run), and the tile's compile-time constants."""
    batch, steps, channels = x.shape
    block_t, block_c, warps, stages = _tile(x.device, k, backward)
    runs, per_run = _runs(batch, steps, channels, x.device, block_t, block_c, PROGRAMS_PER_SM)
    constants = dict(K=k, KP=next_power_of_2(k), ACC=acc_dtype(x.dtype), BT=block_t, BC=block_c,
                     VEC=max(1, block_c // (32 * warps)), STAGES=stages, num_warps=warps)
    return (cdiv(channels, block_c), batch, runs), per_run, constants


@host_cache  # eager backward calls: the SM count is a device query
def _runs(batch: int, steps: int, channels: int, device: torch.device, block_t: int,
          block_c: int, programs_per_sm: int) -> tuple[int, int]:
    """``(runs, blocks_per_run)``: the time blocks split into ``runs`` runs of
    ``blocks_per_run`` blocks (no run empty) per (row, channel block), for tiles of
    ``block_t`` x ``block_c`` and about ``programs_per_sm`` programs per SM."""
    tiles = cdiv(steps, block_t)
    sms = multiprocessors(device) if device.type == "cuda" else 1
    want = cdiv(programs_per_sm * sms, batch * cdiv(channels, block_c))
    per_run = cdiv(tiles, max(1, min(tiles, want)))
    return cdiv(tiles, per_run), per_run


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> int:
    """Kernel size ``K``, after checking the shapes, dtypes and devices."""
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, C), got shape {tuple(x.shape)}")
    channels = x.shape[2]
    if weight.dim() not in (2, 3) or weight.shape[0] != channels or (weight.dim() == 3 and weight.shape[1] != 1):
        raise ValueError(f"weight must be ({channels}, 1, K) or ({channels}, K) for x of "
                         f"{channels} channels, got shape {tuple(weight.shape)}")
    if tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must be ({channels},), got shape {tuple(bias.shape)}")
    check_block_operands(("x", x), ("weight", weight), ("bias", bias))
    if weight.shape[-1] < 1:
        raise ValueError("the kernel size must be at least 1")
    return weight.shape[-1]


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, silu: bool = False) -> torch.Tensor:
    """The conv (+ SiLU) of ``x`` ``(B, T, C)``: a new contiguous ``(B, T, C)`` tensor in
    ``x``'s dtype. ``weight`` ``(C, 1, K)`` or ``(C, K)``, ``bias`` ``(C,)``."""
    k = _check(x, weight, bias)
    x = unit_channel_stride(x)
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    grid, per_run, constants = _launch_plan(x, k, backward=False)
    launcher(_conv1d_fwd_kernel, x)[grid](
        x, weight.contiguous(), bias.contiguous(), y, x.shape[1], x.shape[2], x.stride(0),
        x.stride(1), per_run, SILU=silu, **constants)
    return y


def backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grad_y: torch.Tensor,
             silu: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``sum(grad_y * y)``: ``(grad_x, grad_weight, grad_bias)``, ``grad_x``
    contiguous in ``x``'s dtype, the others shaped and typed as ``weight`` and ``bias``."""
    k = _check(x, weight, bias)
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y must have x's shape {tuple(x.shape)}, got {tuple(grad_y.shape)}")
    x = unit_channel_stride(x)
    grad_y = grad_y.contiguous()
    batch, steps, channels = x.shape
    grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if grad_x.numel() == 0:
        return grad_x, torch.zeros_like(weight), torch.zeros_like(bias)
    grid, per_run, constants = _launch_plan(x, k, backward=True)
    part = torch.empty(batch * grid[2], k + 1, channels, device=x.device,
                       dtype=math_dtype(x.dtype))
    launcher(_conv1d_bwd_kernel, x)[grid](
        x, weight.contiguous(), bias.contiguous(), grad_y, grad_x, part, steps, channels,
        x.stride(0), x.stride(1), per_run, SILU=silu, **constants)
    sums = part.sum(0)  # a fixed-order reduction: the same bits every run
    grad_w = sums[:k].t().to(weight.dtype).reshape(weight.shape).contiguous()
    return grad_x, grad_w, sums[k].to(bias.dtype)


def _reject_double_backward() -> None:
    reject_double_backward("causal conv's backward", remedy="use causal_conv1d_naive")


class _CausalConv1d(torch.autograd.Function):
    """:func:`forward` with :func:`backward` as its gradient: the eager path with
    gradients (cheaper on the host than the registered op below)."""

    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        ctx.silu = silu
        ctx.save_for_backward(x, weight, bias)
        return forward(x, weight, bias, silu)

    @staticmethod
    def backward(ctx, grad_y):
        _reject_double_backward()
        x, weight, bias = ctx.saved_tensors
        return *backward(x, weight, bias, grad_y, ctx.silu), None


# The op as torch.compile sees it (a triton_op on a GPU, see ``_fused_common.fused_op``):
# a model traces without graph breaks, differentiable through the registered backward op.
def _forward_shape(x, weight, bias, silu):
    _check(x, weight, bias)
    return x.new_empty(x.shape)


@fused_op("pararnn::causal_conv1d", fake=_forward_shape,
          kernels=(_conv1d_fwd_kernel,))
def _forward_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, silu: bool) -> torch.Tensor:
    return forward(x, weight, bias, silu)


def _backward_shapes(x, weight, bias, grad_y, silu):
    _check(x, weight, bias)
    # contiguous, as the kernel writes them (empty_like would copy x's strides)
    return x.new_empty(x.shape), weight.new_empty(weight.shape), bias.new_empty(bias.shape)


@fused_op("pararnn::causal_conv1d_backward", fake=_backward_shapes,
          kernels=(_conv1d_bwd_kernel,))
def _backward_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grad_y: torch.Tensor,
                 silu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backward(x, weight, bias, grad_y, silu)


def _setup_backward(ctx, inputs, output):
    x, weight, bias, silu = inputs
    ctx.silu = silu
    ctx.save_for_backward(x, weight, bias)


def _op_backward(ctx, grad_y):
    _reject_double_backward()
    x, weight, bias = ctx.saved_tensors
    return *_backward_op(x, weight, bias, grad_y, ctx.silu), None


_forward_op.register_autograd(_op_backward, setup_context=_setup_backward)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  silu: bool = False) -> torch.Tensor:
    """The causal depthwise conv of ``x`` ``(B, T, C)`` (float16/bfloat16/float32/float64,
    any strides), SiLU after it with ``silu``: ``(B, T, C)`` in ``x``'s dtype.

    ``weight`` ``(C, 1, K)`` (as :class:`~pararnn.models.lm.CausalConv1d` holds it) or
    ``(C, K)``, ``bias`` ``(C,)``. Under autocast ``x`` is cast to the autocast dtype first,
    as ``F.conv1d`` casts its input. Differentiable with respect to all three (their
    gradients in their own dtypes); traced by ``torch.compile`` as one op
    (``torch.ops.pararnn.causal_conv1d``).
    """
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype != torch.float64:
        x = x.to(torch.get_autocast_dtype(device))
    if torch.compiler.is_compiling():
        return _forward_op(x, weight, bias, silu)
    if not needs_grad(x, weight, bias):
        return forward(x, weight, bias, silu)
    return _CausalConv1d.apply(x, weight, bias, silu)


def causal_conv1d_naive(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        silu: bool = False) -> torch.Tensor:
    """:func:`causal_conv1d` by the plain PyTorch ops of the module: channels-first, zero
    pad, grouped ``F.conv1d`` with the parameters cast to ``x``'s dtype, back, SiLU."""
    channels, k = x.shape[2], weight.shape[-1]
    padded = F.pad(x.transpose(1, 2), (k - 1, 0))
    y = F.conv1d(padded, weight.reshape(channels, 1, k).to(x.dtype), bias.to(x.dtype),
                 groups=channels).transpose(1, 2)
    return F.silu(y) if silu else y
