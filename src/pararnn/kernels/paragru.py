"""Fused Triton kernels for the ParaGRU cell (:class:`pararnn.cells.ParaGRUCell`).

The op: ``paragru_solve(pre, a, bias, initial_state, resets, *, clip, rounds, verify_tol,
sequential, hidden) -> (states, report)`` (``(states, hidden, report)`` with ``hidden``),
differentiable (autograd Function below), and ``paragru_naive`` with the same arguments,
the plain PyTorch loop it must match.

``newton_forward`` is the chunked hybrid of :mod:`._fused_common`: a sequential walk in
registers inside each time segment, Newton on the segment boundary states across them.
It returns the *solution of the recurrence* (not "Newton after a fixed number of
iterations"); ``num_iters`` bounds the boundary-Newton rounds. ``sequential_forward`` is
the same kernel with one segment. ``backward`` solves the adjoint recurrence the same
way (exact after one round: it is linear) fused with the gate-level gradients.

Layouts: ``pre`` (B, T, 3N) gate-major ``[u_z | u_r | u_h]``, or head-major (H, B, T, 3N/H)
(:mod:`pararnn.layout`; read in place, its gradient written alike); ``a`` (3, N); states
(B, T, N).
"""

from __future__ import annotations

from typing import Optional

import torch

from .._grad import needs_grad
from ..layout import gate_major, head_major
from ._fused_common import (as_f32, backward_step_masks, boundaries_mismatch, boundary_buffers,
                            boundary_kernel, BOUNDARY_TOL, channel_offsets, check_common,
                            check_hidden_out, clip_gate_gradients, clip_value, default_plan,
                            fake_flags, forward_step_masks, ForwardReport, fused_op, head_block,
                            head_offsets, hidden_buffer, kernel_pre, launcher,
                            load_clipped_gate_vectors, load_gate_bias, load_gate_tiles,
                            make_plan, op_flags, op_report, optional_flags,
                            pack_resets, put_row, reject_double_backward, reset_word, row_of,
                            rows_in, run_segmented, sigmoid, step_offsets, store_gate_tiles,
                            supports_tensor, tanh, tl, triton)

__all__ = ["supports", "paragru_solve", "paragru_naive", "forward", "newton_forward",
           "sequential_forward", "backward"]


def supports(pre: torch.Tensor) -> bool:
    """True if the fused kernels can run on ``pre`` (fp32/bf16, CUDA or interpreter)."""
    return supports_tensor(pre)


@triton.jit
def _gru_gates(hp, uz, ur, uh, a_z, a_r, a_h):
    # uz, ur, uh: this step's pre-activations with the bias added
    z = sigmoid(a_z * hp + uz)
    r = sigmoid(a_r * hp + ur)
    cand = tanh(a_h * (r * hp) + uh)
    return z, r, cand


@triton.jit
def _gru_jacobian(hp, z, r, cand, a_z, a_r, a_h):
    # dh'/dh, as ParaGRUCell.step_and_jacobian
    dz = z * (1.0 - z) * a_z
    dr = r * (1.0 - r) * a_r
    dc = (1.0 - cand * cand) * a_h * (dr * hp + r)
    return dz * (cand - hp) + z * dc + (1.0 - z)


@triton.jit
def _moved(X, S, bnd, mn, tol):
    """The corrected start X and whether it moved from the assumed S anywhere in the block
    (``tol`` in fp32 as the states, whichever type the launcher gave it)."""
    tol = tl.cast(tol, tl.float32)
    x = tl.load(X + bnd, mask=mn, other=0.0)
    s_old = tl.load(S + bnd, mask=mn, other=0.0)
    moved = tl.max(tl.where(mn, tl.abs(x - s_old) - tol * (1.0 + tl.abs(x)), -1.0), 0)
    return x, moved > 0


