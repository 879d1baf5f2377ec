"""Fused Triton kernels for the ParaLSTM cell (:class:`pararnn.cells.ParaLSTMCell`).

Same scheme as :mod:`.paragru` (see :mod:`._fused_common`), with a 2-vector state
``(c, h)`` per channel and 2x2 Jacobian blocks. ``newton_forward`` returns the solution
of the recurrence; ``num_iters`` bounds the boundary-Newton rounds.

Layouts: ``pre`` (B, T, 3N) gate-major ``[u_f | u_c | u_o]``; ``a`` (3, N) = (a_f, a_c, a_o);
``peephole`` (2, N) = (c_f, c_o); states (B, T, 2N) interleaved ``(c_0, h_0, c_1, h_1, ...)``,
``h0`` (B, 2N) in the same layout.
"""

from __future__ import annotations

import torch

from ._fused_common import (BOUNDARY_TOL, as_f32, as_u8, check_common, make_plan,
                            run_segmented, sigmoid, supports_tensor, tanh, tl, triton)

__all__ = ["supports", "newton_forward", "sequential_forward", "backward"]


def supports(pre: torch.Tensor) -> bool:
    """True if the fused kernels can run on ``pre`` (fp32/bf16, CUDA or interpreter)."""
    return supports_tensor(pre)


@triton.jit
def _moved(X, S, bnd, mn, tol):
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
def _lstm_fwd_kernel(PRE, AW, PW, H0, RST, HOUT, E, A, S, X, T, N, L, W, tol,
                     HAS_H0: tl.constexpr, HAS_RST: tl.constexpr, SEGMENTED: tl.constexpr,
                     CORRECT: tl.constexpr, BN: tl.constexpr):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs = pid_n * BN + tl.arange(0, BN)
    mn = offs < N
    a_f = tl.load(AW + offs, mask=mn, other=0.0)
    a_c = tl.load(AW + N + offs, mask=mn, other=0.0)
    a_o = tl.load(AW + 2 * N + offs, mask=mn, other=0.0)
    p_f = tl.load(PW + offs, mask=mn, other=0.0)
    p_o = tl.load(PW + N + offs, mask=mn, other=0.0)
    if HAS_H0:
        c0 = tl.load(H0 + b * 2 * N + 2 * offs, mask=mn, other=0.0)
        h0 = tl.load(H0 + b * 2 * N + 2 * offs + 1, mask=mn, other=0.0)
    else:
        c0 = tl.zeros([BN], dtype=tl.float32)
        h0 = tl.zeros([BN], dtype=tl.float32)
    seg_start = c * L
    seg_end = tl.minimum(seg_start + L, T)
    bnd = (b * tl.num_programs(2) + c) * N + offs
    if CORRECT:
        cs, hs, run = _moved(X, S, bnd, mn, tol)
        t_begin = seg_start
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
        row = b * T + t_begin
        ok = mn & (t_begin < seg_end)
        uf = tl.load(PRE + row * 3 * N + offs, mask=ok, other=0.0).to(tl.float32)
        uc = tl.load(PRE + row * 3 * N + N + offs, mask=ok, other=0.0).to(tl.float32)
        uo = tl.load(PRE + row * 3 * N + 2 * N + offs, mask=ok, other=0.0).to(tl.float32)
        for t in range(t_begin, seg_end):
            row = b * T + t
            nxt = mn & (t + 1 < seg_end)
            uf_n = tl.load(PRE + (row + 1) * 3 * N + offs, mask=nxt, other=0.0).to(tl.float32)
            uc_n = tl.load(PRE + (row + 1) * 3 * N + N + offs, mask=nxt, other=0.0).to(tl.float32)
            uo_n = tl.load(PRE + (row + 1) * 3 * N + 2 * N + offs, mask=nxt,
                           other=0.0).to(tl.float32)
            if SEGMENTED:
                s_c = tl.where(t == seg_start, cs, s_c)
                s_h = tl.where(t == seg_start, hs, s_h)
            if HAS_RST:
                restart = tl.load(RST + row) != 0
                cp = tl.where(restart, c0, cs)
                hp = tl.where(restart, h0, hs)
            else:
                cp = cs
                hp = hs
            f, cand, cn, o, tc = _lstm_gates(cp, hp, uf, uc, uo, a_f, a_c, a_o, p_f, p_o)
            cs = cn
            hs = o * tc
            keep = t >= seg_start
            if SEGMENTED:
                j00, j01, j10, j11 = _lstm_jacobian(cp, f, cand, o, tc, a_f, a_c, a_o, p_f, p_o)
                if HAS_RST:
                    j00 = tl.where(restart, 0.0, j00)
                    j01 = tl.where(restart, 0.0, j01)
                    j10 = tl.where(restart, 0.0, j10)
                    j11 = tl.where(restart, 0.0, j11)
                n00 = j00 * m00 + j01 * m10
                n01 = j00 * m01 + j01 * m11
                n10 = j10 * m00 + j11 * m10
                n11 = j10 * m01 + j11 * m11
                m00 = tl.where(keep, n00, m00)
                m01 = tl.where(keep, n01, m01)
                m10 = tl.where(keep, n10, m10)
                m11 = tl.where(keep, n11, m11)
            tl.store(HOUT + row * 2 * N + 2 * offs, cs, mask=mn & keep)
            tl.store(HOUT + row * 2 * N + 2 * offs + 1, hs, mask=mn & keep)
            uf = uf_n
            uc = uc_n
            uo = uo_n
        if SEGMENTED:
            _store_boundary(E, A, S, bnd, mn, cs, hs, m00, m01, m10, m11, s_c, s_h)


