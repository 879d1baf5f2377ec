"""Block-diagonal ("multi-head") input projection computed for all steps before the solve.

The cells read gate-major pre-activations (all channels of gate 0, then gate 1, ...),
while a batched matrix product over heads naturally yields head-major rows
(:mod:`pararnn.layout`). ``forward`` writes each gate's product straight into its strided
slice of the output (one batched GEMM per gate, the output's row stride as leading
dimension): the gate-major layout without a permute copy; its backward copies the
gradient to head-major once and runs one GEMM per input (the weight gradient's long
reduction needs the whole batch of heads to fill the GPU, and in float32 on CUDA its rows
split into chunks, see :func:`weight_grad_splits`). ``head_major`` is one batched GEMM
each way and no copy at all, for the fused kernels, which read that layout in place.
For ``num_heads=1`` ``forward`` is a plain ``linear``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._grad import needs_grad
from ..layout import HeadMajor


def kaiming_uniform_(weight: torch.Tensor) -> torch.Tensor:
    """Uniform init with variance ``1 / fan_in``, the fan-in being the last dimension (the
    input features of a ``Linear`` weight, or of one head of a multi-head projection)."""
    bound = math.sqrt(3.0 / weight.shape[-1])
    return nn.init.uniform_(weight, -bound, bound)


class MultiHeadProjection(nn.Module):
    """``x (…, D) -> (…, gates * N)`` with one block-diagonal matrix per gate.

    Head ``h`` maps input features ``[h D/H, (h+1) D/H)`` to channels
    ``[h N/H, (h+1) N/H)`` of every gate. The output is gate-major: all channels of
    gate 0, then gate 1, ... as ParaGRUCell and ParaLSTMCell expect. ``num_heads=1`` is a plain
    dense projection. Weights are Kaiming-uniform (variance 1 / fan-in), biases zero.
    """

    def __init__(self, input_size: int, hidden_size: int, num_gates: int, *, num_heads: int = 1,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if input_size % num_heads or hidden_size % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must divide input_size={input_size} and hidden_size={hidden_size}"
            )
        self.input_size, self.hidden_size = input_size, hidden_size
        self.num_gates, self.num_heads = num_gates, num_heads
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(
            num_heads, num_gates, hidden_size // num_heads, input_size // num_heads, **factory))
        self.bias = nn.Parameter(torch.empty(num_gates * hidden_size, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        kaiming_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_heads == 1:
            return nn.functional.linear(x, self.weight.flatten(0, 2), self.bias)
        out = self._heads_product(x, head_major=False)
        return out if self.bias is None else out + self.bias

    def head_major(self, x: torch.Tensor) -> HeadMajor:
        """The projection of ``x`` ``(B, T, D)`` held head-major: ``(H, B, T, G N/H)``
        from one batched GEMM over heads, never copied into the gate-major layout
        (:class:`pararnn.layout.HeadMajor`, which :func:`pararnn.solve` takes). For a
        projection without bias (the layers keep the gate bias in the cell)."""
        if self.bias is not None:
            raise ValueError("head_major needs a projection without bias")
        if x.dim() != 3:
            raise ValueError(f"head_major needs x of shape (B, T, D), got {tuple(x.shape)}")
        return HeadMajor(self._heads_product(x, head_major=True), self.num_gates)

    def _heads_product(self, x, head_major: bool):
        """``x`` times the block-diagonal weight, gate-major or head-major; under autocast
        in its dtype, with autocast off for the GEMMs (they take the operands as given)."""
        weight = self.weight
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                return _heads_matmul(x.to(dtype), weight.to(dtype), head_major)
        return _heads_matmul(x, weight, head_major)

    def extra_repr(self) -> str:
        return (f"{self.input_size} -> {self.num_gates} x {self.hidden_size}, "
                f"num_heads={self.num_heads}, bias={self.bias is not None}")


class _HeadsMatmul(torch.autograd.Function):
    """``x (..., H*Dh)`` times block-diagonal ``weight (H, G, Nh, Dh)``: gate-major
    ``(..., G*H*Nh)`` (one strided batched GEMM per gate) or, with ``head_major``,
    ``(H, ..., G*Nh)`` (one batched GEMM). Backward one GEMM per input from the head-major
    gradient."""

    @staticmethod
    def forward(ctx, x, weight, head_major):
        # x itself, not a reshape made here (forward runs without autograd: a double
        # backward would see such a view as a constant)
        ctx.save_for_backward(x, weight)
        ctx.lead, ctx.head_major = x.shape[:-1], head_major
        return (_head_major_product if head_major else _gate_major_heads_matmul)(x, weight)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        x2 = x.reshape(-1, x.shape[-1])
        heads, gates, head_out, head_in = weight.shape
        rows = x2.shape[0]
        if ctx.head_major:
            grad = grad_out.reshape(heads, rows, gates * head_out)
        else:
            # one head-major copy of the gradient, then a single GEMM per input: per-gate
            # GEMMs with K = rows (the weight gradient) leave most of the GPU idle
            grad = (grad_out.reshape(rows, gates, heads, head_out).permute(2, 0, 1, 3)
                    .reshape(heads, rows, gates * head_out))
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            weight_rows = weight.reshape(heads, gates * head_out, head_in)
            if torch.is_grad_enabled():  # double backward: differentiable ops, no out=
                grad_x = torch.bmm(grad, weight_rows).transpose(0, 1).reshape(*ctx.lead, heads * head_in)
            else:
                grad_x = x2.new_empty(rows, heads, head_in)
                torch.bmm(grad, weight_rows, out=grad_x.transpose(0, 1))
                grad_x = grad_x.view(*ctx.lead, heads * head_in)
        if ctx.needs_input_grad[1]:
            splits = weight_grad_splits(rows, weight.numel(), x2.dtype, x2.device)
            grad_w = heads_weight_grad(grad, x2, head_in, splits).view_as(weight)
        return grad_x, grad_w, None


# cuBLAS computes the float32 weight gradient (per head (G*Nh, rows) @ (rows, Dh): a small
# output, a long reduction) with one CTA per output tile looping over every row: at
# 16x1024x512 with 8 heads, ~100 CTAs for 132 SMs and 0.60 ms on an H200. Split into 4 / 8
# / 16 chunks of rows, one GEMM per (head, chunk) summed after, it took 0.13 / 0.13 / 0.09
# ms; in bfloat16 cuBLAS's own kernels were fastest unsplit (0.033 ms against 0.05-0.06).
SPLIT_K_MIN_ROWS = 1024  # rows per chunk, at least: shorter chunks cost more in the sum
SPLIT_K_MAX = 16
# Weights of more entries are not split: 2^20 outputs are 256 of cuBLAS's 64x64 tiles, ~2
# per SM, enough CTAs without a split (not measured), and the split copies x (all B*T rows)
SPLIT_K_MAX_OUTPUTS = 1 << 20


def weight_grad_splits(rows: int, outputs: int, dtype: torch.dtype, device: torch.device) -> int:
    """How many chunks of rows the weight gradient's reduction (``outputs`` entries, each a
    sum over ``rows``) is split into: up to :data:`SPLIT_K_MAX` chunks of at least
    :data:`SPLIT_K_MIN_ROWS` rows for float32/64 on CUDA and at most
    :data:`SPLIT_K_MAX_OUTPUTS` outputs, a power of two dividing ``rows``; 1 (one GEMM)
    otherwise."""
    if (device.type != "cuda" or dtype not in (torch.float32, torch.float64)
            or outputs > SPLIT_K_MAX_OUTPUTS):
        return 1
    splits = SPLIT_K_MAX
    while splits > 1 and (rows % splits or rows // splits < SPLIT_K_MIN_ROWS):
        splits //= 2
    return splits


def heads_weight_grad(grad: torch.Tensor, x2: torch.Tensor, head_in: int,
                      splits: int = 1) -> torch.Tensor:
    """Per head ``grad[h]^T @ x[h]``: ``grad (H, rows, G*Nh)`` head-major, ``x2 (rows, H*Dh)``
    -> ``(H, G*Nh, Dh)``, the rows reduced in ``splits`` chunks (one batched GEMM over
    heads x chunks, then a sum over chunks)."""
    heads, rows, width = grad.shape
    x_heads = x2.view(rows, heads, head_in).transpose(0, 1)
    if splits == 1:
        return torch.bmm(grad.transpose(1, 2), x_heads)
    if rows % splits:
        raise ValueError(f"splits={splits} must divide the {rows} rows")
    chunk = rows // splits
    # (H, S, chunk, Dh) cannot be a view of x's (rows, H*Dh) as one batch dimension: reshape
    # copies x once (a pass over it, small next to the GEMM it splits)
    parts = torch.bmm(grad.reshape(heads * splits, chunk, width).transpose(1, 2),
                      x_heads.reshape(heads * splits, chunk, head_in))
    return parts.view(heads, splits, width, head_in).sum(1)


def _gate_major_heads_matmul(x, weight):
    """The gate-major product of :class:`_HeadsMatmul`: one batched GEMM per gate,
    each writing its strided slice of the gate-major output."""
    heads, gates, head_out, head_in = weight.shape
    x2 = x.reshape(-1, heads * head_in)
    rows = x2.shape[0]
    x_heads = x2.view(rows, heads, head_in).transpose(0, 1)  # (H, M, Dh), row stride D
    out = x2.new_empty(rows, gates, heads, head_out)
    # per gate: weights (H, Dh, Nh) and output slice (H, M, Nh) (one view op for all gates)
    for w_g, out_g in zip(weight.transpose(2, 3).unbind(1), out.permute(1, 2, 0, 3).unbind(0)):
        torch.bmm(x_heads, w_g, out=out_g)
    return out.view(*x.shape[:-1], gates * heads * head_out)


def _head_major_product(x, weight):
    """``x (B, T, H*Dh)`` times ``weight (H, G, Nh, Dh)`` as ``(H, B, T, G*Nh)``: one
    batched GEMM, head ``h`` reading its ``Dh`` input columns in place (row stride H*Dh)."""
    heads, gates, head_out, head_in = weight.shape
    x_heads = x.reshape(-1, heads, head_in).transpose(0, 1)  # (H, rows, Dh)
    out = torch.bmm(x_heads, weight.reshape(heads, gates * head_out, head_in).transpose(1, 2))
    return out.view(heads, *x.shape[:-1], gates * head_out)


def _heads_matmul(x, weight, head_major: bool):
    """The product of :class:`_HeadsMatmul`, in the layout ``head_major`` asks for."""
    if torch.compiler.is_compiling():
        # the same products as einsums: the compiler cannot trace GEMMs writing into
        # strided out= slices, and it plans the layout itself (head-major: as one batched
        # GEMM over heads writes it)
        heads, gates, head_out, head_in = weight.shape
        x_heads = x.unflatten(-1, (heads, head_in))
        if head_major:
            return torch.einsum("bthd,hkd->hbtk", x_heads,
                                weight.reshape(heads, gates * head_out, head_in))
        return torch.einsum("...hd,hgnd->...ghn", x_heads, weight).flatten(-3)
    if needs_grad(x, weight):
        return _HeadsMatmul.apply(x, weight, head_major)
    # no autograd Function's host cost
    return (_head_major_product if head_major else _gate_major_heads_matmul)(x, weight)
