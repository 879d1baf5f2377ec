"""Fused single-token decode steps: the ParaGRU / ParaLSTM cells (with or without the
input projection before them), and the short causal convolution before them (and in Mamba2).

A decode step of a ParaRNN layer is the input projection of one token (a matrix product)
and one cell step: a dozen elementwise operations that eager PyTorch runs as a dozen
kernels, each reading and writing ``(B, N)`` tensors. These kernels do the gates and the
state update in one pass: each program reads the pre-activations of a block of channels
of one row, the recurrent vectors (clipped in-kernel) and the previous state, and writes
the new state, possibly in place over the old one (every entry is read before it is
written by the same program). Math in float32 whatever the input dtype.

The *projected* steps also compute the pre-activations: at a small batch the block-diagonal
multi-head projection is a matrix-vector product per row, and a step is bound by kernel
latency, not by work, so the projection (cuBLAS, a layout copy) and the cell step, two or
three kernels on the critical path of every layer, become one. The recurrence is
diagonal, so a program that owns (row, head, block of channels) computes those channels'
three gate inputs from the head's slice of the input and needs only those channels'
previous state.

Layouts as the cells: ``pre`` ``(B, 3N)`` gate-major, ``a`` / ``bias`` ``(3, N)``,
``peephole`` ``(2, N)``, states ``(B, N)`` float32; the projection's ``weight``
``(heads, 3, N / heads, D / heads)`` and ``bias`` ``(3N,)`` as
:class:`~pararnn.layers.projection.MultiHeadProjection` holds them.

The depthwise convolution's step reads the window of the last ``k-1`` inputs, computes the
output and shifts the new input into the window in one pass. In PyTorch this is a
concatenation, a product-sum and a shifted copy back into the window, which a compiler
must split into three kernels (a shifted in-place copy races between its threads; here
each program owns its channels' windows, reads them whole and then writes them).

The launches are registered as custom operators with :func:`torch.library.triton_op`
(``pararnn::gru_decode_step_``, ``pararnn::lstm_decode_step_``, their ``…_projected_…``
forms, updating the state in place), so that ``torch.compile(fullgraph=True)`` traces a
decode step through them without a graph break: the compiler sees an opaque op with
declared mutations, fuses the elementwise work around it and launches the kernel from its
own code.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._fused_common import clip_vector, sigmoid, tanh


@triton.jit
def _load3(PTR, offs, mask, stride):
    """Entries ``offs`` of rows 0, 1, 2 of a row-major ``(3, stride)`` array, as float32."""
    return (tl.load(PTR + offs, mask=mask, other=0.0).to(tl.float32),
            tl.load(PTR + stride + offs, mask=mask, other=0.0).to(tl.float32),
            tl.load(PTR + 2 * stride + offs, mask=mask, other=0.0).to(tl.float32))


@triton.jit
def _cell_vectors(AW, BIAS, u0, u1, u2, channels, mask, N, clip,
                  HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr):
    """The gate pre-activations ``u`` plus the cell's bias, and the recurrent vectors
    (clipped in fp32: a compiled decode step passes ``clip`` as fp64, which would otherwise
    carry the whole step into fp64) of ``channels``."""
    if HAS_BIAS:
        b0, b1, b2 = _load3(BIAS, channels, mask, N)
        u0, u1, u2 = u0 + b0, u1 + b1, u2 + b2
    a0, a1, a2 = _load3(AW, channels, mask, N)
    return (u0, u1, u2, clip_vector(a0, clip, HAS_CLIP), clip_vector(a1, clip, HAS_CLIP),
            clip_vector(a2, clip, HAS_CLIP))


@triton.jit
def _gru_update(AW, BIAS, H, row, channels, mask, N, clip, uz, ur, uh,
                HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr):
    """One ParaGRU step of ``channels`` of state row ``row`` from their gate inputs ``u``,
    written over the old state."""
    uz, ur, uh, a_z, a_r, a_h = _cell_vectors(AW, BIAS, uz, ur, uh, channels, mask, N, clip,
                                              HAS_BIAS, HAS_CLIP)
    h = tl.load(H + row * N + channels, mask=mask, other=0.0).to(tl.float32)
    z = sigmoid(a_z * h + uz)
    r = sigmoid(a_r * h + ur)
    cand = tanh(a_h * (r * h) + uh)
    tl.store(H + row * N + channels, (h + z * (cand - h)).to(H.dtype.element_ty), mask=mask)


@triton.jit
def _lstm_update(AW, PEEP, BIAS, H, C, row, channels, mask, N, clip, uf, uc, uo,
                 HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr):
    """One ParaLSTM step of ``channels`` of state row ``row``, as :func:`_gru_update`."""
    uf, uc, uo, a_f, a_c, a_o = _cell_vectors(AW, BIAS, uf, uc, uo, channels, mask, N, clip,
                                              HAS_BIAS, HAS_CLIP)
    p_f = clip_vector(tl.load(PEEP + channels, mask=mask, other=0.0).to(tl.float32), clip,
                      HAS_CLIP)
    p_o = clip_vector(tl.load(PEEP + N + channels, mask=mask, other=0.0).to(tl.float32), clip,
                      HAS_CLIP)
    h = tl.load(H + row * N + channels, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(C + row * N + channels, mask=mask, other=0.0).to(tl.float32)
    f = sigmoid(a_f * h + uf + p_f * c)
    cand = tanh(a_c * h + uc)
    c_next = cand + f * (c - cand)
    o = sigmoid(a_o * h + uo + p_o * c_next)
    tl.store(H + row * N + channels, (o * tanh(c_next)).to(H.dtype.element_ty), mask=mask)
    tl.store(C + row * N + channels, c_next.to(C.dtype.element_ty), mask=mask)


@triton.jit
def _gru_step_kernel(PRE, AW, BIAS, H, N, clip,
                     HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr, BN: tl.constexpr):
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BN + tl.arange(0, BN)
    mask = offs < N
    uz, ur, uh = _load3(PRE + row * 3 * N, offs, mask, N)
    _gru_update(AW, BIAS, H, row, offs, mask, N, clip, uz, ur, uh, HAS_BIAS, HAS_CLIP)


@triton.jit
def _lstm_step_kernel(PRE, AW, PEEP, BIAS, H, C, N, clip,
                      HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr, BN: tl.constexpr):
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BN + tl.arange(0, BN)
    mask = offs < N
    uf, uc, uo = _load3(PRE + row * 3 * N, offs, mask, N)
    _lstm_update(AW, PEEP, BIAS, H, C, row, offs, mask, N, clip, uf, uc, uo, HAS_BIAS, HAS_CLIP)


@triton.jit
def _project(U, W, PBIAS, row, head, offs, mask, N, head_out, head_in,
             HAS_PBIAS: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """The three gate inputs of channels ``offs`` (within ``head``) of batch row ``row``:
    the head's slice of ``U`` times the rows ``offs`` of the head's three weight blocks
    (``W`` ``(heads, 3, head_out, head_in)``), float32 accumulation, plus the projection's
    gate-major bias. The products accumulate elementwise over the input blocks and are
    summed once at the end (one reduction per gate instead of one per block)."""
    n_in = (N // head_out) * head_in  # heads * head_in
    x_row = U + row * n_in + head * head_in
    w_rows = W + head * 3 * head_out * head_in + offs[:, None] * head_in
    gate_stride = head_out * head_in
    acc0 = tl.zeros((BN, BK), dtype=tl.float32)
    acc1 = tl.zeros((BN, BK), dtype=tl.float32)
    acc2 = tl.zeros((BN, BK), dtype=tl.float32)
    for start in range(0, head_in, BK):
        ks = start + tl.arange(0, BK)
        k_mask = ks < head_in
        x = tl.load(x_row + ks, mask=k_mask, other=0.0).to(tl.float32)[None, :]
        w_mask = mask[:, None] & k_mask[None, :]
        w = w_rows + ks[None, :]
        acc0 += tl.load(w, mask=w_mask, other=0.0).to(tl.float32) * x
        acc1 += tl.load(w + gate_stride, mask=w_mask, other=0.0).to(tl.float32) * x
        acc2 += tl.load(w + 2 * gate_stride, mask=w_mask, other=0.0).to(tl.float32) * x
    u0, u1, u2 = tl.sum(acc0, axis=1), tl.sum(acc1, axis=1), tl.sum(acc2, axis=1)
    if HAS_PBIAS:
        b0, b1, b2 = _load3(PBIAS, head * head_out + offs, mask, N)
        u0, u1, u2 = u0 + b0, u1 + b1, u2 + b2
    return u0, u1, u2


@triton.jit
def _gru_projected_kernel(U, W, PBIAS, AW, BIAS, H, batch, N, head_out, head_in, clip,
                          HAS_PBIAS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr,
                          BN: tl.constexpr, BK: tl.constexpr, BB: tl.constexpr):
    head = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BN + tl.arange(0, BN)
    mask = offs < head_out
    # BB rows per program: the weight block is reread from L1 for every row after the
    # first; a row past the batch (in the last block) reads the last row and stores nothing
    for i in range(BB):
        row = tl.program_id(2).to(tl.int64) * BB + i
        valid = mask & (tl.zeros_like(offs) + row < batch)  # a vector: the interpreter needs one
        uz, ur, uh = _project(U, W, PBIAS, tl.minimum(row, batch - 1), head, offs, mask, N,
                              head_out, head_in, HAS_PBIAS, BN, BK)
        _gru_update(AW, BIAS, H, row, head * head_out + offs, valid, N, clip, uz, ur, uh,
                    HAS_BIAS, HAS_CLIP)


@triton.jit
def _lstm_projected_kernel(U, W, PBIAS, AW, PEEP, BIAS, H, C, batch, N, head_out, head_in, clip,
                           HAS_PBIAS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLIP: tl.constexpr,
                           BN: tl.constexpr, BK: tl.constexpr, BB: tl.constexpr):
    head = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BN + tl.arange(0, BN)
    mask = offs < head_out
    # BB rows per program: the weight block is reread from L1 for every row after the
    # first; a row past the batch (in the last block) reads the last row and stores nothing
    for i in range(BB):
        row = tl.program_id(2).to(tl.int64) * BB + i
        valid = mask & (tl.zeros_like(offs) + row < batch)  # a vector: the interpreter needs one
        uf, uc, uo = _project(U, W, PBIAS, tl.minimum(row, batch - 1), head, offs, mask, N,
                              head_out, head_in, HAS_PBIAS, BN, BK)
        _lstm_update(AW, PEEP, BIAS, H, C, row, head * head_out + offs, valid, N, clip,
                     uf, uc, uo, HAS_BIAS, HAS_CLIP)


@triton.jit
def _conv_step_kernel(X, WINDOW, W, BIAS, Y, C, K: tl.constexpr, SILU: tl.constexpr,
                      BC: tl.constexpr):
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BC + tl.arange(0, BC)
    mask = offs < C
    x = tl.load(X + row * C + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(BIAS + offs, mask=mask, other=0.0).to(tl.float32)
    y += x * tl.load(W + offs * K + K - 1, mask=mask, other=0.0).to(tl.float32)
    window = WINDOW + row * C * (K - 1) + offs * (K - 1)
    for j in tl.static_range(K - 1):
        past = tl.load(window + j, mask=mask, other=0.0)
        y += past.to(tl.float32) * tl.load(W + offs * K + j, mask=mask, other=0.0).to(tl.float32)
        if j > 0:
            tl.store(window + j - 1, past, mask=mask)
    if K > 1:  # width 1 keeps no window (it has no entries to write)
        tl.store(window + K - 2, x.to(WINDOW.dtype.element_ty), mask=mask)
    if SILU:  # the activation after the conv, here rather than as a kernel of its own
        y = y * sigmoid(y)
    tl.store(Y + row * C + offs, y.to(Y.dtype.element_ty), mask=mask)


def _launch_shape(batch: int, n: int) -> tuple[tuple[int, int], int]:
    block = min(1024, triton.next_power_of_2(n))
    return (triton.cdiv(n, block), batch), block


# The operators take the cell's tensors and update the state in place. Each program reads
# every entry of its block before writing it, so in place needs no second buffer; a bias
# of None launches with ``a`` in its slot (HAS_BIAS=False: never read).

@triton_op("pararnn::gru_decode_step_", mutates_args={"h"})
def _gru_step_(pre: torch.Tensor, a: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor,
               clip: float | None) -> None:
    grid, block = _launch_shape(*h.shape)
    wrap_triton(_gru_step_kernel)[grid](
        pre, a, a if bias is None else bias, h, h.shape[1], 0.0 if clip is None else clip,
        HAS_BIAS=bias is not None, HAS_CLIP=clip is not None, BN=block)


@triton_op("pararnn::lstm_decode_step_", mutates_args={"h", "c"})
def _lstm_step_(pre: torch.Tensor, a: torch.Tensor, peephole: torch.Tensor, bias: torch.Tensor | None,
                h: torch.Tensor, c: torch.Tensor, clip: float | None) -> None:
    grid, block = _launch_shape(*h.shape)
    wrap_triton(_lstm_step_kernel)[grid](
        pre, a, peephole, a if bias is None else bias, h, c, h.shape[1], 0.0 if clip is None else clip,
        HAS_BIAS=bias is not None, HAS_CLIP=clip is not None, BN=block)


# The projected steps: one program per (block of a head's output channels, head, block of
# batch rows). At batch 1 the product is a matrix-vector product, bound by reading the
# weights, so the blocks are made small enough to give every SM of a large GPU programs to
# run (a few hundred programs); each reads whole contiguous weight rows. Every block of rows
# rereads the weights (from L2), so once the channel blocks have grown to their largest
# tile a program takes several rows (rereading its weights from L1): past a small batch
# cuBLAS's GEMM, which reads them once into tensor cores, still wins.
_TARGET_PROGRAMS = 256
_MAX_TILE = 4096  # BN x BK float32 products per gate accumulated in registers
_MAX_ROWS = 16


def _projected_launch(batch: int, heads: int, head_out: int,
                      head_in: int) -> tuple[tuple[int, int, int], int, int, int]:
    """``(grid, BN, BK, BB)``: plain integer arithmetic (``triton.cdiv`` and
    ``triton.next_power_of_2`` are wrapped functions, slower to call on the host)."""
    block_k = min(256, 1 << (head_in - 1).bit_length())  # the next power of 2
    block_n = 4
    while (block_n < 64 and 2 * block_n * block_k <= _MAX_TILE and block_n < head_out
           and batch * heads * -(-head_out // (2 * block_n)) >= _TARGET_PROGRAMS):
        block_n *= 2
    channel_blocks = -(-head_out // block_n)
    rows = 1
    while (rows < min(batch, _MAX_ROWS)
           and -(-batch // (2 * rows)) * heads * channel_blocks >= _TARGET_PROGRAMS):
        rows *= 2
    return (channel_blocks, heads, -(-batch // rows)), block_n, block_k, rows


@triton_op("pararnn::gru_projected_decode_step_", mutates_args={"h"})
def _gru_projected_step_(u: torch.Tensor, weight: torch.Tensor, proj_bias: torch.Tensor | None,
                         a: torch.Tensor, bias: torch.Tensor | None, h: torch.Tensor,
                         clip: float | None) -> None:
    heads, _, head_out, head_in = weight.shape
    grid, block_n, block_k, rows = _projected_launch(h.shape[0], heads, head_out, head_in)
    wrap_triton(_gru_projected_kernel)[grid](
        u, weight, a if proj_bias is None else proj_bias, a, a if bias is None else bias, h,
        h.shape[0], h.shape[1], head_out, head_in, 0.0 if clip is None else clip,
        HAS_PBIAS=proj_bias is not None, HAS_BIAS=bias is not None, HAS_CLIP=clip is not None,
        BN=block_n, BK=block_k, BB=rows)


@triton_op("pararnn::lstm_projected_decode_step_", mutates_args={"h", "c"})
def _lstm_projected_step_(u: torch.Tensor, weight: torch.Tensor, proj_bias: torch.Tensor | None,
                          a: torch.Tensor, peephole: torch.Tensor, bias: torch.Tensor | None,
                          h: torch.Tensor, c: torch.Tensor, clip: float | None) -> None:
    heads, _, head_out, head_in = weight.shape
    grid, block_n, block_k, rows = _projected_launch(h.shape[0], heads, head_out, head_in)
    wrap_triton(_lstm_projected_kernel)[grid](
        u, weight, a if proj_bias is None else proj_bias, a, peephole, a if bias is None else bias,
        h, c, h.shape[0], h.shape[1], head_out, head_in, 0.0 if clip is None else clip,
        HAS_PBIAS=proj_bias is not None, HAS_BIAS=bias is not None, HAS_CLIP=clip is not None,
        BN=block_n, BK=block_k, BB=rows)


@triton_op("pararnn::conv_decode_step_", mutates_args={"window"})
def _conv_step_(x: torch.Tensor, window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                y: torch.Tensor, silu: bool) -> None:
    grid, block = _launch_shape(*x.shape)
    wrap_triton(_conv_step_kernel)[grid](x, window, weight, bias, y, x.shape[1],
                                         K=weight.shape[-1], SILU=silu, BC=block)


def _check(name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != shape or not tensor.is_contiguous():
        raise ValueError(f"{name} must be a contiguous tensor of shape {shape}, got "
                         f"{tuple(tensor.shape)}{'' if tensor.is_contiguous() else ' (not contiguous)'}")


def _start_from(state: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """The buffer the in-place op updates: ``out`` holding ``state`` (a copy of ``state``
    when ``out`` is None, nothing to copy when ``out`` is ``state``)."""
    if out is None:
        return state.clone()
    return out if out is state else out.copy_(state)


def gru_step(pre: torch.Tensor, cell, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """:meth:`pararnn.ParaGRUCell.step` of ``pre`` ``(B, 3N)`` from ``h`` ``(B, N)`` into
    ``out`` (a new tensor like ``h`` by default; may be ``h`` itself)."""
    batch, n = h.shape
    checks = [("pre", pre, (batch, 3 * n)), ("h", h, (batch, n)), ("a", cell.a, (3, n))]
    for name, tensor, shape in checks + ([] if out is None else [("out", out, (batch, n))]):
        _check(name, tensor, shape)
    out = _start_from(h, out)
    _gru_step_(pre, cell.a, cell.bias, out, cell.recurrent_clip)
    return out


def lstm_step(pre: torch.Tensor, cell, h: torch.Tensor, c: torch.Tensor,
              out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`pararnn.ParaLSTMCell.step` of ``pre`` ``(B, 3N)`` from ``(h, c)`` each
    ``(B, N)``; returns ``(h', c')``, written into ``out`` when given (may be ``(h, c)``)."""
    batch, n = h.shape
    h_out, c_out = (None, None) if out is None else out
    checks = [("pre", pre, (batch, 3 * n)), ("h", h, (batch, n)), ("c", c, (batch, n)),
              ("a", cell.a, (3, n)), ("peephole", cell.peephole, (2, n))]
    if out is not None:
        checks += [("h_out", h_out, (batch, n)), ("c_out", c_out, (batch, n))]
    for name, tensor, shape in checks:
        _check(name, tensor, shape)
    h_out, c_out = _start_from(h, h_out), _start_from(c, c_out)
    _lstm_step_(pre, cell.a, cell.peephole, cell.bias, h_out, c_out, cell.recurrent_clip)
    return h_out, c_out


