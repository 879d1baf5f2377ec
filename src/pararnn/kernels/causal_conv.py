"""A fused causal depthwise convolution (+ SiLU) over time on the ``(B, T, C)`` layout.

The op: ``causal_conv1d(x, weight, bias, silu) -> y`` with

    y[b, t, c] = act(bias[c] + sum_k weight[c, k] * x[b, t - K + 1 + k, c])

(zeros before ``t = 0``; ``act`` SiLU or the identity), differentiable (autograd Function
below), and ``causal_conv1d_naive``, the plain PyTorch ops of
:class:`pararnn.models.lm.CausalConv1d` that it must match.

PyTorch runs this conv as a transpose to channels-first, a zero pad, a grouped
``F.conv1d`` and a transpose back (layout copies around cuDNN), then SiLU; its backward
is cuDNN's depthwise data and weight gradients. Here the forward is one kernel over
(time block, channel block, row) tiles of the natural layout, contiguous in C: a tile
reads the ``K`` time-shifted copies of its input block (the overlap comes from cache, so
the input is read about once) and writes the output once.

The backward needs ``dz``, the gradient of the pre-activation, at ``K`` time shifts per
tile: ``dx`` is the transposed conv, ``dx[t] = sum_k w[k] dz[t + K - 1 - k]``. With SiLU,
``dz = dy * silu'(z)`` needs the pre-activation ``z``, recomputed from ``x`` rather than
stored by the forward (a tensor written there and read here). A first kernel computes
``dz`` once per element into a float32 buffer (in ``x``'s dtype it would save 7% of the
bf16 forward+backward on the H200 but round every product the parameter gradients sum);
the conv's backward kernel then reads its ``K`` shifts from cache. (Recomputing ``dz`` at
every shift inside one kernel costs ``K`` pre-activations and sigmoids per element: slower
at every shape measured on the H200.) Each program of the second kernel walks a run of time blocks
of one (row, channel block), each thread holding whole columns of a tile (all its time
steps of a few channels), so the weight- and bias-gradient products of a tile sum over
time inside the thread, without the cross-thread reductions (a barrier each) that a tile
split over threads by rows needs; each program writes one partial row, and one ``sum``
over the rows reduces them afterwards: deterministic (no atomics), so gradients are
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
from ._fused_common import (cdiv, channel_offsets, fused_op, host_cache, launcher,
                            multiprocessors, next_power_of_2, reject_double_backward, sigmoid,
                            tl, triton)

__all__ = ["causal_conv1d", "causal_conv1d_naive", "forward", "backward"]

# (time block, channel block, warps) per tile. On CUDA a channel block of 64 is one
# 128-byte line of bf16 per time step; 16 steps on 2 warps was the fastest forward of the
# 7 tiles `benchmarks/gpu_conv.py --sweep` tried on the H200. The backward kernel's tile,
# whole columns of 8 steps per thread (two channels each: 128 on 2 warps), made the
# graphed forward+backward 1.3-1.4x faster than the two-warp 16x64 tile of row-split
# threads at the 4 bf16 LM shapes (results/gpu_h200_2026-12-03f/c3/conv_ab2.*). On the CPU
# (Triton's interpreter) small tiles, so that the tests' small shapes span several tiles
# with ragged edges.
CUDA_TILE = (16, 64, 2)
CUDA_BWD_TILE = (8, 128, 2)
CPU_TILE = (8, 16, 1)
# The backward launches about this many programs per SM (splitting time into runs when
# rows x channel blocks alone give fewer): enough resident tiles to hide memory latency,
# few enough partial rows for the reduction to stay small.
PROGRAMS_PER_SM = 16

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _preactivation(X, W, BIAS, rows, c, cm, T, sxt, K: tl.constexpr, ACC: tl.constexpr):
    """``bias + sum_k w[k] x[rows - K + 1 + k]`` on a ``(rows, c)`` tile (``X`` points at
    the row's batch entry), parameters rounded to the input dtype, math in ``ACC``."""
    dt = X.dtype.element_ty
    z = tl.load(BIAS + c, mask=cm, other=0.0).to(dt).to(ACC)[None, :]
    for k in tl.static_range(K):
        src = rows - (K - 1) + k
        m = ((src >= 0) & (src < T))[:, None] & cm[None, :]
        xk = tl.load(X + src[:, None] * sxt + c[None, :], mask=m, other=0.0).to(ACC)
        wk = tl.load(W + c * K + k, mask=cm, other=0.0).to(dt).to(ACC)
        z = z + xk * wk[None, :]
    return z


@triton.jit
def _conv1d_fwd_kernel(X, W, BIAS, Y, T, C, sxb, sxt, K: tl.constexpr, SILU: tl.constexpr,
                       ACC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    b = tl.program_id(2).to(tl.int64)
    cm = c < C
    z = _preactivation(X + b * sxb, W, BIAS, rows, c, cm, T, sxt, K, ACC)
    if SILU:
        z = z * sigmoid(z)
    out = Y + b * T * C + rows[:, None] * C + c[None, :]
    tl.store(out, z.to(Y.dtype.element_ty), mask=(rows < T)[:, None] & cm[None, :])


@triton.jit
def _silu_grad_kernel(X, W, BIAS, G, DZ, T, C, sxb, sxt, K: tl.constexpr, ACC: tl.constexpr,
                      BT: tl.constexpr, BC: tl.constexpr):
    """``dz = dy * d silu(z) / dz = dy s (1 + z (1 - s))``, ``s = sigmoid(z)``, with the
    pre-activation ``z`` recomputed from ``x``: the gradient the conv's backward reads."""
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    b = tl.program_id(2).to(tl.int64)
    cm = c < C
    m = (rows < T)[:, None] & cm[None, :]
    z = _preactivation(X + b * sxb, W, BIAS, rows, c, cm, T, sxt, K, ACC)
    s = sigmoid(z)
    at = b * T * C + rows[:, None] * C + c[None, :]
    g = tl.load(G + at, mask=m, other=0.0).to(ACC)
    tl.store(DZ + at, g * s * (1.0 + z * (1.0 - s)), mask=m)


@triton.jit
def _conv1d_bwd_kernel(X, W, DZ, DX, PART, T, C, sxb, sxt, tiles_per_run,
                       K: tl.constexpr, KP: tl.constexpr, ACC: tl.constexpr,
                       BT: tl.constexpr, BC: tl.constexpr, VEC: tl.constexpr):
    # Each thread holds VEC channels of all BT rows of a tile (channel_offsets), so the
    # tile's sums over time (the weight- and bias-gradient products) stay in the thread.
    c = channel_offsets(tl.program_id(0), BC, VEC)
    b = tl.program_id(1).to(tl.int64)
    run = tl.program_id(2)
    cm = c < C
    dt = X.dtype.element_ty
    x_b = X + b * sxb
    dz_b = DZ + b * T * C
    taps = tl.arange(0, KP)
    tap_live = (taps < K)[:, None, None] & cm[None, None, :]
    grad_w = tl.zeros((KP, BC), dtype=ACC)
    grad_b = tl.zeros((BC,), dtype=ACC)
    for i in range(tiles_per_run):
        rows = (run * tiles_per_run + i) * BT + tl.arange(0, BT)
        own = (rows < T)[:, None] & cm[None, :]
        dz = tl.load(dz_b + rows[:, None] * C + c[None, :], mask=own, other=0.0).to(ACC)
        grad_b += tl.sum(dz, axis=0)
        # x at the K taps of each row, one (KP, BT, BC) load: x[t] feeds z[t + K - 1 - k]
        src = rows[None, :, None] - (K - 1) + taps[:, None, None]
        x3 = tl.load(x_b + src * sxt + c[None, None, :],
                     mask=tap_live & (src >= 0) & (src < T), other=0.0).to(ACC)
        grad_w += tl.sum(dz[None, :, :] * x3, axis=1)
        # dx[t] = sum_j w[K-1-j] dz[t + j]: dz at the K shifts of this tile
        w = tl.load(W + c * K + (K - 1), mask=cm, other=0.0).to(dt).to(ACC)
        grad_x = dz * w[None, :]
        for j in tl.static_range(1, K):
            shifted = rows + j
            m = (shifted < T)[:, None] & cm[None, :]
            dz_j = tl.load(dz_b + shifted[:, None] * C + c[None, :], mask=m, other=0.0).to(ACC)
            w = tl.load(W + c * K + (K - 1 - j), mask=cm, other=0.0).to(dt).to(ACC)
            grad_x += dz_j * w[None, :]
        out = DX + b * T * C + rows[:, None] * C + c[None, :]
        tl.store(out, grad_x.to(DX.dtype.element_ty), mask=own)
    # partial row (b, run): K weight-gradient rows, then the bias gradient
    part = PART + (b * tl.num_programs(2) + run) * (K + 1) * C
    tl.store(part + taps[:, None] * C + c[None, :], grad_w, mask=(taps < K)[:, None] & cm[None, :])
    tl.store(part + K * C + c, grad_b, mask=cm)


def _tile(device: torch.device, backward: bool = False) -> tuple[int, int, int]:
    if device.type != "cuda":
        return CPU_TILE
    return CUDA_BWD_TILE if backward else CUDA_TILE


def _acc(dtype: torch.dtype):
    """The kernels' math dtype for input ``dtype`` (a Triton dtype)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' math dtype as a torch dtype: that of the buffers they keep between
    launches (the pre-activation's gradient, the partial parameter-gradient rows)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@host_cache  # eager backward calls: the SM count is a device query
def _runs(batch: int, steps: int, channels: int, device: torch.device, block_t: int,
          block_c: int, programs_per_sm: int) -> tuple[int, int]:
    """``(runs, tiles_per_run)``: the backward's time blocks split into ``runs`` runs of
    ``tiles_per_run`` blocks (no run empty) per (row, channel block), for tiles of
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
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    if weight.shape[-1] < 1:
        raise ValueError("the kernel size must be at least 1")
    return weight.shape[-1]


def _unit_channel_stride(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the kernels read it: any row and time strides, unit stride over channels."""
    return x if x.stride(2) == 1 else x.contiguous()


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, silu: bool = False) -> torch.Tensor:
    """The conv (+ SiLU) of ``x`` ``(B, T, C)``: a new contiguous ``(B, T, C)`` tensor in
    ``x``'s dtype. ``weight`` ``(C, 1, K)`` or ``(C, K)``, ``bias`` ``(C,)``."""
    k = _check(x, weight, bias)
    x = _unit_channel_stride(x)
    batch, steps, channels = x.shape
    y = torch.empty(batch, steps, channels, device=x.device, dtype=x.dtype)
    if y.numel() == 0:
        return y
    block_t, block_c, warps = _tile(x.device)
    grid = (cdiv(steps, block_t), cdiv(channels, block_c), batch)
    launcher(_conv1d_fwd_kernel, x)[grid](
        x, weight.contiguous(), bias.contiguous(), y, steps, channels, x.stride(0), x.stride(1),
        K=k, SILU=silu, ACC=_acc(x.dtype), BT=block_t, BC=block_c, num_warps=warps)
    return y


def backward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grad_y: torch.Tensor,
             silu: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``sum(grad_y * y)``: ``(grad_x, grad_weight, grad_bias)``, ``grad_x``
    contiguous in ``x``'s dtype, the others shaped and typed as ``weight`` and ``bias``."""
    k = _check(x, weight, bias)
    if grad_y.shape != x.shape:
        raise ValueError(f"grad_y must have x's shape {tuple(x.shape)}, got {tuple(grad_y.shape)}")
    x = _unit_channel_stride(x)
    grad_y = grad_y.contiguous()
    batch, steps, channels = x.shape
    grad_x = torch.empty(batch, steps, channels, device=x.device, dtype=x.dtype)
    if grad_x.numel() == 0:
        return grad_x, torch.zeros_like(weight), torch.zeros_like(bias)
    block_t, block_c, warps = _tile(x.device)
    weight = weight.contiguous()
    grad_z = grad_y  # the gradient of the pre-activation
    if silu:
        grad_z = torch.empty(batch, steps, channels, device=x.device, dtype=_math_dtype(x.dtype))
        grid = (cdiv(steps, block_t), cdiv(channels, block_c), batch)
        launcher(_silu_grad_kernel, x)[grid](
            x, weight, bias.contiguous(), grad_y, grad_z, steps, channels, x.stride(0),
            x.stride(1), K=k, ACC=_acc(x.dtype), BT=block_t, BC=block_c, num_warps=warps)
    block_t, block_c, warps = _tile(x.device, backward=True)
    runs, per_run = _runs(batch, steps, channels, x.device, block_t, block_c, PROGRAMS_PER_SM)
    part = torch.empty(batch * runs, k + 1, channels, device=x.device, dtype=_math_dtype(x.dtype))
    grid = (cdiv(channels, block_c), batch, runs)
    launcher(_conv1d_bwd_kernel, x)[grid](
        x, weight, grad_z, grad_x, part, steps, channels, x.stride(0), x.stride(1), per_run,
        K=k, KP=next_power_of_2(k), ACC=_acc(x.dtype), BT=block_t, BC=block_c,
        VEC=max(1, block_c // (32 * warps)), num_warps=warps)
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
          kernels=(_silu_grad_kernel, _conv1d_bwd_kernel))
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
