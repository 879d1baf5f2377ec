"""The causal conv (+ SiLU) and the gated RMSNorm of the ParaRNN block, computed on the CPU
in chunks that stay in a core's L2 cache.

On the CPU, elementwise ops over a whole ``(8, 128, 512)`` activation are bound by memory:
one op over 2 MiB tensors that miss the L2 cache takes ~3x as long per element as over
a chunk that stays in it (``benchmarks/cpu_chunked_ops.py``). Autograd's chain of small ops
(pad, conv, transpose, SiLU, then their backwards) streams every intermediate through memory.
These autograd Functions instead run the whole chain on one chunk of rows at a time,
read their inputs and write their outputs once, and recompute the cheap intermediates in
the backward instead of saving them. Same math as the plain ops (the modules in
:mod:`pararnn.models.lm` use these only for training on the CPU, eagerly, without autocast;
on CUDA they take the Triton kernels of :mod:`pararnn.kernels`).

Where the C code builds (:mod:`pararnn._cbuild`; float32 and float64), each Function runs
one C loop instead: per batch row (the conv) or per row of channels (the norm), reading
each input once and writing each output once, with no PyTorch op per chunk. The chunked
PyTorch ops stay as the path without a C compiler and for other dtypes.
"""

from __future__ import annotations

import torch

from .. import _cbuild

_silu_out = torch.ops.aten.silu.out
_silu_backward = torch.ops.aten.silu_backward
_silu_backward_out = torch.ops.aten.silu_backward.grad_input

# Elements per tensor in one chunk: a chunk's handful of live temporaries then fit in a
# 2 MiB L2 cache (measured at (8, 128, 512) on this project's CPU: 2^15-2^17 within 10% of
# each other, 2^14 up to 1.5x slower, whole tensors 1.3-2.3x slower).
CHUNK_ELEMENTS = 1 << 16


# Layouts: the conv's x (B, T, C) with strides (sb, st, 1), taps (K, C), bias (C,), out and
# grad_out (B, T, C) contiguous. The norm's x and gate rows of width W with row strides sx,
# sg, weight (W,), inv_rms (R,). Rows run on `threads` OpenMP threads; per thread, the
# backwards add into their own weight/bias gradients (zeroed by the caller, who sums them)
# and the conv's uses its own scratch row (T, C) for the conv-output gradient.
_SOURCE = _cbuild.PRELUDE + r"""
/* y[t] = bias + sum_s taps[K-1-s] x[t-s] for one (t, row), over the C channels */
static void conv_at(idx t, idx k, idx c, idx st, C x, C taps, C bias, R acc) {
    #pragma omp simd
    for (idx i = 0; i < c; i++) acc[i] = bias[i];
    for (idx s = 0; s < k && s <= t; s++) {
        const real *xs = x + (t - s) * st, *tap = taps + (k - 1 - s) * c;
        #pragma omp simd
        for (idx i = 0; i < c; i++) acc[i] += tap[i] * xs[i];
    }
}

void conv_silu_forward(idx threads, idx rows, idx steps, idx c, idx k, idx sb, idx st, C x,
                       C taps, C bias, R out) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (idx b = 0; b < rows; b++)
        for (idx t = 0; t < steps; t++) {
            real *y = out + (b * steps + t) * c;
            conv_at(t, k, c, st, x + b * sb, taps, bias, y);
            #pragma omp simd
            for (idx i = 0; i < c; i++) y[i] = y[i] * sigmoid(y[i]);
        }
}

void conv_silu_backward(idx threads, idx rows, idx steps, idx c, idx k, idx sb, idx st, C x,
                        C taps, C bias, C grad_out, R grad_x, R grad_tapss, R grad_biases,
                        R grad_ys) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (idx b = 0; b < rows; b++) {
        real *grad_taps = grad_tapss + THREAD * k * c, *grad_bias = grad_biases + THREAD * c;
        real *grad_y = grad_ys + THREAD * steps * c;
        const real *xb = x + b * sb;
        for (idx t = 0; t < steps; t++) {  /* grad_y: dL/d(conv output), one row (T, C) */
            real *gy = grad_y + t * c;
            const real *go = grad_out + (b * steps + t) * c;
            conv_at(t, k, c, st, xb, taps, bias, gy);
            #pragma omp simd
            for (idx i = 0; i < c; i++) {
                real s = sigmoid(gy[i]);
                gy[i] = go[i] * s * (1 + gy[i] * (1 - s));
                grad_bias[i] += gy[i];
            }
        }
        for (idx t = 0; t < steps; t++) {  /* x[t] feeds y[t + s] through taps[K-1-s] */
            real *gx = grad_x + (b * steps + t) * c;
            const real *xs = xb + t * st;
            #pragma omp simd
            for (idx i = 0; i < c; i++) gx[i] = 0;
            for (idx s = 0; s < k && t + s < steps; s++) {
                const real *gy = grad_y + (t + s) * c, *tap = taps + (k - 1 - s) * c;
                real *gtap = grad_taps + (k - 1 - s) * c;
                #pragma omp simd
                for (idx i = 0; i < c; i++) { gx[i] += tap[i] * gy[i]; gtap[i] += gy[i] * xs[i]; }
            }
        }
    }
}

void gated_norm_forward(idx threads, idx rows, idx w, idx sx, idx sg, double eps, C x,
                        C gate, C weight, R out, R inv_rms) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (idx r = 0; r < rows; r++) {
        const real *xr = x + r * sx, *gr = gate + r * sg;
        real *o = out + r * w, sum = 0;
        #pragma omp simd reduction(+:sum)
        for (idx i = 0; i < w; i++) sum += xr[i] * xr[i];
        real inv = 1 / sqrt(sum / w + (real)eps);
        inv_rms[r] = inv;
        #pragma omp simd
        for (idx i = 0; i < w; i++) o[i] = xr[i] * inv * weight[i] * (gr[i] * sigmoid(gr[i]));
    }
}

void gated_norm_backward(idx threads, idx rows, idx w, idx sx, idx sg, C x, C gate, C weight,
                         C inv_rms, C grad_out, R grad_x, R grad_gate, R grad_weights) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (idx r = 0; r < rows; r++) {
        real *grad_weight = grad_weights + THREAD * w;
        const real *xr = x + r * sx, *gr = gate + r * sg, *go = grad_out + r * w;
        real *gx = grad_x + r * w, *gg = grad_gate + r * w, inv = inv_rms[r], dot = 0;
        #pragma omp simd reduction(+:dot)
        for (idx i = 0; i < w; i++) {
            real normed = xr[i] * inv, s = sigmoid(gr[i]);
            real scaled = go[i] * gr[i] * s;  /* dL/d(normed * weight) */
            grad_weight[i] += scaled * normed;
            gg[i] = go[i] * normed * weight[i] * s * (1 + gr[i] * (1 - s));
            gx[i] = scaled * weight[i];  /* dL/d normed, finished below */
            dot += gx[i] * normed;
        }
        real mean = dot / w;
        #pragma omp simd
        for (idx i = 0; i < w; i++) gx[i] = (gx[i] - xr[i] * inv * mean) * inv;
    }
}
"""
_LIBRARY = _cbuild.CLibrary("conv_and_norm", _SOURCE,
                            "the causal conv and gated RMSNorm run as chunked PyTorch ops instead")


