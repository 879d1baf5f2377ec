"""Prototype: the GRU forward's walk with Triton's software pipeliner."""
from pararnn.kernels._fused_common import (channel_offsets, head_block, head_offsets, load_gate_vectors,
    load_gate_bias, load_gate_tiles, reset_word, row_of, put_row, rows_in, step_offsets,
    boundaries_mismatch, tl, triton)
from pararnn.kernels.paragru import _gru_gates, _gru_jacobian, _moved


@triton.jit
def _gru_fwd_kernel(PRE, AW, BIAS, H0, RST, HOUT, E, A, S, X, FELL, T, N, NH, NB, L, W, P, tol,
                    HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, HAS_RST: tl.constexpr,
                    SEGMENTED: tl.constexpr, CORRECT: tl.constexpr, VERIFY: tl.constexpr,
                    BN: tl.constexpr, K: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs = channel_offsets(pid_n, BN, VEC)
    PRE = head_block(PRE, pid_n, T, NH, BN)
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
    bnd = (b * tl.num_programs(2) + c) * N + offs
    if CORRECT:
        h, run = _moved(X, S, bnd, mn, tol)
        t_begin = seg_start
    else:
        if VERIFY:
            run = boundaries_mismatch(E, S, b, P, N, offs, mn, tol, 1, BN)
            tl.store(FELL + b * tl.num_programs(0) + pid_n, run.to(tl.int8))
        else:
            run = True
        t_begin = tl.maximum(seg_start - W, 0)
        h = tl.where(t_begin == 0, h0, 0.0)
    if run:
        s = h
        acc = tl.full([BN], 1.0, tl.float32)
        base0 = (t_begin // K) * K
        for t0 in tl.range(base0, seg_end, K, num_stages=STAGES):
            t_rows = t0 + rows
            m2 = rows_in(t_rows, t_begin, seg_end, mn)
            uz, ur, uh = load_gate_tiles(PRE, b, T, NH, t0, rows, pre_offs, m2)
            if HAS_RST:
                bits = reset_word(RST, b, NB, t0 // K)
            out = tl.zeros([K, BN], dtype=tl.float32)
            for j in tl.static_range(K):
                t = t0 + j
                live = (t >= t_begin) & (t < seg_end)
                if SEGMENTED:
                    s = tl.where(t == seg_start, h, s)
                if HAS_RST:
                    restart = ((bits >> j) & 1) != 0
                    hp = tl.where(restart, h0, h)
                else:
                    hp = h
                z, r, cand = _gru_gates(hp, row_of(uz, rows, j) + b_z, row_of(ur, rows, j) + b_r,
                                        row_of(uh, rows, j) + b_h, a_z, a_r, a_h)
                h = tl.where(live, hp + z * (cand - hp), h)
                out = put_row(out, rows, j, h)
                if SEGMENTED:
                    jac = _gru_jacobian(hp, z, r, cand, a_z, a_r, a_h)
                    if HAS_RST:
                        jac = tl.where(restart, 0.0, jac)
                    acc = tl.where(live & (t >= seg_start), acc * jac, acc)
            o_mask = rows_in(t_rows, seg_start, seg_end, mn)
            tl.store(HOUT + step_offsets(b, T, N, t0, rows, offs), out, mask=o_mask)
        if SEGMENTED:
            tl.store(E + bnd, h, mask=mn)
            tl.store(A + bnd, acc, mask=mn)
            tl.store(S + bnd, s, mask=mn)