@triton.jit
def _lstm_bwd_kernel(PRE, AW, PW, H0, RST, HS, GH, GPRE, GA, GH0, E, A, S, X, T, N, L, W, tol,
                     HAS_H0: tl.constexpr, HAS_RST: tl.constexpr, SEGMENTED: tl.constexpr,
                     CORRECT: tl.constexpr, BN: tl.constexpr):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs = pid_n * BN + tl.arange(0, BN)
    mn = offs < N
    a_f = tl.load(AW + offs, mask=mn, other=0.0)
    a_c = tl.load(AW + N + offs, mask=mn, other=0.0)
    a_o = tl.load(AW + 2 * N + offs, mask=mn, other=0.0)
    p_f = tl.load(PW + offs, mask=mn, other=0.0)
    p_o = tl.load(PW + N + offs, mask=mn, other=0.0)
    if HAS_H0:
        c0 = tl.load(H0 + b * 2 * N + 2 * offs, mask=mn, other=0.0)
        h0 = tl.load(H0 + b * 2 * N + 2 * offs + 1, mask=mn, other=0.0)
    else:
        c0 = tl.zeros([BN], dtype=tl.float32)
        h0 = tl.zeros([BN], dtype=tl.float32)
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
        gc0 = tl.zeros([BN], dtype=tl.float32)
        gh0 = tl.zeros([BN], dtype=tl.float32)
        t = t_top - 1
        row = b * T + t
        uf = tl.load(PRE + row * 3 * N + offs, mask=mn, other=0.0).to(tl.float32)
        uc = tl.load(PRE + row * 3 * N + N + offs, mask=mn, other=0.0).to(tl.float32)
        uo = tl.load(PRE + row * 3 * N + 2 * N + offs, mask=mn, other=0.0).to(tl.float32)
        g_c = tl.load(GH + row * 2 * N + 2 * offs, mask=mn, other=0.0)
        g_h = tl.load(GH + row * 2 * N + 2 * offs + 1, mask=mn, other=0.0)
        cp = tl.load(HS + (row - 1) * 2 * N + 2 * offs, mask=mn & (t > 0), other=0.0)
        hp = tl.load(HS + (row - 1) * 2 * N + 2 * offs + 1, mask=mn & (t > 0), other=0.0)
        for i in range(0, t_top - seg_start):
            t = t_top - 1 - i
            row = b * T + t
            nxt = mn & (t - 1 >= seg_start)
            uf_n = tl.load(PRE + (row - 1) * 3 * N + offs, mask=nxt, other=0.0).to(tl.float32)
            uc_n = tl.load(PRE + (row - 1) * 3 * N + N + offs, mask=nxt, other=0.0).to(tl.float32)
            uo_n = tl.load(PRE + (row - 1) * 3 * N + 2 * N + offs, mask=nxt,
                           other=0.0).to(tl.float32)
            g_c_n = tl.load(GH + (row - 1) * 2 * N + 2 * offs, mask=nxt, other=0.0)
            g_h_n = tl.load(GH + (row - 1) * 2 * N + 2 * offs + 1, mask=nxt, other=0.0)
            nprev = nxt & (t - 1 > 0)
            cp_n = tl.load(HS + (row - 2) * 2 * N + 2 * offs, mask=nprev, other=0.0)
            hp_n = tl.load(HS + (row - 2) * 2 * N + 2 * offs + 1, mask=nprev, other=0.0)
            if SEGMENTED:
                s_c = tl.where(t == seg_end - 1, mu_c, s_c)
                s_h = tl.where(t == seg_end - 1, mu_h, s_h)
            if HAS_RST:
                restart = (tl.load(RST + row) != 0) | (t == 0)
            else:
                restart = t == 0
            cp = tl.where(restart, c0, cp)
            hp = tl.where(restart, h0, hp)
            f, cand, cn, o, tc = _lstm_gates(cp, hp, uf, uc, uo, a_f, a_c, a_o, p_f, p_o)
            lam_c = g_c + mu_c
            lam_h = g_h + mu_h
            g_op = lam_h * tc * o * (1.0 - o)
            g_cn = lam_c + lam_h * o * (1.0 - tc * tc) + g_op * p_o
            g_fp = g_cn * (cp - cand) * f * (1.0 - f)
            g_cp = g_cn * (1.0 - f) * (1.0 - cand * cand)
            nu_c = g_cn * f + g_fp * p_f
            nu_h = g_fp * a_f + g_cp * a_c + g_op * a_o
            keep = t < seg_end
            km = mn & keep
            tl.store(GPRE + row * 3 * N + offs, g_fp, mask=km)
            tl.store(GPRE + row * 3 * N + N + offs, g_cp, mask=km)
            tl.store(GPRE + row * 3 * N + 2 * N + offs, g_op, mask=km)
            ga_f += tl.where(keep, g_fp * hp, 0.0)
            ga_c += tl.where(keep, g_cp * hp, 0.0)
            ga_o += tl.where(keep, g_op * hp, 0.0)
            gp_f += tl.where(keep, g_fp * cp, 0.0)
            gp_o += tl.where(keep, g_op * cn, 0.0)
            gc0 += tl.where(keep & restart, nu_c, 0.0)
            gh0 += tl.where(keep & restart, nu_h, 0.0)
            if SEGMENTED:
                j00, j01, j10, j11 = _lstm_jacobian(cp, f, cand, o, tc, a_f, a_c, a_o, p_f, p_o)
                # M <- J^T M
                n00 = j00 * m00 + j10 * m10
                n01 = j00 * m01 + j10 * m11
                n10 = j01 * m00 + j11 * m10
                n11 = j01 * m01 + j11 * m11
                m00 = tl.where(keep, tl.where(restart, 0.0, n00), m00)
                m01 = tl.where(keep, tl.where(restart, 0.0, n01), m01)
                m10 = tl.where(keep, tl.where(restart, 0.0, n10), m10)
                m11 = tl.where(keep, tl.where(restart, 0.0, n11), m11)
            mu_c = tl.where(restart, 0.0, nu_c)
            mu_h = tl.where(restart, 0.0, nu_h)
            uf = uf_n
            uc = uc_n
            uo = uo_n
            g_c = g_c_n
            g_h = g_h_n
            cp = cp_n
            hp = hp_n
        tl.store(GA + part * 5 * N + offs, ga_f, mask=mn)
        tl.store(GA + part * 5 * N + N + offs, ga_c, mask=mn)
        tl.store(GA + part * 5 * N + 2 * N + offs, ga_o, mask=mn)
        tl.store(GA + part * 5 * N + 3 * N + offs, gp_f, mask=mn)
        tl.store(GA + part * 5 * N + 4 * N + offs, gp_o, mask=mn)
        tl.store(GH0 + 2 * bnd, gc0, mask=mn)
        tl.store(GH0 + 2 * bnd + 1, gh0, mask=mn)
        if SEGMENTED:
            _store_boundary(E, A, S, bnd, mn, mu_c, mu_h, m00, m01, m10, m11, s_c, s_h)