def use_chunked(x: torch.Tensor) -> bool:
    """Whether to take the chunked CPU path for ``x``: eager CPU training calls without
    autocast. Inference keeps the plain ops, which a compiled decode step reproduces bit
    for bit (``tests/lm/test_generation.py``); it has no backward to save."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled("cpu"))


def _rows(x: torch.Tensor, width: int) -> torch.Tensor:
    """``x`` as rows ``(R, width)`` with unit stride along a row (a view where it can be)."""
    rows = x.reshape(-1, width)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _row_chunks(rows: int, row_elements: int):
    """Slices of ``range(rows)`` of about :data:`CHUNK_ELEMENTS` elements (at least one row)."""
    step = max(1, CHUNK_ELEMENTS // max(1, row_elements))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _causal_conv(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``y[:, t] = bias + Σ_s taps[K-1-s] ⊙ x[:, t-s]`` (``x`` zero before t = 0) for ``x``
    ``(R, T, C)`` and ``taps`` ``(K, C)``: K multiply-adds on shifted views."""
    kernel = taps.shape[0]
    y = torch.addcmul(bias, x, taps[kernel - 1])
    for shift in range(1, min(kernel, x.shape[1])):
        y[:, shift:].addcmul_(x[:, :-shift], taps[kernel - 1 - shift])
    return y