def _check_projection(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      batch: int, n: int) -> None:
    if weight.dim() != 4 or weight.shape[1] != 3 or weight.shape[0] * weight.shape[2] != n:
        raise ValueError(f"weight must be a (heads, 3, {n} / heads, inputs / heads) tensor (a "
                         f"MultiHeadProjection's, 3 gates of {n} channels), got {tuple(weight.shape)}")
    heads, _, _, head_in = weight.shape
    _check("weight", weight, tuple(weight.shape))
    _check("u", u, (batch, heads * head_in))
    if bias is not None:
        _check("projection bias", bias, (3 * n,))


def gru_projected_step(u: torch.Tensor, weight: torch.Tensor, proj_bias: torch.Tensor | None, cell,
                       h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """:meth:`pararnn.ParaGRUCell.step` of the multi-head projection of ``u`` ``(B, D)``
    from ``h`` ``(B, N)`` in one kernel: ``weight`` ``(heads, 3, N / heads, D / heads)`` and
    ``proj_bias`` ``(3N,)`` or None are those of a
    :class:`~pararnn.layers.projection.MultiHeadProjection` (gate-major output). Float32
    accumulation whatever the dtypes of ``u`` and ``weight``; the pre-activations stay in
    registers (never rounded to the input dtype). Output as :func:`gru_step`."""
    batch, n = h.shape
    _check_projection(u, weight, proj_bias, batch, n)
    checks = [("h", h, (batch, n)), ("a", cell.a, (3, n))]
    for name, tensor, shape in checks + ([] if out is None else [("out", out, (batch, n))]):
        _check(name, tensor, shape)
    out = _start_from(h, out)
    _gru_projected_step_(u, weight, proj_bias, cell.a, cell.bias, out, cell.recurrent_clip)
    return out


def lstm_projected_step(u: torch.Tensor, weight: torch.Tensor, proj_bias: torch.Tensor | None, cell,
                        h: torch.Tensor, c: torch.Tensor,
                        out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`pararnn.ParaLSTMCell.step` of the multi-head projection of ``u`` from
    ``(h, c)`` in one kernel: arguments as :func:`gru_projected_step`, output as
    :func:`lstm_step`."""
    batch, n = h.shape
    _check_projection(u, weight, proj_bias, batch, n)
    h_out, c_out = (None, None) if out is None else out
    checks = [("h", h, (batch, n)), ("c", c, (batch, n)), ("a", cell.a, (3, n)),
              ("peephole", cell.peephole, (2, n))]
    if out is not None:
        checks += [("h_out", h_out, (batch, n)), ("c_out", c_out, (batch, n))]
    for name, tensor, shape in checks:
        _check(name, tensor, shape)
    h_out, c_out = _start_from(h, h_out), _start_from(c, c_out)
    _lstm_projected_step_(u, weight, proj_bias, cell.a, cell.peephole, cell.bias, h_out, c_out,
                          cell.recurrent_clip)
    return h_out, c_out


def conv_step(x: torch.Tensor, window: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor, silu: bool = False) -> torch.Tensor:
    """One step of a depthwise causal convolution (:class:`pararnn.models.lm.CausalConv1d`):
    input ``x`` ``(B, C)`` (rows may be strided), the last ``k-1`` inputs in ``window``
    ``(B, C, k-1)``, ``weight`` ``(C, 1, k)``, ``bias`` ``(C,)``. Returns the output
    ``(B, C)`` in the window's dtype (float32 math; ``silu=True``: SiLU of it) and shifts
    ``x`` into ``window`` in place."""
    batch, channels = x.shape
    k = weight.shape[-1]
    # a strided x (a chunk of a projection) is copied: a stride passed to the kernel would
    # be the traced one, which a compiler need not keep for a tensor it lays out itself
    x = x.contiguous()
    for name, tensor, shape in (("window", window, (batch, channels, k - 1)),
                                ("weight", weight, (channels, 1, k)), ("bias", bias, (channels,))):
        _check(name, tensor, shape)
    y = torch.empty(batch, channels, device=x.device, dtype=window.dtype)
    _conv_step_(x, window, weight, bias, y, silu)
    return y