def _check_peephole(name, peephole, n):
    if tuple(peephole.shape) != (2, n):
        raise ValueError(f"{name}: peephole must be (2, {n}), got {tuple(peephole.shape)}")


def _forward(pre, a, peephole, h0, resets, rounds, *, seg_len, warmup, block_n, num_warps,
             sequential):
    batch, steps, n = check_common("paralstm", pre, a, h0, resets, 2)
    _check_peephole("paralstm", peephole, n)
    dev = pre.device
    pre = pre.contiguous()
    a = as_f32(a, dev)
    peephole = as_f32(peephole, dev)
    h0 = as_f32(h0, dev)
    rst = as_u8(resets)
    plan = make_plan(batch, steps, n, dev, seg_len=seg_len, warmup=warmup, block_n=block_n,
                     num_warps=num_warps, sequential=sequential)
    out = torch.empty(batch, steps, 2 * n, device=dev, dtype=torch.float32)
    P = plan.segments
    segmented = P > 1
    if segmented:
        E, S, X = (torch.empty(batch, P, n, 2, device=dev, dtype=torch.float32)
                   for _ in range(3))
        A = torch.empty(batch, P, n, 4, device=dev, dtype=torch.float32)
    else:
        E = A = S = X = out
    grid = (triton.cdiv(n, plan.block_n), batch, P)

    def launch(correct: bool) -> None:
        _lstm_fwd_kernel[grid](
            pre, a, peephole, h0 if h0 is not None else a, rst if rst is not None else pre,
            out, E, A, S, X, steps, n, plan.seg_len, plan.warmup, BOUNDARY_TOL,
            HAS_H0=h0 is not None, HAS_RST=rst is not None, SEGMENTED=segmented,
            CORRECT=correct, BN=plan.block_n, num_warps=plan.num_warps)

    run_segmented(launch, plan, rounds, E, A, S, X, block=2, reverse=False)
    return out


