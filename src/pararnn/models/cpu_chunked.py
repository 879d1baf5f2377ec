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
GPUs and ``torch.compile`` fuse the plain ops themselves).
"""

from __future__ import annotations

import torch

_silu_out = torch.ops.aten.silu.out
_silu_backward = torch.ops.aten.silu_backward
_silu_backward_out = torch.ops.aten.silu_backward.grad_input

# Elements per tensor in one chunk: a chunk's handful of live temporaries then fit in a
# 2 MiB L2 cache (measured at (8, 128, 512) on this project's CPU: 2^15-2^17 within 10% of
# each other, 2^14 up to 1.5x slower, whole tensors 1.3-2.3x slower).
CHUNK_ELEMENTS = 1 << 16


def use_chunked(x: torch.Tensor) -> bool:
    """Whether to take the chunked CPU path for ``x``: eager CPU training calls without
    autocast. Inference keeps the plain ops, which a compiled decode step reproduces bit
    for bit (``tests/lm/test_generation.py``); it has no backward to save."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not torch.is_autocast_enabled("cpu"))


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
    Chunks of batch rows; the conv output is recomputed in the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        taps = weight[:, 0].t().contiguous()  # (K, C): each tap a contiguous row over channels
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        for rows in _row_chunks(x.shape[0], x.shape[1] * x.shape[2]):
            _silu_out(_causal_conv(x[rows], taps, bias), out=out[rows])
        ctx.save_for_backward(x, taps, bias)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, taps, bias = ctx.saved_tensors
        kernel, steps = taps.shape[0], x.shape[1]
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


class GatedRMSNormFn(torch.autograd.Function):
    """``x / rms(x) * weight * silu(gate)`` over the last dim, in chunks of rows. Saves
    ``x``, ``gate`` and the per-row ``1 / rms``; the backward recomputes the rest."""

    @staticmethod
    def forward(ctx, x, gate, weight, eps):
        width = x.shape[-1]
        x2, gate2 = x.reshape(-1, width), gate.reshape(-1, width)
        out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
        inv_rms = torch.empty(x2.shape[0], 1, dtype=x.dtype, device=x.device)
        for rows in _row_chunks(x2.shape[0], width):
            xc, r = x2[rows], inv_rms[rows]
            # 1 / rms from the 2-norm: one fused reduction (square().mean() is two passes)
            norm = torch.linalg.vector_norm(xc, dim=-1, keepdim=True)
            torch.rsqrt(norm.square_().div_(width).add_(eps), out=r)
            torch.mul(xc, r, out=out[rows]).mul_(weight).mul_(_silu_out(gate2[rows], out=torch.empty_like(xc)))
        ctx.save_for_backward(x2, gate2, weight, inv_rms)
        ctx.shapes = x.shape, gate.shape
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x2, gate2, weight, inv_rms = ctx.saved_tensors
        width = x2.shape[-1]
        grad2 = grad_out.reshape(-1, width)
        grad_x = torch.empty_like(x2)
        grad_gate = torch.empty(gate2.shape, dtype=gate2.dtype, device=gate2.device)
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
