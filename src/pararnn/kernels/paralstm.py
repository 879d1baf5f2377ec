"""Fused Triton kernels for the ParaLSTM cell (:class:`pararnn.cells.ParaLSTMCell`).

The op: ``paralstm_solve(pre, a, peephole, bias, initial_state, resets, *, clip, rounds,
verify_tol, sequential, hidden) -> (states, report)`` (``(states, h, report)`` with
``hidden``), differentiable (autograd Function below), and ``paralstm_naive`` with the
same arguments, the plain PyTorch loop it must match.

Same scheme as :mod:`.paragru` (see :mod:`._fused_common`), with a 2-vector state
``(c, h)`` per channel and 2x2 Jacobian blocks. ``newton_forward`` returns the solution
of the recurrence; ``num_iters`` bounds the boundary-Newton rounds.

Layouts: ``pre`` (B, T, 3N) gate-major ``[u_f | u_c | u_o]`` or head-major (H, B, T, 3N/H)
(:mod:`pararnn.layout`); ``a`` (3, N) = (a_f, a_c, a_o);
``peephole`` (2, N) = (c_f, c_o); states (B, T, 2N) interleaved ``(c_0, h_0, c_1, h_1, ...)``,
``h0`` (B, 2N) in the same layout.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._grad import needs_grad
from ..layout import gate_major, head_major
from ._fused_common import (as_f32, backward_step_masks, boundaries_mismatch, boundary_buffers,
                            boundary_kernel, BOUNDARY_TOL, channel_offsets, check_common,
                            check_hidden_out, clip_gate_gradients, clip_gradient, clip_value,
                            clip_vector, default_plan, fake_flags, forward_step_masks,
                            ForwardReport, fused_op, head_block, head_offsets, hidden_buffer,
                            kernel_pre, launcher, load_clipped_gate_vectors, load_gate_bias,
                            load_gate_tiles, make_plan, op_flags, op_report, optional_flags,
                            pack_resets, put_row, reject_double_backward, reset_word, row_of,
                            rows_in, run_segmented, sigmoid, step_offsets, store_gate_tiles,
                            supports_tensor, tanh, tl, triton)

__all__ = ["supports", "paralstm_solve", "paralstm_naive", "forward", "newton_forward",
           "sequential_forward", "backward"]


def supports(pre: torch.Tensor) -> bool:
    """True if the fused kernels can run on ``pre`` (fp32/bf16, CUDA or interpreter)."""
    return supports_tensor(pre)


@triton.jit
def _moved(X, S, bnd, mn, tol):
    """The corrected (c, h) start and whether it moved (``tol`` in fp32, as the GRU's)."""
    tol = tl.cast(tol, tl.float32)
    x0 = tl.load(X + 2 * bnd, mask=mn, other=0.0)
    x1 = tl.load(X + 2 * bnd + 1, mask=mn, other=0.0)
    d0 = tl.abs(x0 - tl.load(S + 2 * bnd, mask=mn, other=0.0)) - tol * (1.0 + tl.abs(x0))
    d1 = tl.abs(x1 - tl.load(S + 2 * bnd + 1, mask=mn, other=0.0)) - tol * (1.0 + tl.abs(x1))
    moved = tl.max(tl.where(mn, tl.maximum(d0, d1), -1.0), 0)
    return x0, x1, moved > 0


@triton.jit
def _store_boundary(E, A, S, bnd, mn, e0, e1, m00, m01, m10, m11, s0, s1):
    tl.store(E + 2 * bnd, e0, mask=mn)
    tl.store(E + 2 * bnd + 1, e1, mask=mn)
    tl.store(A + 4 * bnd, m00, mask=mn)
    tl.store(A + 4 * bnd + 1, m01, mask=mn)
    tl.store(A + 4 * bnd + 2, m10, mask=mn)
    tl.store(A + 4 * bnd + 3, m11, mask=mn)
    tl.store(S + 2 * bnd, s0, mask=mn)
    tl.store(S + 2 * bnd + 1, s1, mask=mn)


@triton.jit
def _load_cell(AW, PW, BIAS, H0, b, offs, mn, N, clip, HAS_BIAS: tl.constexpr,
               HAS_H0: tl.constexpr, HAS_CLIP: tl.constexpr, BN: tl.constexpr):
    """Recurrent weights and peepholes (clamped by ``clip``), gate bias and initial
    (c, h) of one channel block."""
    a_f, a_c, a_o = load_clipped_gate_vectors(AW, offs, mn, N, clip, HAS_CLIP)
    p_f = clip_vector(tl.load(PW + offs, mask=mn, other=0.0), clip, HAS_CLIP)
    p_o = clip_vector(tl.load(PW + N + offs, mask=mn, other=0.0), clip, HAS_CLIP)
    b_f, b_c, b_o = load_gate_bias(BIAS, offs, mn, N, HAS_BIAS, BN)
    if HAS_H0:
        c0 = tl.load(H0 + b * 2 * N + 2 * offs, mask=mn, other=0.0)
        h0 = tl.load(H0 + b * 2 * N + 2 * offs + 1, mask=mn, other=0.0)
    else:
        c0 = tl.zeros([BN], dtype=tl.float32)
        h0 = tl.zeros([BN], dtype=tl.float32)
    return a_f, a_c, a_o, p_f, p_o, b_f, b_c, b_o, c0, h0


@triton.jit
def _pair_offsets(pid_n, BN: tl.constexpr, VEC: tl.constexpr):
    """Offsets of program ``pid_n``'s channels in a row of interleaved (c, h) states (2 N
    wide): ``2 BN`` entries, each thread's ``2 VEC`` contiguous (see ``channel_offsets``)."""
    return tl.max_contiguous(2 * pid_n * BN + tl.arange(0, 2 * BN), 2 * VEC)


@triton.jit
def _pair_mask(row_mask, pair_offs, N):
    """(K, 2 BN) mask of steps ``row_mask`` and channels in range, taken in pair space so
    that it is constant over each thread's vector (a mask built from the channels' own
    ``offs < N`` splits the vector into one access per state and channel)."""
    return row_mask[:, None] & (pair_offs < 2 * N)[None, :]


@triton.jit
def _store_pairs(X, b, T, N, t_first, rows, pair_offs, row_mask, c, h, BN: tl.constexpr):
    """Store (K, BN) tiles ``c``, ``h`` interleaved into steps ``t_first + rows`` of a (B, T,
    2N) tensor: one vector store per thread (the inverse of :func:`_load_pairs`)."""
    tile = tl.reshape(tl.join(c, h), [c.shape[0], 2 * BN])
    tl.store(X + step_offsets(b, T, 2 * N, t_first, rows, pair_offs), tile,
             mask=_pair_mask(row_mask, pair_offs, N))


@triton.jit
def _load_pairs(X, b, T, N, t_first, rows, pair_offs, row_mask, BN: tl.constexpr):
    """The (c, h) pairs of steps ``t_first + rows`` of a (B, T, 2N) tensor of interleaved
    states as two (K, BN) tiles, loaded as one contiguous (K, 2 BN) tile: a thread's
    channels arrive in one vector load, not one load per state and channel."""
    tile = tl.load(X + step_offsets(b, T, 2 * N, t_first, rows, pair_offs),
                   mask=_pair_mask(row_mask, pair_offs, N), other=0.0)
    return tl.split(tl.reshape(tile, [tile.shape[0], BN, 2]))


@triton.jit
def _lstm_gates(cp, hp, uf, uc, uo, a_f, a_c, a_o, p_f, p_o):
    f = sigmoid(a_f * hp + uf + p_f * cp)
    cand = tanh(a_c * hp + uc)
    cn = cand + f * (cp - cand)
    o = sigmoid(a_o * hp + uo + p_o * cn)
    tc = tanh(cn)
    return f, cand, cn, o, tc


@triton.jit
def _lstm_jacobian(cp, f, cand, o, tc, a_f, a_c, a_o, p_f, p_o):
    # rows (c', h'), columns (c, h), as ParaLSTMCell.step_and_jacobian
    df = f * (1.0 - f)
    dc_dc = df * p_f * (cp - cand) + f
    dc_dh = df * a_f * (cp - cand) + (1.0 - f) * (1.0 - cand * cand) * a_c
    do = o * (1.0 - o)
    through = do * p_o * tc + o * (1.0 - tc * tc)
    return dc_dc, dc_dh, through * dc_dc, through * dc_dh + do * a_o * tc


@triton.jit
def _lstm_fwd_kernel(PRE, AW, PW, BIAS, H0, RST, HOUT, HID, E, A, S, X, FELL, T, N, NH, NB, L,
                     W, P, tol, clip, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                     HAS_RST: tl.constexpr, HAS_CLIP: tl.constexpr, HAS_HID: tl.constexpr,
                     SEGMENTED: tl.constexpr, CORRECT: tl.constexpr, VERIFY: tl.constexpr,
                     BN: tl.constexpr, K: tl.constexpr, VEC: tl.constexpr,
                     STAGES: tl.constexpr, ALIGNED: tl.constexpr):
    # blocks of K steps as (K, BN) tiles, pipelined as in paragru's kernels; ALIGNED as
    # there. HAS_HID: h alone also goes to HID (B, T, N) in HID's dtype, the layer's output
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs = channel_offsets(pid_n, BN, VEC)
    pair_offs = _pair_offsets(pid_n, BN, VEC)
    PRE = head_block(PRE, pid_n, T, NH, BN)
    pre_offs = head_offsets(pid_n, NH, BN, VEC)
    mn = offs < N
    rows = tl.arange(0, K)
    a_f, a_c, a_o, p_f, p_o, b_f, b_c, b_o, c0, h0 = _load_cell(
        AW, PW, BIAS, H0, b, offs, mn, N, clip, HAS_BIAS, HAS_H0, HAS_CLIP, BN)
    seg_start = c * L
    seg_end = tl.minimum(seg_start + L, T)
    bnd = (b * tl.num_programs(2) + c) * N + offs
    if CORRECT:
        cs, hs, run = _moved(X, S, bnd, mn, tol)
        t_begin = seg_start
    else:
        if VERIFY:
            # the exact one-segment walk, only where a P-segment solve left mismatched
            # boundaries (E, A, S are that solve's); FELL records which blocks reran
            run = boundaries_mismatch(E, A, S, b, P, N, offs, mn, tol, 2, BN)
            tl.store(FELL + b * tl.num_programs(0) + pid_n, run.to(tl.int8))
        else:
            run = True
        t_begin = tl.maximum(seg_start - W, 0)
        cs = tl.where(t_begin == 0, c0, 0.0)
        hs = tl.where(t_begin == 0, h0, 0.0)
    if run:
        s_c = cs
        s_h = hs
        m00 = tl.full([BN], 1.0, tl.float32)
        m01 = tl.zeros([BN], dtype=tl.float32)
        m10 = tl.zeros([BN], dtype=tl.float32)
        m11 = tl.full([BN], 1.0, tl.float32)
        base0 = (t_begin // K) * K
        if HAS_RST:
            bits = reset_word(RST, b, NB, base0 // K)
        for t0 in tl.range(base0, seg_end, K, num_stages=STAGES):
            t_rows = t0 + rows
            uf, uc, uo = load_gate_tiles(PRE, b, T, NH, t0, rows, pre_offs,
                                         rows_in(t_rows, t_begin, seg_end, mn))
            if HAS_RST:  # a scalar: loaded one block ahead by hand
                bits_n = reset_word(RST, b, NB, t0 // K + 1)
            out_c = tl.zeros([K, BN], dtype=tl.float32)
            out_h = tl.zeros([K, BN], dtype=tl.float32)
            for j in tl.static_range(K):
                t = t0 + j
                live, in_segment = forward_step_masks(t, t0, t_begin, seg_start, seg_end,
                                                      ALIGNED)
                if SEGMENTED and (not ALIGNED or j == 0):
                    s_c = tl.where(t == seg_start, cs, s_c)
                    s_h = tl.where(t == seg_start, hs, s_h)
                if HAS_RST:
                    restart = ((bits >> j) & 1) != 0
                    cp = tl.where(restart, c0, cs)
                    hp = tl.where(restart, h0, hs)
                else:
                    cp = cs
                    hp = hs
                f, cand, cn, o, tc = _lstm_gates(cp, hp, row_of(uf, rows, j) + b_f,
                                                 row_of(uc, rows, j) + b_c,
                                                 row_of(uo, rows, j) + b_o,
                                                 a_f, a_c, a_o, p_f, p_o)
                cs = tl.where(live, cn, cs)
                hs = tl.where(live, o * tc, hs)
                out_c = put_row(out_c, rows, j, cs)
                out_h = put_row(out_h, rows, j, hs)
                if SEGMENTED:
                    j00, j01, j10, j11 = _lstm_jacobian(cp, f, cand, o, tc, a_f, a_c, a_o,
                                                        p_f, p_o)
                    if HAS_RST:
                        j00 = tl.where(restart, 0.0, j00)
                        j01 = tl.where(restart, 0.0, j01)
                        j10 = tl.where(restart, 0.0, j10)
                        j11 = tl.where(restart, 0.0, j11)
                    upd = in_segment
                    n00 = j00 * m00 + j01 * m10
                    n01 = j00 * m01 + j01 * m11
                    n10 = j10 * m00 + j11 * m10
                    n11 = j10 * m01 + j11 * m11
                    m00 = tl.where(upd, n00, m00)
                    m01 = tl.where(upd, n01, m01)
                    m10 = tl.where(upd, n10, m10)
                    m11 = tl.where(upd, n11, m11)
            in_seg = (t_rows >= seg_start) & (t_rows < seg_end)
            _store_pairs(HOUT, b, T, N, t0, rows, pair_offs, in_seg, out_c, out_h, BN)
            if HAS_HID:
                tl.store(HID + step_offsets(b, T, N, t0, rows, offs),
                         out_h.to(HID.dtype.element_ty), mask=in_seg[:, None] & mn[None, :])
            if HAS_RST:
                bits = bits_n
        if SEGMENTED:
            _store_boundary(E, A, S, bnd, mn, cs, hs, m00, m01, m10, m11, s_c, s_h)


@triton.jit
def _lstm_bwd_kernel(PRE, AW, PW, BIAS, H0, RST, HS, GH, GPRE, GA, GH0, E, A, S, X, T, N, NH, NB,
                     L, W, tol, clip, GROWS: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_H0: tl.constexpr, HAS_RST: tl.constexpr, HAS_CLIP: tl.constexpr,
                     GRAD_H_ONLY: tl.constexpr, SEGMENTED: tl.constexpr,
                     CORRECT: tl.constexpr, BN: tl.constexpr, K: tl.constexpr,
                     VEC: tl.constexpr, STAGES: tl.constexpr, ALIGNED: tl.constexpr):
    # walks down from t_top in blocks of K steps, pipelined and ALIGNED as the forward.
    # GRAD_H_ONLY: GH is the gradient of h alone, (B, T, N) in any dtype (c's is zero);
    # otherwise of all the states, (B, T, 2N) interleaved fp32
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs = channel_offsets(pid_n, BN, VEC)
    pair_offs = _pair_offsets(pid_n, BN, VEC)
    PRE = head_block(PRE, pid_n, T, NH, BN)
    GPRE = head_block(GPRE, pid_n, T, NH, BN)  # pre's layout
    pre_offs = head_offsets(pid_n, NH, BN, VEC)
    mn = offs < N
    rows = tl.arange(0, K)
    a_f, a_c, a_o, p_f, p_o, b_f, b_c, b_o, c0, h0 = _load_cell(
        AW, PW, BIAS, H0, b, offs, mn, N, clip, HAS_BIAS, HAS_H0, HAS_CLIP, BN)
    seg_start = c * L
    seg_end = tl.minimum(seg_start + L, T)
    part = b * tl.num_programs(2) + c
    bnd = part * N + offs
    if CORRECT:
        mu_c, mu_h, run = _moved(X, S, bnd, mn, tol)
        t_top = seg_end
    else:
        run = True
        t_top = tl.minimum(seg_end + W, T)
        mu_c = tl.zeros([BN], dtype=tl.float32)
        mu_h = tl.zeros([BN], dtype=tl.float32)
    if run:
        s_c = mu_c
        s_h = mu_h
        m00 = tl.full([BN], 1.0, tl.float32)
        m01 = tl.zeros([BN], dtype=tl.float32)
        m10 = tl.zeros([BN], dtype=tl.float32)
        m11 = tl.full([BN], 1.0, tl.float32)
        ga_f = tl.zeros([BN], dtype=tl.float32)
        ga_c = tl.zeros([BN], dtype=tl.float32)
        ga_o = tl.zeros([BN], dtype=tl.float32)
        gp_f = tl.zeros([BN], dtype=tl.float32)
        gp_o = tl.zeros([BN], dtype=tl.float32)
        gb_f = tl.zeros([BN], dtype=tl.float32)
        gb_c = tl.zeros([BN], dtype=tl.float32)
        gb_o = tl.zeros([BN], dtype=tl.float32)
        gc0 = tl.zeros([BN], dtype=tl.float32)
        gh0 = tl.zeros([BN], dtype=tl.float32)
        # blocks of K steps aligned to multiples of K, from the one holding t_top - 1 down
        top_base = ((t_top - 1) // K) * K
        if HAS_RST:
            bits = reset_word(RST, b, NB, top_base // K)
        for blk in tl.range(0, (top_base - (seg_start // K) * K) // K + 1, num_stages=STAGES):
            base = top_base - blk * K
            t_rows = base + rows
            in_walk = (t_rows >= seg_start) & (t_rows < t_top)
            uf, uc, uo = load_gate_tiles(PRE, b, T, NH, base, rows, pre_offs,
                                         rows_in(t_rows, seg_start, t_top, mn))
            if GRAD_H_ONLY:
                gh = tl.load(GH + step_offsets(b, T, N, base, rows, offs),
                             mask=in_walk[:, None] & mn[None, :], other=0.0).to(tl.float32)
            else:
                gc, gh = _load_pairs(GH, b, T, N, base, rows, pair_offs, in_walk, BN)
            # the states before each step: row t - 1 of HS
            hc, hh = _load_pairs(HS - 2 * N, b, T, N, base, rows, pair_offs,
                                 in_walk & (t_rows > 0), BN)
            if HAS_RST:  # a scalar: loaded one block ahead by hand
                bits_n = reset_word(RST, b, NB, base // K - 1)
            o_f = tl.zeros([K, BN], dtype=tl.float32)
            o_c = tl.zeros([K, BN], dtype=tl.float32)
            o_o = tl.zeros([K, BN], dtype=tl.float32)
            for jj in tl.static_range(K):
                j = K - 1 - jj
                t = base + j
                live, keep = backward_step_masks(t, base, seg_start, seg_end, t_top, SEGMENTED,
                                                 ALIGNED)
                if SEGMENTED and (not ALIGNED or j == K - 1):
                    s_c = tl.where(t == seg_end - 1, mu_c, s_c)
                    s_h = tl.where(t == seg_end - 1, mu_h, s_h)
                if HAS_RST:
                    restart = (((bits >> j) & 1) != 0) | (t == 0)
                elif ALIGNED and j > 0:
                    restart = False
                else:
                    restart = t == 0
                cp = tl.where(restart, c0, row_of(hc, rows, j))
                hp = tl.where(restart, h0, row_of(hh, rows, j))
                f, cand, cn, o, tc = _lstm_gates(cp, hp, row_of(uf, rows, j) + b_f,
                                                 row_of(uc, rows, j) + b_c,
                                                 row_of(uo, rows, j) + b_o,
                                                 a_f, a_c, a_o, p_f, p_o)
                lam_c = mu_c if GRAD_H_ONLY else row_of(gc, rows, j) + mu_c
                lam_h = row_of(gh, rows, j) + mu_h
                g_op = lam_h * tc * o * (1.0 - o)
                g_cn = lam_c + lam_h * o * (1.0 - tc * tc) + g_op * p_o
                g_fp = g_cn * (cp - cand) * f * (1.0 - f)
                g_cp = g_cn * (1.0 - f) * (1.0 - cand * cand)
                nu_c = g_cn * f + g_fp * p_f
                nu_h = g_fp * a_f + g_cp * a_c + g_op * a_o
                o_f = put_row(o_f, rows, j, g_fp)
                o_c = put_row(o_c, rows, j, g_cp)
                o_o = put_row(o_o, rows, j, g_op)
                ga_f += tl.where(keep, g_fp * hp, 0.0)
                ga_c += tl.where(keep, g_cp * hp, 0.0)
                ga_o += tl.where(keep, g_op * hp, 0.0)
                gp_f += tl.where(keep, g_fp * cp, 0.0)
                gp_o += tl.where(keep, g_op * cn, 0.0)
                if HAS_BIAS:
                    gb_f += tl.where(keep, g_fp, 0.0)
                    gb_c += tl.where(keep, g_cp, 0.0)
                    gb_o += tl.where(keep, g_op, 0.0)
                gc0 += tl.where(keep & restart, nu_c, 0.0)
                gh0 += tl.where(keep & restart, nu_h, 0.0)
                if SEGMENTED:
                    j00, j01, j10, j11 = _lstm_jacobian(cp, f, cand, o, tc, a_f, a_c, a_o,
                                                        p_f, p_o)
                    # M <- J^T M
                    n00 = j00 * m00 + j10 * m10
                    n01 = j00 * m01 + j10 * m11
                    n10 = j01 * m00 + j11 * m10
                    n11 = j01 * m01 + j11 * m11
                    m00 = tl.where(keep, tl.where(restart, 0.0, n00), m00)
                    m01 = tl.where(keep, tl.where(restart, 0.0, n01), m01)
                    m10 = tl.where(keep, tl.where(restart, 0.0, n10), m10)
                    m11 = tl.where(keep, tl.where(restart, 0.0, n11), m11)
                mu_c = tl.where(live, tl.where(restart, 0.0, nu_c), mu_c)
                mu_h = tl.where(live, tl.where(restart, 0.0, nu_h), mu_h)
            store_gate_tiles(GPRE, b, T, NH, base, rows, pre_offs,
                             rows_in(t_rows, seg_start, seg_end, mn), o_f, o_c, o_o)
            if HAS_RST:
                bits = bits_n
        # per-(row, segment) partial sums: a_f, a_c, a_o, c_f, c_o (then b_f, b_c, b_o)
        ga = GA + part * GROWS * N + offs
        if HAS_CLIP:  # through the clamps (the peepholes' rows loaded again as well)
            ga_f, ga_c, ga_o = clip_gate_gradients(ga_f, ga_c, ga_o, AW, offs, mn, N, clip)
            gp_f = clip_gradient(gp_f, tl.load(PW + offs, mask=mn, other=0.0), clip)
            gp_o = clip_gradient(gp_o, tl.load(PW + N + offs, mask=mn, other=0.0), clip)
        tl.store(ga, ga_f, mask=mn)
        tl.store(ga + N, ga_c, mask=mn)
        tl.store(ga + 2 * N, ga_o, mask=mn)
        tl.store(ga + 3 * N, gp_f, mask=mn)
        tl.store(ga + 4 * N, gp_o, mask=mn)
        if HAS_BIAS:
            tl.store(ga + 5 * N, gb_f, mask=mn)
            tl.store(ga + 6 * N, gb_c, mask=mn)
            tl.store(ga + 7 * N, gb_o, mask=mn)
        tl.store(GH0 + 2 * bnd, gc0, mask=mn)
        tl.store(GH0 + 2 * bnd + 1, gh0, mask=mn)
        if SEGMENTED:
            _store_boundary(E, A, S, bnd, mn, mu_c, mu_h, m00, m01, m10, m11, s_c, s_h)


def _check_peephole(name, peephole, n):
    if tuple(peephole.shape) != (2, n):
        raise ValueError(f"{name}: peephole must be (2, {n}), got {tuple(peephole.shape)}")


def forward(pre, a, peephole, h0=None, resets=None, rounds: int = 3, *, bias=None,
            verify_tol=None, clip=None, hidden_out=None, seg_len=None, warmup=None,
            block_n=None, num_warps=None, steps_per_block=None, stages=None, sequential=False):
    """All states (B, T, 2N) interleaved fp32 of the ParaLSTM recurrence, and a
    :class:`~._fused_common.ForwardReport`; options as :func:`.paragru.forward` (``clip``
    clamps ``a`` and ``peephole``). ``hidden_out``: a contiguous (B, T, N) tensor that also
    receives ``h`` alone, in its own dtype (the layer's output, written by the walk)."""
    batch, steps, n = check_common("paralstm", pre, a, h0, resets, 2, bias)
    _check_peephole("paralstm", peephole, n)
    check_hidden_out("paralstm", hidden_out, batch, steps, n)
    if not sequential and rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    clip_arg = clip_value(clip)
    dev = pre.device
    a, peephole, bias, h0 = (as_f32(t, dev) for t in (a, peephole, bias, h0))
    plan = make_plan("lstm_fwd", batch, steps, n, dev, seg_len=seg_len,
                     warmup=0 if sequential else warmup, block_n=block_n, num_warps=num_warps,
                     steps_per_block=steps_per_block, stages=stages, sequential=sequential)
    pre, per_head = kernel_pre(pre, n, plan.block_n)
    rst = pack_resets(resets, plan.steps_per_block)
    blocks = plan.step_blocks
    out = torch.empty(batch, steps, 2 * n, device=dev, dtype=torch.float32)
    P = plan.segments
    segmented = P > 1
    if segmented:
        E, A, S, X = boundary_buffers(batch, P, n, 2, dev)
    else:
        E = A = S = X = None  # the one-segment walk has no boundaries
    block_count = plan.channel_blocks
    verify = verify_tol is not None and segmented
    fell = torch.empty(batch, block_count, device=dev, dtype=torch.int8) if verify else None

    flags = optional_flags(bias, h0, rst, clip)

    def launch(correct: bool, segments: int = P, check: bool = False) -> None:
        launcher(_lstm_fwd_kernel, pre)[(block_count, batch, segments)](
            pre, a, peephole, bias, h0, rst, out, hidden_out, E, A, S, X,
            fell if check else None, steps, n, per_head, blocks,
            plan.seg_len if segments > 1 else steps, plan.warmup, P,
            verify_tol if check else BOUNDARY_TOL, clip_arg, HAS_HID=hidden_out is not None,
            SEGMENTED=segments > 1, CORRECT=correct, VERIFY=check, **flags,
            BN=plan.block_n, K=plan.steps_per_block, VEC=plan.channels_per_thread,
            STAGES=plan.stages, ALIGNED=plan.whole_blocks(steps), num_warps=plan.num_warps)

    run_segmented(launch, plan, rounds, E, A, S, X, block=2, reverse=False)
    if verify:
        launch(False, segments=1, check=True)
    return out, ForwardReport(P, rounds if segmented else 0, fell if verify else None)


def newton_forward(pre, a, peephole, h0=None, resets=None, num_iters: int = 3, *, bias=None,
                   clip=None, seg_len=None, warmup=None, block_n=None, num_warps=None,
                   steps_per_block=None, stages=None) -> torch.Tensor:
    """All states (B, T, 2N) interleaved fp32 by :func:`forward` (unverified);
    ``num_iters`` (>= 1) bounds the boundary-Newton rounds."""
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    return forward(pre, a, peephole, h0, resets, num_iters, bias=bias, clip=clip,
                   seg_len=seg_len, warmup=warmup, block_n=block_n, num_warps=num_warps,
                   steps_per_block=steps_per_block, stages=stages)[0]


def sequential_forward(pre, a, peephole, h0=None, resets=None, *, bias=None, clip=None,
                       block_n=None, num_warps=None, steps_per_block=None,
                       stages=None) -> torch.Tensor:
    """All states (B, T, 2N) by one fused loop over t per (row, channel block)."""
    return forward(pre, a, peephole, h0, resets, 0, bias=bias, clip=clip, block_n=block_n,
                   num_warps=num_warps, steps_per_block=steps_per_block, stages=stages,
                   sequential=True)[0]


def backward(pre, a, peephole, h0, resets, H, grad_H, *, bias=None, clip=None,
             **plan_options):
    """Gradients of ``sum(grad_H * H)`` through the recurrence, ``H`` all the states
    (B, T, 2N); ``grad_H`` (B, T, 2N) fp32, or (B, T, N) in any float dtype: the gradient
    of ``h`` alone (the layer's output), ``c``'s zero, read as it is.

    Returns ``(grad_pre (B,T,3N), grad_a (3,N), grad_peephole (2,N), grad_h0 (B,2N),
    grad_bias (3,N) or None)``; ``grad_pre`` in the dtype of ``pre``, the rest fp32;
    ``grad_h0`` is returned also when ``h0`` is None (zero state); ``grad_a`` and
    ``grad_peephole`` through ``clip``'s clamp. ``plan_options`` as
    :func:`.paragru.forward`.
    """
    grad_pre, grad_w, grad_h0 = _backward_parts(pre, a, peephole, h0, resets, H, grad_H,
                                                bias=bias, clip=clip, **plan_options)
    return grad_pre, grad_w[:3], grad_w[3:5], grad_h0, None if bias is None else grad_w[5:]


def _backward_parts(pre, a, peephole, h0, resets, H, grad_H, *, bias=None, clip=None,
                    seg_len=None, warmup=None, block_n=None, num_warps=None,
                    steps_per_block=None, stages=None):
    """:func:`backward` with the per-channel parameter gradients in one (5 or 8, N)
    tensor, rows ``a``, ``peephole``, then ``bias``."""
    batch, steps, n = check_common("paralstm.backward", pre, a, h0, resets, 2, bias)
    _check_peephole("paralstm.backward", peephole, n)
    shape = (batch, steps, 2 * n)
    grad_h_only = tuple(grad_H.shape) == (batch, steps, n)
    if tuple(H.shape) != shape or not (grad_h_only or tuple(grad_H.shape) == shape):
        raise ValueError(f"paralstm.backward: H must be {shape} and grad_H {shape} or "
                         f"{(batch, steps, n)}, got {tuple(H.shape)} and {tuple(grad_H.shape)}")
    clip_arg = clip_value(clip)
    dev = pre.device
    given = pre
    a, peephole, bias, h0, H = (as_f32(t, dev) for t in (a, peephole, bias, h0, H))
    # h's gradient is read in its own dtype (bf16 from a bf16 layer: half the bytes)
    grad_H = grad_H.contiguous() if grad_h_only else as_f32(grad_H, dev)
    plan = make_plan("lstm_bwd", batch, steps, n, dev, seg_len=seg_len, warmup=warmup,
                     block_n=block_n, num_warps=num_warps, steps_per_block=steps_per_block,
                     stages=stages)
    pre, per_head = kernel_pre(pre, n, plan.block_n)
    rst = pack_resets(resets, plan.steps_per_block)
    blocks = plan.step_blocks
    P = plan.segments
    grows = 5 if bias is None else 8
    grad_pre = torch.empty(pre.shape, device=dev, dtype=pre.dtype)  # pre's layout
    grad_w_part = torch.empty(batch, P, grows, n, device=dev, dtype=torch.float32)
    grad_h0_part = torch.empty(batch, P, 2 * n, device=dev, dtype=torch.float32)
    segmented = P > 1
    if segmented:
        E, A, S, X = boundary_buffers(batch, P, n, 2, dev)
    else:
        E = A = S = X = None  # the one-segment walk has no boundaries
    grid = (plan.channel_blocks, batch, P)

    flags = optional_flags(bias, h0, rst, clip)

    def launch(correct: bool) -> None:
        launcher(_lstm_bwd_kernel, pre)[grid](
            pre, a, peephole, bias, h0, rst, H, grad_H, grad_pre, grad_w_part, grad_h0_part,
            E, A, S, X, steps, n, per_head, blocks, plan.seg_len, plan.warmup, BOUNDARY_TOL,
            clip_arg, GROWS=grows, GRAD_H_ONLY=grad_h_only, SEGMENTED=segmented,
            CORRECT=correct, **flags,
            BN=plan.block_n, K=plan.steps_per_block, VEC=plan.channels_per_thread,
            STAGES=plan.stages, ALIGNED=plan.whole_blocks(steps), num_warps=plan.num_warps)

    run_segmented(launch, plan, 1, E, A, S, X, block=2, reverse=True)
    if grad_pre.dim() != given.dim():  # head-major pre the kernel read as gate-major
        grad_pre = head_major(grad_pre, given.shape[0], 3)
    return grad_pre, grad_w_part.sum((0, 1)), grad_h0_part.sum(1)


class _ParaLSTMSolve(torch.autograd.Function):
    """:func:`forward` with :func:`backward` as its gradient (pre, a, peephole, bias,
    initial_state): the eager path with gradients. Outputs all the states and, with
    ``hidden``, ``h`` alone (else an empty tensor)."""

    @staticmethod
    def forward(ctx, pre, a, peephole, bias, initial_state, resets, clip, rounds, verify_tol,
                sequential, hidden, report_out):
        hidden_out = hidden_buffer(pre, a.shape[1], hidden)
        states, report = forward(pre, a, peephole, initial_state, resets, rounds, bias=bias,
                                 verify_tol=verify_tol, clip=clip, sequential=sequential,
                                 hidden_out=hidden_out if hidden else None)
        report_out.append(report)
        ctx.save_for_backward(pre, a, peephole, bias, initial_state, resets, states)
        ctx.clip = clip
        ctx.set_materialize_grads(False)  # an unused output's gradient: None, not zeros
        return states, hidden_out

    @staticmethod
    def backward(ctx, grad_states, grad_hidden):
        return _gradients(ctx, grad_states, grad_hidden, through_op=False) + (None, None)


# The op as torch.compile sees it (a triton_op on a GPU), as in :mod:`.paragru`; eager
# calls use ``forward`` or the autograd Function above.
def _forward_shapes(pre, a, peephole, bias, initial_state, resets, clip, rounds, verify_tol,
                    sequential, hidden):
    batch, steps, n = check_common("paralstm", pre, a, initial_state, resets, 2, bias)
    clip_value(clip)
    plan = default_plan("lstm_fwd", pre, n, sequential)
    return (pre.new_empty(batch, steps, 2 * n, dtype=torch.float32),
            hidden_buffer(pre, n, hidden), fake_flags(pre, plan, batch, verify_tol))


@fused_op("pararnn::paralstm_forward", fake=_forward_shapes,
          kernels=(_lstm_fwd_kernel, boundary_kernel(2)))
def _forward_op(pre: torch.Tensor, a: torch.Tensor, peephole: torch.Tensor,
                bias: Optional[torch.Tensor], initial_state: Optional[torch.Tensor],
                resets: Optional[torch.Tensor], clip: Optional[float], rounds: int,
                verify_tol: Optional[float], sequential: bool,
                hidden: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden_out = hidden_buffer(pre, a.shape[1], hidden)
    states, report = forward(pre, a, peephole, initial_state, resets, rounds, bias=bias,
                             verify_tol=verify_tol, clip=clip, sequential=sequential,
                             hidden_out=hidden_out if hidden else None)
    return states, hidden_out, op_flags(report, pre)


def _backward_shapes(pre, a, peephole, bias, initial_state, resets, clip, states, grad):
    batch, _, n2 = states.shape
    # grad_pre contiguous, as the kernel writes it (empty_like would copy pre's strides)
    return (pre.new_empty(pre.shape),
            a.new_empty(5 if bias is None else 8, n2 // 2, dtype=torch.float32),
            a.new_empty(batch, n2, dtype=torch.float32))


@fused_op("pararnn::paralstm_backward", fake=_backward_shapes,
          kernels=(_lstm_bwd_kernel, boundary_kernel(2)))
def _backward_op(pre: torch.Tensor, a: torch.Tensor, peephole: torch.Tensor,
                 bias: Optional[torch.Tensor], initial_state: Optional[torch.Tensor],
                 resets: Optional[torch.Tensor], clip: Optional[float], states: torch.Tensor,
                 grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # grad: of all the states (B, T, 2N) or of h alone (B, T, N), as backward() takes it
    return _backward_parts(pre, a, peephole, initial_state, resets, states, grad,
                           bias=bias, clip=clip)


def _setup_backward(ctx, inputs, output):
    pre, a, peephole, bias, initial_state, resets, clip = inputs[:7]
    ctx.save_for_backward(pre, a, peephole, bias, initial_state, resets, output[0])
    ctx.clip = clip
    ctx.set_materialize_grads(False)


def _gradients(ctx, grad_states, grad_hidden, through_op: bool):
    """The backward of both the registered op and the eager autograd Function. The
    registered op's backward calls the backward op: torch.compile traces it with fake
    tensors (AOTAutograd's joint graph), which the op takes (its launches traced on a GPU,
    its shape function under the interpreter) and a bare Triton launch does not; the
    eager Function calls the kernels directly, without the dispatcher's host cost.

    A layer uses ``h`` alone (the hidden output) and the states only for the final state,
    whose gradient is usually None: the kernel then reads h's gradient as it is, (B, T, N),
    rather than a (B, T, 2N) fp32 one with zeros for ``c``."""
    reject_double_backward("ParaLSTM solve")
    pre, a, peephole, bias, h0, resets, states = ctx.saved_tensors
    if grad_states is None and grad_hidden is None:
        return (None,) * 10
    if grad_states is None:
        grad = grad_hidden
    elif grad_hidden is None:
        grad = grad_states
    else:  # both used: h's share added into the states' gradient
        grad = grad_states.clone()  # fp32, as the states
        grad[..., 1::2] += grad_hidden
    if through_op:
        grad_pre, grad_w, grad_h0 = _backward_op(pre, a, peephole, bias, h0, resets, ctx.clip,
                                                 states, grad)
    else:
        grad_pre, grad_w, grad_h0 = _backward_parts(pre, a, peephole, h0, resets, states, grad,
                                                    bias=bias, clip=ctx.clip)
    return (grad_pre, grad_w[:3], grad_w[3:5], None if bias is None else grad_w[5:],
            None if h0 is None else grad_h0.to(h0.dtype), None, None, None, None, None)


def _op_backward(ctx, grad_states, grad_hidden, _flags):
    return _gradients(ctx, grad_states, grad_hidden, through_op=True) + (None,)


_forward_op.register_autograd(_op_backward, setup_context=_setup_backward)


def paralstm_solve(pre, a, peephole, bias=None, initial_state=None, resets=None, *,
                   clip=None, rounds: int = 3, verify_tol=None, sequential: bool = False,
                   hidden: bool = False):
    """All states ``(B, T, 2N)`` fp32 (interleaved ``(c, h)`` per channel) of the ParaLSTM
    recurrence and a ``ForwardReport``; with ``hidden``, ``(states, h, report)``: ``h``
    alone as well, ``(B, T, N)`` in pre's dtype, written by the same walk (what the layer
    outputs: its gradient then reaches the backward kernel as it is).

    ``pre`` (B, T, 3N) fp32/bf16 (or head-major (H, B, T, 3N/H)), ``a`` (3, N) and
    ``peephole`` (2, N) (clamped in the kernels by ``clip`` if given, as in
    :func:`.paragru.paragru_solve`), ``bias`` (3, N) or None, ``initial_state``
    (B, 2N) interleaved or None (zeros), ``resets`` bool (B, T) or None. Plan options as
    :func:`.paragru.forward`. Differentiable with respect to ``pre``, ``a``, ``peephole``,
    ``bias`` and ``initial_state``; traced by ``torch.compile`` as one op
    (``torch.ops.pararnn.paralstm_forward``).
    """
    if not torch.compiler.is_compiling():
        if not needs_grad(pre, a, peephole, bias, initial_state):
            hidden_out = hidden_buffer(pre, a.shape[1], hidden) if hidden else None
            states, report = forward(pre, a, peephole, initial_state, resets, rounds, bias=bias,
                                     verify_tol=verify_tol, clip=clip, sequential=sequential,
                                     hidden_out=hidden_out)
        else:
            report_out = []
            states, hidden_out = _ParaLSTMSolve.apply(pre, a, peephole, bias, initial_state,
                                                      resets, clip, rounds, verify_tol,
                                                      sequential, hidden, report_out)
            report = report_out[0]
    else:
        states, hidden_out, flags = _forward_op(pre, a, peephole, bias, initial_state, resets,
                                                clip, rounds, verify_tol, sequential, hidden)
        report = op_report(pre, "lstm_fwd", a.shape[1], rounds, verify_tol, sequential, flags)
    return (states, hidden_out, report) if hidden else (states, report)


def paralstm_naive(pre, a, peephole, bias=None, initial_state=None, resets=None, *, clip=None):
    """The ParaLSTM recurrence by a plain PyTorch loop over t (differentiable by autograd);
    same arguments and states as :func:`paralstm_solve`, computed in the dtype of ``a``."""
    if clip is not None:
        a, peephole = a.clamp(-clip, clip), peephole.clamp(-clip, clip)
    pre = gate_major(pre, 3) if pre.dim() == 4 else pre
    pre = pre.to(a.dtype) if bias is None else pre.to(a.dtype) + bias.flatten()
    batch, steps, _ = pre.shape
    n = a.shape[1]
    s0 = (pre.new_zeros(batch, 2 * n) if initial_state is None
          else initial_state.to(a.dtype)).unflatten(-1, (n, 2))
    a_f, a_c, a_o = a.unbind(0)
    p_f, p_o = peephole.unbind(0)
    c, h = s0[..., 0], s0[..., 1]
    states = []
    for t, pre_t in enumerate(pre.unbind(1)):
        if t > 0 and resets is not None:
            c = torch.where(resets[:, t, None], s0[..., 0], c)
            h = torch.where(resets[:, t, None], s0[..., 1], h)
        u_f, u_c, u_o = pre_t.chunk(3, dim=-1)
        f = torch.sigmoid(a_f * h + u_f + p_f * c)
        candidate = torch.tanh(a_c * h + u_c)
        c = f * c + (1 - f) * candidate
        h = torch.sigmoid(a_o * h + u_o + p_o * c) * torch.tanh(c)
        states.append(torch.stack((c, h), -1).flatten(-2))
    return torch.stack(states, 1)