def newton_forward(pre, a, peephole, h0=None, resets=None, num_iters: int = 3, *,
                   seg_len=None, warmup=None, block_n=None, num_warps=None) -> torch.Tensor:
    """All states (B, T, 2N) interleaved fp32: the solution of the ParaLSTM recurrence.

    Segmented hybrid (see :mod:`._fused_common`); ``num_iters`` (>= 1) bounds the
    boundary-Newton rounds.
    """
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    return _forward(pre, a, peephole, h0, resets, num_iters, seg_len=seg_len, warmup=warmup,
                    block_n=block_n, num_warps=num_warps, sequential=False)


def sequential_forward(pre, a, peephole, h0=None, resets=None, *, block_n=None,
                       num_warps=None) -> torch.Tensor:
    """All states (B, T, 2N) by one fused loop over t per (row, channel block)."""
    return _forward(pre, a, peephole, h0, resets, 0, seg_len=None, warmup=0,
                    block_n=block_n, num_warps=num_warps, sequential=True)


def backward(pre, a, peephole, h0, resets, H, grad_H, *, seg_len=None, warmup=None,
             block_n=None, num_warps=None):
    """Gradients of ``sum(grad_H * H)`` through the recurrence.

    Returns ``(grad_pre (B,T,3N), grad_a (3,N), grad_peephole (2,N), grad_h0 (B,2N))``,
    all fp32; ``grad_h0`` is returned also when ``h0`` is None (zero state).
    """
    batch, steps, n = check_common("paralstm.backward", pre, a, h0, resets, 2)
    _check_peephole("paralstm.backward", peephole, n)
    shape = (batch, steps, 2 * n)
    if tuple(H.shape) != shape or tuple(grad_H.shape) != shape:
        raise ValueError(f"paralstm.backward: H and grad_H must be {shape}, "
                         f"got {tuple(H.shape)} and {tuple(grad_H.shape)}")
    dev = pre.device
    pre = pre.contiguous()
    a = as_f32(a, dev)
    peephole = as_f32(peephole, dev)
    h0 = as_f32(h0, dev)
    H = as_f32(H, dev)
    grad_H = as_f32(grad_H, dev)
    rst = as_u8(resets)
    plan = make_plan(batch, steps, n, dev, seg_len=seg_len, warmup=warmup, block_n=block_n,
                     num_warps=num_warps)
    P = plan.segments
    grad_pre = torch.empty(batch, steps, 3 * n, device=dev, dtype=torch.float32)
    grad_w_part = torch.empty(batch, P, 5, n, device=dev, dtype=torch.float32)
    grad_h0_part = torch.empty(batch, P, 2 * n, device=dev, dtype=torch.float32)
    segmented = P > 1
    if segmented:
        E, S, X = (torch.empty(batch, P, n, 2, device=dev, dtype=torch.float32)
                   for _ in range(3))
        A = torch.empty(batch, P, n, 4, device=dev, dtype=torch.float32)
    else:
        E = A = S = X = grad_h0_part
    grid = (triton.cdiv(n, plan.block_n), batch, P)

    def launch(correct: bool) -> None:
        _lstm_bwd_kernel[grid](
            pre, a, peephole, h0 if h0 is not None else a, rst if rst is not None else pre,
            H, grad_H, grad_pre, grad_w_part, grad_h0_part, E, A, S, X, steps, n,
            plan.seg_len, plan.warmup, BOUNDARY_TOL, HAS_H0=h0 is not None,
            HAS_RST=rst is not None, SEGMENTED=segmented, CORRECT=correct,
            BN=plan.block_n, num_warps=plan.num_warps)

    run_segmented(launch, plan, 1, E, A, S, X, block=2, reverse=True)
    grad_w = grad_w_part.sum((0, 1))
    return grad_pre, grad_w[:3].contiguous(), grad_w[3:].contiguous(), grad_h0_part.sum(1)
