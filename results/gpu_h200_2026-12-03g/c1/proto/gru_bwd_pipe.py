"""Prototype: the GRU backward's walk with Triton's software pipeliner (tl.range num_stages)
instead of the register prefetch one block ahead."""
from pararnn.kernels._fused_common import *  # noqa
from pararnn.kernels._fused_common import (channel_offsets, head_block, head_offsets, load_gate_vectors,
    load_gate_bias, load_gate_tiles, store_gate_tiles, reset_word, row_of, put_row, rows_in, step_offsets, tl, triton)
from pararnn.kernels.paragru import _gru_gates, _gru_jacobian, _moved


@triton.jit
def _gru_bwd_kernel(PRE, AW, BIAS, H0, RST, HS, GH, GPRE, GA, GH0, E, A, S, X, T, N, NH, NB, L,
                    W, tol, GROWS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                    HAS_RST: tl.constexpr, SEGMENTED: tl.constexpr, CORRECT: tl.constexpr,
                    BN: tl.constexpr, K: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs = channel_offsets(pid_n, BN, VEC)
    PRE = head_block(PRE, pid_n, T, NH, BN)
    GPRE = head_block(GPRE, pid_n, T, NH, BN)
    pre_offs = head_offsets(pid_n, NH, BN, VEC)
    mn = offs < N
    rows = tl.arange(0, K)
    a_z, a_r, a_h = load_gate_vectors(AW, offs, mn, N)
    b_z, b_r, b_h = load_gate_bias(BIAS, offs, mn, N, HAS_BIAS, BN)
    if HAS_H0:
        h0 = tl.load(H0 + b * N + offs, mask=mn, other=0.0)
    else:
        h0 = tl.zeros([BN], dtype=tl.float32)
    seg_start = c * L
    seg_end = tl.minimum(seg_start + L, T)
    part = b * tl.num_programs(2) + c
    bnd = part * N + offs
    if CORRECT:
        mu, run = _moved(X, S, bnd, mn, tol)
        t_top = seg_end
    else:
        run = True
        t_top = tl.minimum(seg_end + W, T)
        mu = tl.zeros([BN], dtype=tl.float32)
    if run:
        s = mu
        acc = tl.full([BN], 1.0, tl.float32)
        ga_z = tl.zeros([BN], dtype=tl.float32)
        ga_r = tl.zeros([BN], dtype=tl.float32)
        ga_h = tl.zeros([BN], dtype=tl.float32)
        gb_z = tl.zeros([BN], dtype=tl.float32)
        gb_r = tl.zeros([BN], dtype=tl.float32)
        gb_h = tl.zeros([BN], dtype=tl.float32)
        gh0 = tl.zeros([BN], dtype=tl.float32)
        top_base = ((t_top - 1) // K) * K
        for blk in tl.range(0, (top_base - (seg_start // K) * K) // K + 1, num_stages=STAGES):
            base = top_base - blk * K
            t_rows = base + rows
            valid = rows_in(t_rows, seg_start, t_top, mn)
            uz, ur, uh = load_gate_tiles(PRE, b, T, NH, base, rows, pre_offs, valid)
            gt = tl.load(GH + step_offsets(b, T, N, base, rows, offs), mask=valid, other=0.0)
            ht = tl.load(HS + step_offsets(b, T, N, base - 1, rows, offs),
                         mask=valid & (t_rows > 0)[:, None], other=0.0)
            if HAS_RST:
                bits = reset_word(RST, b, NB, base // K)
            o_z = tl.zeros([K, BN], dtype=tl.float32)
            o_r = tl.zeros([K, BN], dtype=tl.float32)
            o_h = tl.zeros([K, BN], dtype=tl.float32)
            for jj in tl.static_range(K):
                j = K - 1 - jj
                t = base + j
                live = (t >= seg_start) & (t < t_top)
                keep = live & (t < seg_end)
                if SEGMENTED:
                    s = tl.where(t == seg_end - 1, mu, s)
                if HAS_RST:
                    restart = (((bits >> j) & 1) != 0) | (t == 0)
                else:
                    restart = t == 0
                hp = tl.where(restart, h0, row_of(ht, rows, j))
                z, r, cand = _gru_gates(hp, row_of(uz, rows, j) + b_z, row_of(ur, rows, j) + b_r,
                                        row_of(uh, rows, j) + b_h, a_z, a_r, a_h)
                lam = row_of(gt, rows, j) + mu
                g_z = lam * (cand - hp) * z * (1.0 - z)
                g_h = lam * z * (1.0 - cand * cand)
                g_r = g_h * a_h * hp * r * (1.0 - r)
                nu = lam * (1.0 - z) + g_z * a_z + g_r * a_r + g_h * a_h * r
                o_z = put_row(o_z, rows, j, g_z)
                o_r = put_row(o_r, rows, j, g_r)
                o_h = put_row(o_h, rows, j, g_h)
                ga_z += tl.where(keep, g_z * hp, 0.0)
                ga_r += tl.where(keep, g_r * hp, 0.0)
                ga_h += tl.where(keep, g_h * r * hp, 0.0)
                if HAS_BIAS:
                    gb_z += tl.where(keep, g_z, 0.0)
                    gb_r += tl.where(keep, g_r, 0.0)
                    gb_h += tl.where(keep, g_h, 0.0)
                gh0 += tl.where(keep & restart, nu, 0.0)
                if SEGMENTED:
                    jac = _gru_jacobian(hp, z, r, cand, a_z, a_r, a_h)
                    acc = tl.where(keep, tl.where(restart, 0.0, acc * jac), acc)
                mu = tl.where(live, tl.where(restart, 0.0, nu), mu)
            o_mask = rows_in(t_rows, seg_start, seg_end, mn)
            store_gate_tiles(GPRE, b, T, NH, base, rows, pre_offs, o_mask, o_z, o_r, o_h)
        ga = GA + part * GROWS * N + offs
        tl.store(ga, ga_z, mask=mn)
        tl.store(ga + N, ga_r, mask=mn)
        tl.store(ga + 2 * N, ga_h, mask=mn)
        if HAS_BIAS:
            tl.store(ga + 3 * N, gb_z, mask=mn)
            tl.store(ga + 4 * N, gb_r, mask=mn)
            tl.store(ga + 5 * N, gb_h, mask=mn)
        tl.store(GH0 + bnd, gh0, mask=mn)
        if SEGMENTED:
            tl.store(E + bnd, mu, mask=mn)
            tl.store(A + bnd, acc, mask=mn)
            tl.store(S + bnd, s, mask=mn)