class CausalConvSiLU(torch.autograd.Function):
    """``silu(causal depthwise conv(x))`` for ``x`` ``(B, T, C)`` (any strides) with a
    :class:`~pararnn.models.lm.CausalConv1d`'s ``weight`` ``(C, 1, K)`` and ``bias`` ``(C,)``.
    In C, or in chunks of batch rows; the conv output is recomputed in the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        taps = weight[:, 0].t().contiguous()  # (K, C): each tap a contiguous row over channels
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        library = _LIBRARY.get(x)
        if library is not None:
            if x.stride(-1) != 1:
                x = x.contiguous()
            (batch, steps, channels), kernel = x.shape, taps.shape[0]
            bias = bias.contiguous()
            _cbuild.call(library.conv_silu_forward, _cbuild.threads(batch), batch, steps, channels,
                         kernel, x.stride(0), x.stride(1), x, taps, bias, out)
        else:
            for rows in _row_chunks(x.shape[0], x.shape[1] * x.shape[2]):
                _silu_out(_causal_conv(x[rows], taps, bias), out=out[rows])
        ctx.save_for_backward(x, taps, bias)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, taps, bias = ctx.saved_tensors
        kernel, steps = taps.shape[0], x.shape[1]
        library = _LIBRARY.get(x)
        if library is not None and x.stride(-1) == 1:  # as the C forward leaves it
            return _conv_silu_backward_c(library, x, taps, bias, grad_out.contiguous())
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        grad_taps = torch.zeros_like(taps)
        grad_bias = torch.zeros_like(bias)
        for rows in _row_chunks(x.shape[0], x.shape[1] * x.shape[2]):
            xc = x[rows]
            grad_y = _silu_backward(grad_out[rows], _causal_conv(xc, taps, bias))
            gx = torch.mul(grad_y, taps[kernel - 1], out=grad_x[rows])
            grad_taps[kernel - 1].add_((grad_y * xc).sum((0, 1)))
            for shift in range(1, min(kernel, steps)):
                gx[:, :-shift].addcmul_(grad_y[:, shift:], taps[kernel - 1 - shift])
                grad_taps[kernel - 1 - shift].add_((grad_y[:, shift:] * xc[:, :-shift]).sum((0, 1)))
            grad_bias.add_(grad_y.sum((0, 1)))
        return grad_x, grad_taps.t().unsqueeze(1), grad_bias


def _conv_silu_backward_c(library, x, taps, bias, grad_out):
    (batch, steps, channels), kernel = x.shape, taps.shape[0]
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    threads = _cbuild.threads(batch)
    # per thread: the tap and bias gradients it adds into, and a (T, C) scratch row
    grad_taps = taps.new_zeros(threads, kernel, channels)
    grad_bias = bias.new_zeros(threads, channels)
    _cbuild.call(library.conv_silu_backward, threads, batch, steps, channels, kernel, x.stride(0),
                 x.stride(1), x, taps, bias, grad_out, grad_x, grad_taps, grad_bias,
                 x.new_empty(threads, steps, channels))
    return grad_x, grad_taps.sum(0).t().unsqueeze(1), grad_bias.sum(0)


class GatedRMSNormFn(torch.autograd.Function):
    """``x / rms(x) * weight * silu(gate)`` over the last dim, in C or in chunks of rows. Saves
    ``x``, ``gate`` and the per-row ``1 / rms``; the backward recomputes the rest."""

    @staticmethod
    def forward(ctx, x, gate, weight, eps):
        width = x.shape[-1]
        x2, gate2 = _rows(x, width), _rows(gate, width)
        out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
        inv_rms = torch.empty(x2.shape[0], 1, dtype=x.dtype, device=x.device)
        library = _LIBRARY.get(x)
        if library is not None:
            rows = x2.shape[0]
            _cbuild.call(library.gated_norm_forward, _cbuild.threads(rows), rows, width,
                         x2.stride(0), gate2.stride(0), float(eps), x2, gate2, weight.contiguous(),
                         out, inv_rms)
        else:
            for rows in _row_chunks(x2.shape[0], width):
                xc, r = x2[rows], inv_rms[rows]
                # 1 / rms from the 2-norm: one fused reduction (square().mean() is two passes)
                norm = torch.linalg.vector_norm(xc, dim=-1, keepdim=True)
                torch.rsqrt(norm.square_().div_(width).add_(eps), out=r)
                torch.mul(xc, r, out=out[rows]).mul_(weight).mul_(
                    _silu_out(gate2[rows], out=torch.empty_like(xc)))
        ctx.save_for_backward(x2, gate2, weight, inv_rms)
        ctx.shapes = x.shape, gate.shape
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x2, gate2, weight, inv_rms = ctx.saved_tensors
        width = x2.shape[-1]
        grad2 = grad_out.reshape(-1, width)
        grad_x = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
        grad_gate = torch.empty(gate2.shape, dtype=gate2.dtype, device=gate2.device)
        library = _LIBRARY.get(x2)
        if library is not None:
            grad2, weight = grad2.contiguous(), weight.contiguous()
            threads = _cbuild.threads(x2.shape[0])
            grad_weight = weight.new_zeros(threads, width)  # one per thread
            _cbuild.call(library.gated_norm_backward, threads, x2.shape[0], width, x2.stride(0),
                         gate2.stride(0), x2, gate2, weight, inv_rms, grad2, grad_x, grad_gate,
                         grad_weight)
            grad_weight = grad_weight.sum(0)
            return grad_x.view(ctx.shapes[0]), grad_gate.view(ctx.shapes[1]), grad_weight, None
        grad_weight = torch.zeros_like(weight)
        for rows in _row_chunks(x2.shape[0], width):
            xc, gc, go, r = x2[rows], gate2[rows], grad2[rows], inv_rms[rows]
            normed = xc * r
            scaled = go * _silu_out(gc, out=torch.empty_like(xc))  # ∂L/∂(normed ⊙ weight)
            grad_weight.add_((scaled * normed).sum(0))
            _silu_backward_out(go * normed * weight, gc, grad_input=grad_gate[rows])
            scaled.mul_(weight)  # ∂L/∂normed
            # through the normalisation: (g - normed · mean(g ⊙ normed)) / rms
            mean = (scaled * normed).mean(-1, keepdim=True)
            torch.addcmul(scaled, normed, mean, value=-1, out=grad_x[rows]).mul_(r)
        return grad_x.view(ctx.shapes[0]), grad_gate.view(ctx.shapes[1]), grad_weight, None