@triton.jit
def _gru_fwd_kernel(PRE, AW, BIAS, H0, RST, HOUT, HID, E, A, S, X, FELL, T, N, NH, NB, L, W, P,
                    tol, clip, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, HAS_RST: tl.constexpr,
                    HAS_CLIP: tl.constexpr, HAS_HID: tl.constexpr,
                    SEGMENTED: tl.constexpr, CORRECT: tl.constexpr, VERIFY: tl.constexpr,
                    BN: tl.constexpr, K: tl.constexpr, VEC: tl.constexpr,
                    STAGES: tl.constexpr, ALIGNED: tl.constexpr):
    # Steps go in blocks of K: the block's inputs are (K, BN) tiles that Triton's software
    # pipeliner loads STAGES - 1 blocks ahead (asynchronous copies through shared memory),
    # keeping loads in flight across the sequential chain. ALIGNED: walks in whole blocks
    # (forward_step_masks), where only row 0 of a block can be a segment's first step.
    # HAS_HID: the states also go to HID (B, T, N) in HID's dtype (a bf16 layer's output).
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs = channel_offsets(pid_n, BN, VEC)
    PRE = head_block(PRE, pid_n, T, NH, BN)
    pre_offs = head_offsets(pid_n, NH, BN, VEC)
    mn = offs < N
    rows = tl.arange(0, K)
    a_z, a_r, a_h = load_clipped_gate_vectors(AW, offs, mn, N, clip, HAS_CLIP)
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
            # the exact one-segment walk, only where a P-segment solve left mismatched
            # boundaries (E, A, S are that solve's); FELL records which blocks reran
            run = boundaries_mismatch(E, A, S, b, P, N, offs, mn, tol, 1, BN)
            tl.store(FELL + b * tl.num_programs(0) + pid_n, run.to(tl.int8))
        else:
            run = True
        t_begin = tl.maximum(seg_start - W, 0)
        h = tl.where(t_begin == 0, h0, 0.0)
    if run:
        s = h
        acc = tl.full([BN], 1.0, tl.float32)
        base0 = (t_begin // K) * K
        if HAS_RST:
            bits = reset_word(RST, b, NB, base0 // K)
        for t0 in tl.range(base0, seg_end, K, num_stages=STAGES):
            t_rows = t0 + rows
            uz, ur, uh = load_gate_tiles(PRE, b, T, NH, t0, rows, pre_offs,
                                         rows_in(t_rows, t_begin, seg_end, mn))
            if HAS_RST:  # a scalar: loaded one block ahead by hand
                bits_n = reset_word(RST, b, NB, t0 // K + 1)
            out = tl.zeros([K, BN], dtype=tl.float32)
            for j in tl.static_range(K):
                t = t0 + j
                live, in_segment = forward_step_masks(t, t0, t_begin, seg_start, seg_end,
                                                      ALIGNED)
                if SEGMENTED and (not ALIGNED or j == 0):
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
                    acc = tl.where(in_segment, acc * jac, acc)
            tl.store(HOUT + step_offsets(b, T, N, t0, rows, offs), out,
                     mask=rows_in(t_rows, seg_start, seg_end, mn))
            if HAS_HID:
                tl.store(HID + step_offsets(b, T, N, t0, rows, offs),
                         out.to(HID.dtype.element_ty), mask=rows_in(t_rows, seg_start, seg_end, mn))
            if HAS_RST:
                bits = bits_n
        if SEGMENTED:
            tl.store(E + bnd, h, mask=mn)
            tl.store(A + bnd, acc, mask=mn)
            tl.store(S + bnd, s, mask=mn)


@triton.jit
def _gru_bwd_kernel(PRE, AW, BIAS, H0, RST, HS, GH, GPRE, GA, GH0, E, A, S, X, T, N, NH, NB, L,
                    W, tol, clip, GROWS: tl.constexpr, HAS_BIAS: tl.constexpr,
                    HAS_H0: tl.constexpr, HAS_RST: tl.constexpr, HAS_CLIP: tl.constexpr,
                    SEGMENTED: tl.constexpr, CORRECT: tl.constexpr, BN: tl.constexpr,
                    K: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
                    ALIGNED: tl.constexpr):
    # Walks down from t_top in blocks of K steps (rows top-K .. top-1), pipelined as the
    # forward; ALIGNED as there (only row K - 1 can be a segment's last step, only row 0
    # step 0).
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(2)
    offs = channel_offsets(pid_n, BN, VEC)
    PRE = head_block(PRE, pid_n, T, NH, BN)
    GPRE = head_block(GPRE, pid_n, T, NH, BN)  # pre's layout
    pre_offs = head_offsets(pid_n, NH, BN, VEC)
    mn = offs < N
    rows = tl.arange(0, K)
    a_z, a_r, a_h = load_clipped_gate_vectors(AW, offs, mn, N, clip, HAS_CLIP)
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
        # blocks of K steps aligned to multiples of K, from the one holding t_top - 1 down
        top_base = ((t_top - 1) // K) * K
        if HAS_RST:
            bits = reset_word(RST, b, NB, top_base // K)
        for blk in tl.range(0, (top_base - (seg_start // K) * K) // K + 1, num_stages=STAGES):
            base = top_base - blk * K
            t_rows = base + rows
            valid = rows_in(t_rows, seg_start, t_top, mn)
            uz, ur, uh = load_gate_tiles(PRE, b, T, NH, base, rows, pre_offs, valid)
            gt = tl.load(GH + step_offsets(b, T, N, base, rows, offs), mask=valid,
                         other=0.0).to(tl.float32)
            ht = tl.load(HS + step_offsets(b, T, N, base - 1, rows, offs),
                         mask=valid & (t_rows > 0)[:, None], other=0.0)
            if HAS_RST:  # a scalar: loaded one block ahead by hand
                bits_n = reset_word(RST, b, NB, base // K - 1)
            o_z = tl.zeros([K, BN], dtype=tl.float32)
            o_r = tl.zeros([K, BN], dtype=tl.float32)
            o_h = tl.zeros([K, BN], dtype=tl.float32)
            for jj in tl.static_range(K):
                j = K - 1 - jj
                t = base + j
                live, keep = backward_step_masks(t, base, seg_start, seg_end, t_top, SEGMENTED,
                                                 ALIGNED)
                if SEGMENTED and (not ALIGNED or j == K - 1):
                    s = tl.where(t == seg_end - 1, mu, s)
                if HAS_RST:
                    restart = (((bits >> j) & 1) != 0) | (t == 0)
                elif ALIGNED and j > 0:
                    restart = False
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
            store_gate_tiles(GPRE, b, T, NH, base, rows, pre_offs,
                             rows_in(t_rows, seg_start, seg_end, mn), o_z, o_r, o_h)
            if HAS_RST:
                bits = bits_n
        # per-(row, segment) partial sums: rows a_z, a_r, a_h (then b_z, b_r, b_h)
        ga = GA + part * GROWS * N + offs
        if HAS_CLIP:
            ga_z, ga_r, ga_h = clip_gate_gradients(ga_z, ga_r, ga_h, AW, offs, mn, N, clip)
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


def forward(pre, a, h0=None, resets=None, rounds: int = 3, *, bias=None, verify_tol=None,
            clip=None, hidden_out=None, seg_len=None, warmup=None, block_n=None,
            num_warps=None, steps_per_block=None, stages=None, sequential=False):
    """All states ``H`` (B, T, N) fp32 of the ParaGRU recurrence, and a
    :class:`~._fused_common.ForwardReport`.

    ``bias`` (3, N), if given, is added to the pre-activations (the cell's ``b``);
    ``clip``, if given, clamps ``a`` to ``[-clip, clip]`` (the cell's ``recurrent_clip``).
    Segmented hybrid (see :mod:`._fused_common`) with at most ``rounds`` boundary-Newton
    rounds; ``sequential=True`` walks one segment (exact, no rounds). With ``verify_tol``,
    a segmented solve ends with the exact one-segment walk, which every (row, channel
    block) whose segment boundaries still mismatch by more than ``verify_tol`` runs and
    every other one skips at once: the answer is exact either way and nothing syncs.
    ``seg_len``/``warmup``/``block_n``/``num_warps``/``steps_per_block``/``stages``
    override the tuned launch plan (:func:`._fused_common.make_plan`). ``hidden_out``: a
    contiguous (B, T, N) tensor that also receives the states, in its own dtype (a bf16
    layer's output, written by the walk).
    """
    batch, steps, n = check_common("paragru", pre, a, h0, resets, 1, bias)
    check_hidden_out("paragru", hidden_out, batch, steps, n)
    if not sequential and rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    clip_arg = clip_value(clip)
    dev = pre.device
    a, bias, h0 = (as_f32(t, dev) for t in (a, bias, h0))
    plan = make_plan("gru_fwd", batch, steps, n, dev, seg_len=seg_len,
                     warmup=0 if sequential else warmup, block_n=block_n, num_warps=num_warps,
                     steps_per_block=steps_per_block, stages=stages, sequential=sequential)
    pre, per_head = kernel_pre(pre, n, plan.block_n)
    rst = pack_resets(resets, plan.steps_per_block)
    blocks = plan.step_blocks
    out = torch.empty(batch, steps, n, device=dev, dtype=torch.float32)
    segmented = plan.segments > 1
    if segmented:
        E, A, S, X = boundary_buffers(batch, plan.segments, n, 1, dev)
    else:
        E = A = S = X = None  # the one-segment walk has no boundaries
    block_count = plan.channel_blocks
    verify = verify_tol is not None and segmented
    fell = torch.empty(batch, block_count, device=dev, dtype=torch.int8) if verify else None

    flags = optional_flags(bias, h0, rst, clip)

    def launch(correct: bool, segments: int = plan.segments, check: bool = False) -> None:
        launcher(_gru_fwd_kernel, pre)[(block_count, batch, segments)](
            pre, a, bias, h0, rst, out, hidden_out, E, A, S, X, fell if check else None, steps,
            n, per_head, blocks, plan.seg_len if segments > 1 else steps, plan.warmup,
            plan.segments, verify_tol if check else BOUNDARY_TOL, clip_arg,
            HAS_HID=hidden_out is not None, SEGMENTED=segments > 1,
            CORRECT=correct, VERIFY=check, **flags,
            BN=plan.block_n, K=plan.steps_per_block, VEC=plan.channels_per_thread,
            STAGES=plan.stages, ALIGNED=plan.whole_blocks(steps), num_warps=plan.num_warps)

    run_segmented(launch, plan, rounds, E, A, S, X, block=1, reverse=False)
    if verify:
        launch(False, segments=1, check=True)
    report = ForwardReport(plan.segments, rounds if segmented else 0, fell if verify else None)
    return out, report


def newton_forward(pre, a, h0=None, resets=None, num_iters: int = 3, *, bias=None, clip=None,
                   seg_len=None, warmup=None, block_n=None, num_warps=None,
                   steps_per_block=None, stages=None) -> torch.Tensor:
    """All states ``H`` (B, T, N) fp32 by :func:`forward` (unverified); ``num_iters``
    (>= 1) bounds the boundary-Newton rounds."""
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    return forward(pre, a, h0, resets, num_iters, bias=bias, clip=clip, seg_len=seg_len,
                   warmup=warmup, block_n=block_n, num_warps=num_warps,
                   steps_per_block=steps_per_block, stages=stages)[0]


def sequential_forward(pre, a, h0=None, resets=None, *, bias=None, clip=None, block_n=None,
                       num_warps=None, steps_per_block=None, stages=None) -> torch.Tensor:
    """All states ``H`` (B, T, N) fp32 by one fused loop over t per (row, channel block)."""
    return forward(pre, a, h0, resets, 0, bias=bias, clip=clip, block_n=block_n,
                   num_warps=num_warps, steps_per_block=steps_per_block, stages=stages,
                   sequential=True)[0]


def backward(pre, a, h0, resets, H, grad_H, *, bias=None, clip=None, **plan_options):
    """Gradients of ``sum(grad_H * H)`` through the recurrence; ``grad_H`` in fp32, or in
    bf16/fp16 (a bf16 layer output's gradient), read as it is.

    Returns ``(grad_pre (B,T,3N), grad_a (3,N), grad_h0 (B,N), grad_bias (3,N) or None)``;
    ``grad_pre`` in the dtype of ``pre``, the rest fp32. ``H`` must be the forward
    solution. ``grad_h0`` is returned also when ``h0`` is None (zero state); ``grad_a``
    is the gradient of the ``a`` given, through ``clip``'s clamp. ``plan_options``
    (``seg_len``, ``warmup``, ...) as :func:`forward`.
    """
    grad_pre, grad_w, grad_h0 = _backward_parts(pre, a, h0, resets, H, grad_H, bias=bias,
                                                clip=clip, **plan_options)
    return grad_pre, grad_w[:3], grad_h0, None if bias is None else grad_w[3:]


def _backward_parts(pre, a, h0, resets, H, grad_H, *, bias=None, clip=None, seg_len=None,
                    warmup=None, block_n=None, num_warps=None, steps_per_block=None,
                    stages=None):
    """:func:`backward` with the per-channel parameter gradients in one (3 or 6, N) tensor,
    rows ``a`` then ``bias``."""
    batch, steps, n = check_common("paragru.backward", pre, a, h0, resets, 1, bias)
    if tuple(H.shape) != (batch, steps, n) or tuple(grad_H.shape) != (batch, steps, n):
        raise ValueError(f"paragru.backward: H and grad_H must be ({batch}, {steps}, {n}), "
                         f"got {tuple(H.shape)} and {tuple(grad_H.shape)}")
    clip_arg = clip_value(clip)
    dev = pre.device
    given = pre
    a, bias, h0, H = (as_f32(t, dev) for t in (a, bias, h0, H))
    # a half-precision gradient is read as it is (half the bytes of an fp32 copy)
    grad_H = (grad_H.contiguous() if grad_H.dtype in (torch.bfloat16, torch.float16)
              else as_f32(grad_H, dev))
    plan = make_plan("gru_bwd", batch, steps, n, dev, seg_len=seg_len, warmup=warmup,
                     block_n=block_n, num_warps=num_warps, steps_per_block=steps_per_block,
                     stages=stages)
    pre, per_head = kernel_pre(pre, n, plan.block_n)
    rst = pack_resets(resets, plan.steps_per_block)
    blocks = plan.step_blocks
    P = plan.segments
    grows = 3 if bias is None else 6
    grad_pre = torch.empty(pre.shape, device=dev, dtype=pre.dtype)  # pre's layout
    grad_w_part = torch.empty(batch, P, grows, n, device=dev, dtype=torch.float32)
    grad_h0_part = torch.empty(batch, P, n, device=dev, dtype=torch.float32)
    segmented = P > 1
    if segmented:
        E, A, S, X = boundary_buffers(batch, P, n, 1, dev)
    else:
        E = A = S = X = None  # the one-segment walk has no boundaries
    grid = (plan.channel_blocks, batch, P)

    flags = optional_flags(bias, h0, rst, clip)

    def launch(correct: bool) -> None:
        launcher(_gru_bwd_kernel, pre)[grid](
            pre, a, bias, h0, rst, H, grad_H, grad_pre, grad_w_part, grad_h0_part,
            E, A, S, X, steps, n, per_head, blocks, plan.seg_len, plan.warmup, BOUNDARY_TOL,
            clip_arg, GROWS=grows, SEGMENTED=segmented, CORRECT=correct, **flags, BN=plan.block_n,
            K=plan.steps_per_block, VEC=plan.channels_per_thread, STAGES=plan.stages,
            ALIGNED=plan.whole_blocks(steps), num_warps=plan.num_warps)

    run_segmented(launch, plan, 1, E, A, S, X, block=1, reverse=True)
    if grad_pre.dim() != given.dim():  # head-major pre the kernel read as gate-major
        grad_pre = head_major(grad_pre, given.shape[0], 3)
    return grad_pre, grad_w_part.sum((0, 1)), grad_h0_part.sum(1)


class _ParaGRUSolve(torch.autograd.Function):
    """:func:`forward` with :func:`backward` as its gradient (pre, a, bias, initial_state):
    the eager path with gradients (cheaper on the host than the registered op below).
    Outputs the states and, with ``hidden``, their copy in pre's dtype (else an empty
    tensor)."""

    @staticmethod
    def forward(ctx, pre, a, bias, initial_state, resets, clip, rounds, verify_tol, sequential,
                hidden, report_out):
        hidden_out = hidden_buffer(pre, a.shape[1], hidden)
        states, report = forward(pre, a, initial_state, resets, rounds, bias=bias,
                                 verify_tol=verify_tol, clip=clip, sequential=sequential,
                                 hidden_out=hidden_out if hidden else None)
        report_out.append(report)
        ctx.save_for_backward(pre, a, bias, initial_state, resets, states)
        ctx.clip = clip
        ctx.set_materialize_grads(False)  # an unused output's gradient: None, not zeros
        return states, hidden_out

    @staticmethod
    def backward(ctx, grad_states, grad_hidden):
        return _gradients(ctx, grad_states, grad_hidden, through_op=False) + (None, None)


# The op as torch.compile sees it (torch.library; a triton_op on a GPU, see
# ``_fused_common.fused_op``): the layer traces without graph breaks, differentiable
# through the registered backward. Eager calls skip the dispatcher's host cost: without
# gradients they call ``forward``, with gradients the autograd Function above.
def _forward_shapes(pre, a, bias, initial_state, resets, clip, rounds, verify_tol, sequential,
                    hidden):
    batch, steps, n = check_common("paragru", pre, a, initial_state, resets, 1, bias)
    clip_value(clip)
    plan = default_plan("gru_fwd", pre, n, sequential)
    return (pre.new_empty(batch, steps, n, dtype=torch.float32),
            hidden_buffer(pre, n, hidden), fake_flags(pre, plan, batch, verify_tol))


@fused_op("pararnn::paragru_forward", fake=_forward_shapes,
          kernels=(_gru_fwd_kernel, boundary_kernel(1)))
def _forward_op(pre: torch.Tensor, a: torch.Tensor, bias: Optional[torch.Tensor],
                initial_state: Optional[torch.Tensor], resets: Optional[torch.Tensor],
                clip: Optional[float], rounds: int, verify_tol: Optional[float],
                sequential: bool, hidden: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hidden_out = hidden_buffer(pre, a.shape[1], hidden)
    states, report = forward(pre, a, initial_state, resets, rounds, bias=bias,
                             verify_tol=verify_tol, clip=clip, sequential=sequential,
                             hidden_out=hidden_out if hidden else None)
    return states, hidden_out, op_flags(report, pre)


def _backward_shapes(pre, a, bias, initial_state, resets, clip, states, grad_states):
    batch, _, n = states.shape
    # grad_pre contiguous, as the kernel writes it (empty_like would copy pre's strides)
    return (pre.new_empty(pre.shape), a.new_empty(3 if bias is None else 6, n, dtype=torch.float32),
            a.new_empty(batch, n, dtype=torch.float32))


@fused_op("pararnn::paragru_backward", fake=_backward_shapes,
          kernels=(_gru_bwd_kernel, boundary_kernel(1)))
def _backward_op(pre: torch.Tensor, a: torch.Tensor, bias: Optional[torch.Tensor],
                 initial_state: Optional[torch.Tensor], resets: Optional[torch.Tensor],
                 clip: Optional[float], states: torch.Tensor,
                 grad_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # grad_states: fp32, or the bf16/fp16 gradient of the hidden copy, as backward() takes it
    return _backward_parts(pre, a, initial_state, resets, states, grad_states, bias=bias,
                           clip=clip)


def _setup_backward(ctx, inputs, output):
    pre, a, bias, initial_state, resets, clip = inputs[:6]
    ctx.save_for_backward(pre, a, bias, initial_state, resets, output[0])
    ctx.clip = clip
    ctx.set_materialize_grads(False)


def _gradients(ctx, grad_states, grad_hidden, through_op: bool):
    """The backward of both the registered op and the eager autograd Function. The
    registered op's backward calls the backward op: torch.compile traces it with fake
    tensors (AOTAutograd's joint graph), which the op takes (its launches traced on a GPU,
    its shape function under the interpreter) and a bare Triton launch does not; the
    eager Function calls the kernels directly, without the dispatcher's host cost.

    A bf16 layer outputs the hidden copy and uses the states only for the final state,
    whose gradient is usually None: the kernel then reads the copy's gradient as it is
    (bf16), rather than an fp32 one."""
    reject_double_backward("ParaGRU solve")
    pre, a, bias, h0, resets, states = ctx.saved_tensors
    if grad_states is None and grad_hidden is None:
        return (None,) * 9
    if grad_states is None:
        grad_states = grad_hidden
    elif grad_hidden is not None:  # both used: fp32, as the states
        grad_states = grad_states + grad_hidden
    grad_states = grad_states.contiguous()
    if through_op:
        grad_pre, grad_w, grad_h0 = _backward_op(pre, a, bias, h0, resets, ctx.clip, states,
                                                 grad_states)
    else:
        grad_pre, grad_w, grad_h0 = _backward_parts(pre, a, h0, resets, states, grad_states,
                                                    bias=bias, clip=ctx.clip)
    return (grad_pre, grad_w[:3], None if bias is None else grad_w[3:],
            None if h0 is None else grad_h0.to(h0.dtype), None, None, None, None, None)


def _op_backward(ctx, grad_states, grad_hidden, _flags):
    return _gradients(ctx, grad_states, grad_hidden, through_op=True) + (None,)


_forward_op.register_autograd(_op_backward, setup_context=_setup_backward)


def paragru_solve(pre, a, bias=None, initial_state=None, resets=None, *, clip=None,
                  rounds: int = 3, verify_tol=None, sequential: bool = False,
                  hidden: bool = False):
    """All states ``(B, T, N)`` fp32 of the ParaGRU recurrence and a ``ForwardReport``; with
    ``hidden``, ``(states, hidden, report)``: the states in pre's dtype as well, written by
    the same walk (what a bf16 layer outputs: its gradient then reaches the backward
    kernel in bf16); for fp32 ``pre`` that is the states tensor itself.

    ``pre`` (B, T, 3N) fp32/bf16 gate-major pre-activations (or head-major (H, B, T,
    3N/H), :mod:`pararnn.layout`; ``grad_pre`` comes back alike), ``a`` (3, N) recurrent
    vectors, clamped to ``[-clip, clip]`` inside the kernels if ``clip`` is given (the
    cell's ``recurrent_clip``: no clamp launch, and none for its gradient), ``bias`` (3, N)
    or None, ``initial_state`` (B, N) or None (zeros), ``resets`` bool (B, T) or None.
    Plan options as :func:`forward`.
    Differentiable with respect to ``pre``, ``a``, ``bias`` and ``initial_state``; traced
    by ``torch.compile`` as one op (``torch.ops.pararnn.paragru_forward``).
    """
    copy = hidden and pre.dtype != torch.float32
    if not torch.compiler.is_compiling():
        if not needs_grad(pre, a, bias, initial_state):
            hidden_out = hidden_buffer(pre, a.shape[1], copy) if copy else None
            states, report = forward(pre, a, initial_state, resets, rounds, bias=bias,
                                     verify_tol=verify_tol, clip=clip, sequential=sequential,
                                     hidden_out=hidden_out)
        else:
            report_out = []
            states, hidden_out = _ParaGRUSolve.apply(pre, a, bias, initial_state, resets, clip,
                                                     rounds, verify_tol, sequential, copy,
                                                     report_out)
            report = report_out[0]
    else:
        states, hidden_out, flags = _forward_op(pre, a, bias, initial_state, resets, clip,
                                                rounds, verify_tol, sequential, copy)
        report = op_report(pre, "gru_fwd", a.shape[1], rounds, verify_tol, sequential, flags)
    if not hidden:
        return states, report
    return states, hidden_out if copy else states, report


def paragru_naive(pre, a, bias=None, initial_state=None, resets=None, *, clip=None):
    """The ParaGRU recurrence by a plain PyTorch loop over t (differentiable by autograd);
    same arguments and states as :func:`paragru_solve`, computed in the dtype of ``a``."""
    a = a if clip is None else a.clamp(-clip, clip)
    pre = gate_major(pre, 3) if pre.dim() == 4 else pre
    pre = pre.to(a.dtype) if bias is None else pre.to(a.dtype) + bias.flatten()
    batch, steps, _ = pre.shape
    h0 = pre.new_zeros(batch, a.shape[1]) if initial_state is None else initial_state.to(a.dtype)
    a_z, a_r, a_h = a.unbind(0)
    h, states = h0, []
    for t, pre_t in enumerate(pre.unbind(1)):
        if t > 0 and resets is not None:
            h = torch.where(resets[:, t, None], h0, h)
        u_z, u_r, u_h = pre_t.chunk(3, dim=-1)
        z = torch.sigmoid(a_z * h + u_z)
        r = torch.sigmoid(a_r * h + u_r)
        h = h + z * (torch.tanh(a_h * (r * h) + u_h) - h)
        states.append(h)
    return torch.stack(states, 1)
