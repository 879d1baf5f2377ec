"""Triton kernels for affine recurrences ``h_t = J_t h_{t-1} + r_t`` (the inner solve of Newton).

Same semantics as :func:`pararnn.scan.solve_linear_recurrence`, for diagonal and 2x2 / 3x3
block-diagonal Jacobians in float32 or bfloat16 (math in float32 inside the kernels).

How it runs. A program owns one batch row, a block of channels and a *chunk* of the time
axis; it walks its chunk in tiles of ``BLOCK_T`` steps, solves each tile with
``tl.associative_scan`` over the affine maps ``(J_t, r_t)`` and applies the state carried
in from the previous tile. Each element of ``J`` and ``r`` is read once and each ``h``
written once: the memory floor.

When batch x channels alone gives too few programs to fill the GPU (long sequences, small
``B * N``, e.g. 1 x 65536 x 256), the time axis is cut into several chunks (two levels):

1. every chunk is reduced to one affine map, its summary ``(prod J, local end state)``;
2. the short recurrence over the chunk summaries is solved (the same kernel, one chunk),
   which gives the state entering each chunk;
3. every chunk is solved again from its entering state, writing ``h``.

That reads ``J`` and ``r`` twice (5 passes over a tensor instead of 3) in exchange for
``n_chunks`` times more parallelism; :func:`_pick_chunks` chooses per shape.

"First step" below means ``t = 0`` forward and ``t = T - 1`` in reverse: its Jacobian is
not used (the state before it is zero) and is replaced by 0 inside the kernel, so a
non-finite value there cannot leak into the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..structure import JacobianStructure
from . import interpreter_enabled
from ._triton_utils import affine1, affine2, affine3, last_row

__all__ = ["linear_recurrence", "supports"]

_DTYPES = (torch.float32, torch.bfloat16)
_BLOCK_SIZES = (2, 3)


# --------------------------------------------------------------------------- kernels
@triton.jit
def _coords(n_blocks, n_chunks):
    pid = tl.program_id(0)
    blk = pid % n_blocks
    rest = pid // n_blocks
    return blk, rest % n_chunks, (rest // n_chunks).to(tl.int64)


@triton.jit
def _tile_rows(s, end, T, BLOCK_T: tl.constexpr, REVERSE: tl.constexpr):
    """Processing positions ``p`` of one tile, which are valid, and their time index."""
    p = s + tl.arange(0, BLOCK_T)
    if REVERSE:
        t = T - 1 - p
    else:
        t = p
    return p, p < end, t


@triton.jit
def _carry_in(carry_ptr, init_ptr, b, c, n_chunks, width, cols, col_ok,
              CARRY_IN: tl.constexpr, INIT_IN: tl.constexpr):
    """State entering chunk ``c``: end of chunk ``c - 1``, or ``h0`` for chunk 0, or 0."""
    h = tl.zeros(cols.shape, tl.float32)
    # The chunk index broadcast to a tensor: masks must be tensors of int1 (the
    # interpreter of triton >= 3.9 rejects a tensor combined with a scalar bool).
    chunk = tl.zeros(cols.shape, tl.int32) + c
    if CARRY_IN:
        prev = tl.maximum(c - 1, 0)
        h += tl.load(carry_ptr + (b * n_chunks + prev) * width + cols,
                     mask=col_ok & (chunk > 0), other=0.0)
    if INIT_IN:
        h += tl.load(init_ptr + b * width + cols, mask=col_ok & (chunk == 0), other=0.0).to(tl.float32)
    return h


@triton.jit
def _diag_kernel(
    jac_ptr, rhs_ptr, out_ptr, carry_ptr, init_ptr, sum_jac_ptr, sum_rhs_ptr,
    T, N, chunk_len, n_chunks, n_blocks,
    REVERSE: tl.constexpr, MASK_FIRST: tl.constexpr, CARRY_IN: tl.constexpr,
    INIT_IN: tl.constexpr, WRITE_OUT: tl.constexpr, WRITE_SUMMARY: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    blk, c, b = _coords(n_blocks, n_chunks)
    cols = blk * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < N
    h = _carry_in(carry_ptr, init_ptr, b, c, n_chunks, N, cols, col_ok, CARRY_IN, INIT_IN)
    a_tot = tl.full([BLOCK_C], 1.0, tl.float32)
    is_last = tl.arange(0, BLOCK_T) == BLOCK_T - 1
    start = c * chunk_len
    end = tl.minimum(start + chunk_len, T)
    for s in tl.range(start, end, BLOCK_T, num_stages=NUM_STAGES):
        p, row_ok, t = _tile_rows(s, end, T, BLOCK_T, REVERSE)
        off = (b * T + t)[:, None] * N + cols[None, :]
        m = row_ok[:, None] & col_ok[None, :]
        # rows past the chunk are identity maps, so the last row carries the chunk's state
        a = tl.load(jac_ptr + off, mask=m, other=1.0).to(tl.float32)
        if MASK_FIRST:
            a = tl.where((p == 0)[:, None], 0.0, a)
        r = tl.load(rhs_ptr + off, mask=m, other=0.0).to(tl.float32)
        a, r = tl.associative_scan((a, r), 0, affine1)
        hs = a * h[None, :] + r
        if WRITE_OUT:
            tl.store(out_ptr + off, hs.to(out_ptr.dtype.element_ty), mask=m)
        h = last_row(hs, is_last)
        if WRITE_SUMMARY:
            a_tot = last_row(a, is_last) * a_tot
    if WRITE_SUMMARY:
        so = (b * n_chunks + c) * N + cols
        tl.store(sum_jac_ptr + so, a_tot, mask=col_ok)
        tl.store(sum_rhs_ptr + so, h, mask=col_ok)


@triton.jit
def _block2_kernel(
    jac_ptr, rhs_ptr, out_ptr, carry_ptr, init_ptr, sum_jac_ptr, sum_rhs_ptr,
    T, NB, chunk_len, n_chunks, n_blocks,
    REVERSE: tl.constexpr, MASK_FIRST: tl.constexpr, CARRY_IN: tl.constexpr,
    INIT_IN: tl.constexpr, WRITE_OUT: tl.constexpr, WRITE_SUMMARY: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    blk, c, b = _coords(n_blocks, n_chunks)
    nb = blk * BLOCK_C + tl.arange(0, BLOCK_C)
    nb_ok = nb < NB
    N = 2 * NB
    h0 = _carry_in(carry_ptr, init_ptr, b, c, n_chunks, N, 2 * nb, nb_ok, CARRY_IN, INIT_IN)
    h1 = _carry_in(carry_ptr, init_ptr, b, c, n_chunks, N, 2 * nb + 1, nb_ok, CARRY_IN, INIT_IN)
    t00 = tl.full([BLOCK_C], 1.0, tl.float32)
    t01 = tl.zeros([BLOCK_C], tl.float32)
    t10 = tl.zeros([BLOCK_C], tl.float32)
    t11 = tl.full([BLOCK_C], 1.0, tl.float32)
    is_last = tl.arange(0, BLOCK_T) == BLOCK_T - 1
    start = c * chunk_len
    end = tl.minimum(start + chunk_len, T)
    for s in tl.range(start, end, BLOCK_T, num_stages=NUM_STAGES):
        p, row_ok, t = _tile_rows(s, end, T, BLOCK_T, REVERSE)
        blk_idx = (b * T + t)[:, None] * NB + nb[None, :]
        m = row_ok[:, None] & nb_ok[None, :]
        jo = blk_idx * 4
        ro = blk_idx * 2
        a00 = tl.load(jac_ptr + jo, mask=m, other=1.0).to(tl.float32)
        a01 = tl.load(jac_ptr + jo + 1, mask=m, other=0.0).to(tl.float32)
        a10 = tl.load(jac_ptr + jo + 2, mask=m, other=0.0).to(tl.float32)
        a11 = tl.load(jac_ptr + jo + 3, mask=m, other=1.0).to(tl.float32)
        if MASK_FIRST:
            first = (p == 0)[:, None]
            a00 = tl.where(first, 0.0, a00)
            a01 = tl.where(first, 0.0, a01)
            a10 = tl.where(first, 0.0, a10)
            a11 = tl.where(first, 0.0, a11)
        r0 = tl.load(rhs_ptr + ro, mask=m, other=0.0).to(tl.float32)
        r1 = tl.load(rhs_ptr + ro + 1, mask=m, other=0.0).to(tl.float32)
        a00, a01, a10, a11, r0, r1 = tl.associative_scan(
            (a00, a01, a10, a11, r0, r1), 0, affine2
        )
        hs0 = a00 * h0[None, :] + a01 * h1[None, :] + r0
        hs1 = a10 * h0[None, :] + a11 * h1[None, :] + r1
        if WRITE_OUT:
            tl.store(out_ptr + ro, hs0.to(out_ptr.dtype.element_ty), mask=m)
            tl.store(out_ptr + ro + 1, hs1.to(out_ptr.dtype.element_ty), mask=m)
        h0 = last_row(hs0, is_last)
        h1 = last_row(hs1, is_last)
        if WRITE_SUMMARY:
            t00, t01, t10, t11, _, _ = affine2(
                t00, t01, t10, t11, h0, h0,
                last_row(a00, is_last), last_row(a01, is_last),
                last_row(a10, is_last), last_row(a11, is_last), h0, h0,
            )
    if WRITE_SUMMARY:
        so = (b * n_chunks + c) * NB + nb
        tl.store(sum_jac_ptr + so * 4, t00, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 4 + 1, t01, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 4 + 2, t10, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 4 + 3, t11, mask=nb_ok)
        tl.store(sum_rhs_ptr + so * 2, h0, mask=nb_ok)
        tl.store(sum_rhs_ptr + so * 2 + 1, h1, mask=nb_ok)


@triton.jit
def _block3_kernel(
    jac_ptr, rhs_ptr, out_ptr, carry_ptr, init_ptr, sum_jac_ptr, sum_rhs_ptr,
    T, NB, chunk_len, n_chunks, n_blocks,
    REVERSE: tl.constexpr, MASK_FIRST: tl.constexpr, CARRY_IN: tl.constexpr,
    INIT_IN: tl.constexpr, WRITE_OUT: tl.constexpr, WRITE_SUMMARY: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    blk, c, b = _coords(n_blocks, n_chunks)
    nb = blk * BLOCK_C + tl.arange(0, BLOCK_C)
    nb_ok = nb < NB
    N = 3 * NB
    h0 = _carry_in(carry_ptr, init_ptr, b, c, n_chunks, N, 3 * nb, nb_ok, CARRY_IN, INIT_IN)
    h1 = _carry_in(carry_ptr, init_ptr, b, c, n_chunks, N, 3 * nb + 1, nb_ok, CARRY_IN, INIT_IN)
    h2 = _carry_in(carry_ptr, init_ptr, b, c, n_chunks, N, 3 * nb + 2, nb_ok, CARRY_IN, INIT_IN)
    one = tl.full([BLOCK_C], 1.0, tl.float32)
    zero = tl.zeros([BLOCK_C], tl.float32)
    t00, t01, t02 = one, zero, zero
    t10, t11, t12 = zero, one, zero
    t20, t21, t22 = zero, zero, one
    is_last = tl.arange(0, BLOCK_T) == BLOCK_T - 1
    start = c * chunk_len
    end = tl.minimum(start + chunk_len, T)
    for s in tl.range(start, end, BLOCK_T, num_stages=NUM_STAGES):
        p, row_ok, t = _tile_rows(s, end, T, BLOCK_T, REVERSE)
        blk_idx = (b * T + t)[:, None] * NB + nb[None, :]
        m = row_ok[:, None] & nb_ok[None, :]
        jo = blk_idx * 9
        ro = blk_idx * 3
        a00 = tl.load(jac_ptr + jo, mask=m, other=1.0).to(tl.float32)
        a01 = tl.load(jac_ptr + jo + 1, mask=m, other=0.0).to(tl.float32)
        a02 = tl.load(jac_ptr + jo + 2, mask=m, other=0.0).to(tl.float32)
        a10 = tl.load(jac_ptr + jo + 3, mask=m, other=0.0).to(tl.float32)
        a11 = tl.load(jac_ptr + jo + 4, mask=m, other=1.0).to(tl.float32)
        a12 = tl.load(jac_ptr + jo + 5, mask=m, other=0.0).to(tl.float32)
        a20 = tl.load(jac_ptr + jo + 6, mask=m, other=0.0).to(tl.float32)
        a21 = tl.load(jac_ptr + jo + 7, mask=m, other=0.0).to(tl.float32)
        a22 = tl.load(jac_ptr + jo + 8, mask=m, other=1.0).to(tl.float32)
        if MASK_FIRST:
            first = (p == 0)[:, None]
            a00 = tl.where(first, 0.0, a00)
            a01 = tl.where(first, 0.0, a01)
            a02 = tl.where(first, 0.0, a02)
            a10 = tl.where(first, 0.0, a10)
            a11 = tl.where(first, 0.0, a11)
            a12 = tl.where(first, 0.0, a12)
            a20 = tl.where(first, 0.0, a20)
            a21 = tl.where(first, 0.0, a21)
            a22 = tl.where(first, 0.0, a22)
        r0 = tl.load(rhs_ptr + ro, mask=m, other=0.0).to(tl.float32)
        r1 = tl.load(rhs_ptr + ro + 1, mask=m, other=0.0).to(tl.float32)
        r2 = tl.load(rhs_ptr + ro + 2, mask=m, other=0.0).to(tl.float32)
        a00, a01, a02, a10, a11, a12, a20, a21, a22, r0, r1, r2 = tl.associative_scan(
            (a00, a01, a02, a10, a11, a12, a20, a21, a22, r0, r1, r2), 0, affine3
        )
        hs0 = a00 * h0[None, :] + a01 * h1[None, :] + a02 * h2[None, :] + r0
        hs1 = a10 * h0[None, :] + a11 * h1[None, :] + a12 * h2[None, :] + r1
        hs2 = a20 * h0[None, :] + a21 * h1[None, :] + a22 * h2[None, :] + r2
        if WRITE_OUT:
            tl.store(out_ptr + ro, hs0.to(out_ptr.dtype.element_ty), mask=m)
            tl.store(out_ptr + ro + 1, hs1.to(out_ptr.dtype.element_ty), mask=m)
            tl.store(out_ptr + ro + 2, hs2.to(out_ptr.dtype.element_ty), mask=m)
        h0 = last_row(hs0, is_last)
        h1 = last_row(hs1, is_last)
        h2 = last_row(hs2, is_last)
        if WRITE_SUMMARY:
            t00, t01, t02, t10, t11, t12, t20, t21, t22, _, _, _ = affine3(
                t00, t01, t02, t10, t11, t12, t20, t21, t22, h0, h0, h0,
                last_row(a00, is_last), last_row(a01, is_last), last_row(a02, is_last),
                last_row(a10, is_last), last_row(a11, is_last), last_row(a12, is_last),
                last_row(a20, is_last), last_row(a21, is_last), last_row(a22, is_last),
                h0, h0, h0,
            )
    if WRITE_SUMMARY:
        so = (b * n_chunks + c) * NB + nb
        tl.store(sum_jac_ptr + so * 9, t00, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 9 + 1, t01, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 9 + 2, t02, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 9 + 3, t10, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 9 + 4, t11, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 9 + 5, t12, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 9 + 6, t20, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 9 + 7, t21, mask=nb_ok)
        tl.store(sum_jac_ptr + so * 9 + 8, t22, mask=nb_ok)
        tl.store(sum_rhs_ptr + so * 3, h0, mask=nb_ok)
        tl.store(sum_rhs_ptr + so * 3 + 1, h1, mask=nb_ok)
        tl.store(sum_rhs_ptr + so * 3 + 2, h2, mask=nb_ok)


_KERNELS = {1: _diag_kernel, 2: _block2_kernel, 3: _block3_kernel}


# --------------------------------------------------------------------------- launch
@dataclass(frozen=True)
class _Config:
    """Fixed launch parameters and chunking policy (no autotuning: it breaks the CPU
    interpreter).

    ``block_c`` counts channels for the diagonal kernel and k x k blocks otherwise. One
    pass is used when batch x channel blocks gives at least ``single_pass_per_sm``
    programs per multiprocessor; otherwise time is cut into chunks to reach
    ``chunked_per_sm`` programs per multiprocessor, each chunk at least 4 tiles long.
    """

    block_t: int
    block_c: int
    num_warps: int
    num_stages: int = 1
    single_pass_per_sm: int = 1
    chunked_per_sm: int = 8


# Chosen from a sweep on an H100 (benchmarks/gpu_scan.py --sweep, BENCHMARKS.md). The
# diagonal single pass runs at 1.1-1.4x the memory floor from 2 programs per SM on, so
# chunking (which reads J and r twice) only pays for very few programs; the block scans
# do more arithmetic per byte and want short tiles and ~8 programs per SM.
_CONFIGS = {
    1: _Config(block_t=64, block_c=32, num_warps=2, num_stages=2, single_pass_per_sm=1),
    2: _Config(block_t=8, block_c=32, num_warps=4, single_pass_per_sm=8),
    3: _Config(block_t=8, block_c=32, num_warps=4, single_pass_per_sm=8),
}
_MIN_TILES_PER_CHUNK = 4


def supports(structure: JacobianStructure, dtype: torch.dtype) -> bool:
    """Whether :func:`linear_recurrence` handles this Jacobian structure and dtype.

    Diagonal and block-diagonal with k = 2 or 3, in float32 or bfloat16. float64 is not
    supported (it stays on the PyTorch path rather than being computed in float32).
    """
    if dtype not in _DTYPES:
        return False
    if structure.kind == "diagonal":
        return True
    return structure.kind == "block" and structure.block_size in _BLOCK_SIZES


def linear_recurrence(
    jac: torch.Tensor,
    rhs: torch.Tensor,
    structure: JacobianStructure,
    *,
    reverse: bool = False,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor:
    """All states of ``h_t = J_t h_{t-1} + r_t`` along dim 1 (Triton).

    Same semantics as :func:`pararnn.scan.solve_linear_recurrence`.

    Args:
        jac: ``(B, T, N)`` (diagonal) or ``(B, T, N // k, k, k)`` (block, k in {2, 3}),
            float32 or bfloat16, any strides.
        rhs: ``(B, T, N)``, float32 or bfloat16.
        reverse: if True, ``h_t = J_t h_{t+1} + r_t`` with ``h_T = 0``.
        initial_state: optional ``(B, N)`` state before the first step (``h_{-1}``, or
            ``h_T`` in reverse); then the first step's Jacobian is used. Default zero.

    Returns:
        ``(B, T, N)`` states, computed in float32: float32 if ``jac`` or ``rhs`` is
        float32, bfloat16 if both are bfloat16.

    Raises:
        ValueError: unsupported structure or dtype, mismatched shapes or devices, or a
            CPU tensor while the Triton interpreter is off.
    """
    k = _check(jac, rhs, structure, initial_state)
    out_dtype = torch.promote_types(jac.dtype, rhs.dtype)
    batch, steps, width = rhs.shape
    out = torch.empty((batch, steps, width), dtype=out_dtype, device=rhs.device)
    if out.numel() == 0:
        return out
    jac, rhs = jac.contiguous(), rhs.contiguous()
    if initial_state is not None:
        initial_state = initial_state.contiguous()
    cfg = _CONFIGS[k]
    n_chunks = _pick_chunks(batch, steps, width // k, cfg, rhs.device)
    _solve(jac, rhs, out, k, reverse, initial_state, n_chunks, cfg)
    return out


def _check(jac, rhs, structure, initial_state) -> int:
    if not isinstance(structure, JacobianStructure) or not supports(structure, rhs.dtype):
        raise ValueError(
            f"linear_recurrence supports diagonal and block-diagonal (k in {_BLOCK_SIZES}) "
            f"Jacobians in {_DTYPES}; got structure={structure!r}, rhs.dtype={rhs.dtype}"
        )
    if jac.dtype not in _DTYPES:
        raise ValueError(f"jac.dtype must be one of {_DTYPES}, got {jac.dtype}")
    if rhs.ndim != 3:
        raise ValueError(f"rhs must have shape (B, T, N), got {tuple(rhs.shape)}")
    batch, steps, width = rhs.shape
    structure.check_state_size(width)
    expected = structure.jacobian_shape((batch, steps), width)
    if tuple(jac.shape) != expected:
        raise ValueError(f"jac must have shape {expected} for rhs {tuple(rhs.shape)}, got {tuple(jac.shape)}")
    tensors = {"jac": jac, "rhs": rhs}
    if initial_state is not None:
        if tuple(initial_state.shape) != (batch, width) or initial_state.dtype not in _DTYPES:
            raise ValueError(
                f"initial_state must be a float32/bfloat16 tensor of shape {(batch, width)}, "
                f"got {initial_state.dtype} {tuple(initial_state.shape)}"
            )
        tensors["initial_state"] = initial_state
    for name, tensor in tensors.items():
        if tensor.device != rhs.device:
            raise ValueError(f"{name} is on {tensor.device}, rhs on {rhs.device}")
    if rhs.device.type != "cuda" and not interpreter_enabled():
        raise ValueError(
            f"linear_recurrence needs CUDA tensors (got {rhs.device}); on CPU set "
            "TRITON_INTERPRET=1 before the kernels are first used to run them interpreted"
        )
    return 1 if structure.kind == "diagonal" else structure.block_size


def _pick_chunks(batch: int, steps: int, columns: int, cfg: _Config, device: torch.device) -> int:
    """How many chunks to cut the time axis into (1: a single pass)."""
    programs = batch * triton.cdiv(columns, cfg.block_c)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    if programs >= cfg.single_pass_per_sm * sms:
        return 1
    longest = max(1, steps // (cfg.block_t * _MIN_TILES_PER_CHUNK))
    return min(triton.cdiv(cfg.chunked_per_sm * sms, programs), longest)


def _solve(jac, rhs, out, k, reverse, initial_state, n_chunks, cfg) -> None:
    """Write the states into ``out`` using ``n_chunks`` chunks along time (contiguous inputs)."""
    batch, steps, width = rhs.shape
    chunk_len = triton.cdiv(triton.cdiv(steps, n_chunks), cfg.block_t) * cfg.block_t
    n_chunks = triton.cdiv(steps, chunk_len)
    init = initial_state
    mask_first = init is None
    if n_chunks == 1:
        _launch(k, cfg, jac, rhs, out, rhs, init, None, None, steps, chunk_len, 1,
                reverse, mask_first, carry_in=False, write_out=True)
        return
    sum_jac = torch.empty((batch, n_chunks, *jac.shape[2:]), dtype=torch.float32, device=rhs.device)
    sum_rhs = torch.empty((batch, n_chunks, width), dtype=torch.float32, device=rhs.device)
    _launch(k, cfg, jac, rhs, None, None, None, sum_jac, sum_rhs, steps, chunk_len, n_chunks,
            reverse, mask_first, carry_in=False, write_out=False)
    # Chunk c's summary maps the state entering it to the state leaving it, so the
    # states leaving the chunks solve a forward recurrence of length n_chunks.
    ends = torch.empty_like(sum_rhs)
    _solve(sum_jac, sum_rhs, ends, k, False, init, 1, cfg)
    _launch(k, cfg, jac, rhs, out, ends, init, None, None, steps, chunk_len, n_chunks,
            reverse, mask_first, carry_in=True, write_out=True)


def _launch(k, cfg, jac, rhs, out, carry, init, sum_jac, sum_rhs, steps, chunk_len, n_chunks,
            reverse, mask_first, *, carry_in, write_out) -> None:
    columns = rhs.shape[2] // k
    n_blocks = triton.cdiv(columns, cfg.block_c)
    grid = (rhs.shape[0] * n_chunks * n_blocks,)
    # Pointers a configuration does not touch still need a tensor: pass rhs.
    _KERNELS[k][grid](
        jac, rhs,
        out if out is not None else rhs,
        carry if carry is not None else rhs,
        init if init is not None else rhs,
        sum_jac if sum_jac is not None else rhs,
        sum_rhs if sum_rhs is not None else rhs,
        steps, columns, chunk_len, n_chunks, n_blocks,
        REVERSE=reverse, MASK_FIRST=mask_first, CARRY_IN=carry_in,
        INIT_IN=init is not None and write_out, WRITE_OUT=write_out,
        WRITE_SUMMARY=not write_out,
        BLOCK_T=cfg.block_t, BLOCK_C=cfg.block_c, NUM_STAGES=cfg.num_stages,
        num_warps=cfg.num_warps,
    )
