"""Shared pieces of the fused ParaGRU / ParaLSTM kernels.

Scheme (both cells, forward and backward): the recurrence is elementwise per channel,
so every (batch row, channel) is an independent scalar (GRU) or 2-vector (LSTM)
recurrence over time. The time axis is cut into ``P`` segments of ``L`` steps; one
program owns (channel block, batch row, segment) and walks its segment *sequentially*
in registers (about 50 flops per step, no scan overhead), reading each pre-activation
once and writing each state once. Segments run in parallel:

1. **Walk.** Segment ``c`` first walks, without writing, the last ``W`` steps of segment
   ``c-1`` from a zero state (the *warm-up*; the cells forget, so this lands on the true
   boundary state to fp32 precision whenever the Jacobian product over those ``W``
   steps is small), then walks its own steps from that estimate, writing states. It
   records the start it assumed ``S_c``, its end state ``E_c`` and the product of its
   step Jacobians ``A_c = dE_c/dS_c``.
2. **Boundary Newton.** One tiny kernel solves the boundary system
   ``x_{c+1} = E_c + A_c (x_c - S_c)`` (Newton's linearisation of ``x_{c+1} = Φ_c(x_c)``)
   with an affine scan over segments: ``x_c`` are the corrected starts.
3. **Correction.** Every program whose start moved (``|x_c - S_c| > tol (1 + |x_c|)``
   anywhere in its block) walks its segment again from ``x_c``; the others exit at once.

Steps 2-3 repeat at most ``rounds`` times. Segment 0 starts from the exact ``h0``, and
round ``k`` makes segment ``k`` exact, so the result is the solution of the recurrence
once the rounds suffice (for the forward, Newton's quadratic convergence on the
boundary states; for the backward, the adjoint recurrence is linear, so one round is
exact). With ``P = 1`` this is the plain fused sequential kernel.

Resets (``J = 0`` at a reset) enter the product ``A_c`` as zeros, so segments with a reset
are independent of their start; the warm-up handles them the same way.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._reuse import LastTensorCache
from ..layout import gate_major
from . import interpreter_enabled
from ._triton_utils import affine1, affine2

# |x_c - S_c| <= TOL * (1 + |x_c|): the start did not move (a few fp32 ulps).
BOUNDARY_TOL = 1e-6


def fused_op(name: str, fake, kernels):
    """Decorator: the function as the registered op ``name`` (``torch.ops.pararnn.*``), with
    ``fake`` its shape function where one is needed and ``kernels`` the Triton kernels it
    launches (see :func:`declare_kernels`).

    On a GPU a :func:`torch.library.triton_op`: ``torch.compile`` traces into it (its
    kernels launched through :func:`torch.library.wrap_triton`), so inductor plans the
    launches once and issues them from its own generated code, and fuses the aten work
    around them; an opaque op would pay the dispatcher, this module's plan and Triton's
    launcher on every call (~0.1-0.2 ms of host time each, what bound the compiled LM step).
    Under Triton's interpreter (the CPU tests) an opaque :func:`torch.library.custom_op`
    with ``fake`` as its shape function: a trace runs the function on fake tensors, which
    the interpreter cannot launch on. Eager calls go around both (see the cells' solve
    functions)."""
    def register(fn):
        if not interpreter_enabled():
            op = torch.library.triton_op(name, fn, mutates_args=())
            declare_kernels(name, kernels)
            return op
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fake)
        return op
    return register


def declare_kernels(name: str, kernels) -> None:
    """Tell torch.compile's caches which Triton kernels the triton_op ``name`` launches.

    The AOTAutograd cache (on by default, on disk) keys a compiled graph by the source of
    the kernels each triton_op in it launches, which torch finds by reading the op's
    Python source for ``wrap_triton(kernel)`` calls. It cannot see through
    :func:`launcher`, so it missed the walks' kernels, and a warm cache could serve a graph
    compiled with the kernels of an older source tree (on an H200, the LM step of the
    previous tree, run after the current one on the same machine, compiled in 6 s instead
    of 35: it was served the current tree's graphs). The registry is torch's own
    (``torch._library.triton``, torch 2.11-2.14); where it is missing there is nothing to
    tell."""
    registry = getattr(getattr(torch._library, "triton", None), "triton_ops_to_kernels", None)
    if registry is not None:
        registry[name] = list(dict.fromkeys([*registry.get(name, []), *kernels]))


def launcher(kernel, operand: torch.Tensor):
    """``kernel`` as the fused ops launch it on ``operand`` (one of its tensors): the plain
    kernel for a plain tensor outside ``torch.compile``; otherwise (a trace of the
    registered ops runs them on fake or functional tensors) through
    :func:`torch.library.wrap_triton`, so that inductor sees the launch. An eager launch
    through the wrapper dispatches a higher-order op (the registered op's own eager call
    turns that off; the eager paths here call the kernels directly): it made a B=1, T=16
    ParaGRU forward 0.31 ms against 0.13 ms on the H200."""
    if type(operand) is torch.Tensor and not torch.compiler.is_compiling():
        return kernel
    return wrap_triton(kernel)


def supports_tensor(pre: torch.Tensor) -> bool:
    """fp32/bf16 input on a CUDA device, or on the CPU under the Triton interpreter."""
    if pre.dtype not in (torch.float32, torch.bfloat16):
        return False
    if pre.is_cuda:
        return True
    return pre.device.type == "cpu" and interpreter_enabled()


def optional_flags(bias, h0, resets, clip=None) -> dict:
    """The ``HAS_*`` constexprs of the optional kernel inputs, which are passed as None
    when absent (Triton specialises a None argument as a constexpr), so no kernel takes a
    dummy pointer, and of the recurrent clip. Set at the launch site rather than by
    ``triton.heuristics``: each heuristics wrapper adds host work to every launch."""
    return {"HAS_BIAS": bias is not None, "HAS_H0": h0 is not None, "HAS_RST": resets is not None,
            "HAS_CLIP": clip is not None}


def clip_value(clip: float | None) -> float:
    """The kernels' ``clip`` argument: the cell's ``recurrent_clip`` (a positive number), or
    0.0 where there is none (``HAS_CLIP`` False, unused)."""
    if clip is None:
        return 0.0
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
        raise ValueError(f"clip must be a positive number or None, got {clip!r}")
    return float(clip)


def reject_double_backward(op: str, remedy: str = "use mode='sequential'") -> None:
    """Raise if a fused backward (of ``op``, e.g. "ParaGRU solve") is being differentiated
    (``create_graph=True``); the message names ``remedy``, the way to higher-order gradients."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"the fused {op} does not support double backward "
                           f"(create_graph=True); {remedy} for higher-order gradients")


# The gates' exponentials, reciprocals and signs as single PTX instructions on the GPU
# (ex2.approx.ftz, rcp.approx.ftz, copysign). Triton's own exp and "/" are the same
# approximations plus range handling for denormal inputs and outputs (3-4 instructions
# more each), a division by way of div.approx.ftz still costs a multiply by the
# numerator, and exp(x) costs a multiply by log2(e) that the callers here fold into
# constants they multiply by anyway (benchmarks/kernel_resources.py: with row_of and
# step_offsets below, a bf16 GRU forward channel-step takes 39 instructions where Triton's
# own functions took 64), where the gates never meet a denormal that matters (an exp that
# small is added to 1, a reciprocal that small is a gate at 0).
# Fixed when this module is imported, like the interpreter itself, which runs no PTX and
# keeps tl.exp and "/". float32 only: the float64 kernels (the references' precision)
# keep the exact functions.
FAST_MATH = tl.constexpr(not interpreter_enabled())
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _ex2_approx(x):
    """2**x, float32."""
    return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _rcp_approx(x):
    """1 / x, float32."""
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                     dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _copysign(sign_of, magnitude):
    """``magnitude`` with the sign of ``sign_of``, float32 (one bitwise instruction)."""
    return tl.inline_asm_elementwise("copysign.f32 $0, $1, $2;", "=f,f,f",
                                     [sign_of, magnitude], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _sigmoid_exact(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh_exact(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


# The fast branches are nested rather than joined by "and": the Triton versions we
# support differ in how they fold boolean operators on compile-time values.
@triton.jit
def sigmoid(x):
    if FAST_MATH:
        if x.dtype == tl.float32:
            return _rcp_approx(1.0 + _ex2_approx(x * -LOG2E))
        else:
            return _sigmoid_exact(x)
    else:
        return _sigmoid_exact(x)


@triton.jit
def tanh(x):
    if FAST_MATH:
        if x.dtype == tl.float32:
            e = _ex2_approx(tl.abs(x) * (-2.0 * LOG2E))
            return _copysign(x, (1.0 - e) * _rcp_approx(1.0 + e))
        else:
            return _tanh_exact(x)
    else:
        return _tanh_exact(x)


@triton.jit
def channel_offsets(pid_n, BN: tl.constexpr, VEC: tl.constexpr):
    """The ``BN`` channels of program ``pid_n``, declared contiguous in runs of ``VEC`` (the
    plan's channels per thread) only.

    Triton lays the (K, BN) step tiles out by the loads' vector width: left to itself it
    loads bf16 in 16-byte vectors, giving each thread 8 channels and splitting the K steps
    over threads, so :func:`row_of` needs warp shuffles and each reduced row is replicated
    over the threads that split it: every thread then walks twice (or more) the channels
    the tile meant, for the same work per warp. Runs of ``VEC`` give each thread exactly
    ``VEC`` channels with all K steps in the thread, for bf16 and fp32 alike.
    """
    return tl.max_contiguous(pid_n * BN + tl.arange(0, BN), VEC)


@triton.jit
def row_of(tile, rows, j):
    """Row ``j`` (compile-time) of a (K, BN) register tile whose K axis lies in-thread."""
    return tl.sum(tl.where(rows[:, None] == j, tile, -0.0), axis=0)


@triton.jit
def put_row(tile, rows, j, value):
    return tl.where(rows[:, None] == j, value[None, :], tile)


@triton.jit
def rows_in(t_rows, lo, hi, mn):
    """(K, BN) mask: step ``t_rows`` in ``[lo, hi)`` and channel in range."""
    return ((t_rows >= lo) & (t_rows < hi))[:, None] & mn[None, :]


@triton.jit
def forward_step_masks(t, t0, t_begin, seg_start, seg_end, ALIGNED: tl.constexpr):
    """``(live, in_segment)`` of a forward walk's step ``t`` (in the block starting at
    ``t0``): whether the walk computes it (``[t_begin, seg_end)``) and whether it lies past
    the warm-up. ``ALIGNED`` (:meth:`Plan.whole_blocks`): every block lies wholly inside the
    walk and wholly in its warm-up or its segment, so neither needs a per-step compare."""
    if ALIGNED:
        live = True
        in_segment = t0 >= seg_start
    else:
        live = (t >= t_begin) & (t < seg_end)
        in_segment = live & (t >= seg_start)
    return live, in_segment


@triton.jit
def backward_step_masks(t, base, seg_start, seg_end, t_top, SEGMENTED: tl.constexpr,
                        ALIGNED: tl.constexpr):
    """``(live, keep)`` of a backward walk's step ``t`` (block at ``base``): whether the walk
    computes it (``[seg_start, t_top)``) and whether it is the segment's, not the warm-up's
    (its gradients kept); one walk has no warm-up. ``ALIGNED`` as in
    :func:`forward_step_masks`."""
    if ALIGNED:
        live = True
        keep = base < seg_end if SEGMENTED else True
    else:
        live = (t >= seg_start) & (t < t_top)
        keep = live & (t < seg_end)
    return live, keep


@triton.jit
def reset_word(RST, b, NB, block):
    """Reset bits of the ``K``-step block ``block`` (-1 .. NB) of batch row ``b``, packed by
    :func:`pack_resets` (its zero padding makes blocks -1 and NB safe to prefetch)."""
    return tl.load(RST + b * (NB + 2) + 1 + block)


@triton.jit
def load_gate_vectors(W, offs, mn, N):
    """Rows 0, 1, 2 of a (3, N) fp32 per-channel parameter, at channels ``offs``."""
    return (tl.load(W + offs, mask=mn, other=0.0), tl.load(W + N + offs, mask=mn, other=0.0),
            tl.load(W + 2 * N + offs, mask=mn, other=0.0))


@triton.jit
def clip_vector(v, clip, HAS_CLIP: tl.constexpr):
    """A recurrent vector clamped to ``[-clip, clip]`` in the kernel, as the cell's
    ``recurrent_clip`` (``cells._init.clipped``) would outside it: one launch fewer.
    ``clip`` is cast to fp32: a direct launch passes it as fp32 but inductor's generated
    launcher as fp64, which would turn the walk's loop-carried state fp64."""
    if HAS_CLIP:
        c = tl.cast(clip, tl.float32)
        v = tl.minimum(tl.maximum(v, -c), c)
    return v


@triton.jit
def clip_gradient(g, v, clip):
    """The gradient ``g`` of :func:`clip_vector` (``v``) carried back to ``v``: zero where
    the clamp held, as ``torch.clamp``'s backward (its bounds included); ``clip`` in fp32
    as in :func:`clip_vector`, so both agree on which values sit on the bound."""
    return tl.where(tl.abs(v) <= tl.cast(clip, tl.float32), g, 0.0)


@triton.jit
def load_clipped_gate_vectors(W, offs, mn, N, clip, HAS_CLIP: tl.constexpr):
    """:func:`load_gate_vectors` of a recurrent (3, N) parameter, each row clamped by
    :func:`clip_vector`."""
    v0, v1, v2 = load_gate_vectors(W, offs, mn, N)
    return (clip_vector(v0, clip, HAS_CLIP), clip_vector(v1, clip, HAS_CLIP),
            clip_vector(v2, clip, HAS_CLIP))


@triton.jit
def clip_gate_gradients(g0, g1, g2, W, offs, mn, N, clip):
    """The gradients of the rows of :func:`load_clipped_gate_vectors` carried back through
    the clamp (:func:`clip_gradient`), with the rows as given loaded again here rather than
    held in registers through the walk."""
    v0, v1, v2 = load_gate_vectors(W, offs, mn, N)
    return clip_gradient(g0, v0, clip), clip_gradient(g1, v1, clip), clip_gradient(g2, v2, clip)


@triton.jit
def load_gate_bias(BIAS, offs, mn, N, HAS_BIAS: tl.constexpr, BN: tl.constexpr):
    """The cell's (3, N) gate bias at channels ``offs``; zeros without one."""
    if HAS_BIAS:
        b0, b1, b2 = load_gate_vectors(BIAS, offs, mn, N)
    else:
        b0 = tl.zeros([BN], dtype=tl.float32)
        b1 = tl.zeros([BN], dtype=tl.float32)
        b2 = tl.zeros([BN], dtype=tl.float32)
    return b0, b1, b2


@triton.jit
def step_offsets(b, T, width, t_first, rows, cols):
    """Offsets of columns ``cols`` of steps ``t_first + rows`` in row ``b`` of a (B, T,
    width) tensor: the step block's start as one scalar plus a tile that does not change
    from block to block, so a walk computes one address per block, not one per row."""
    return (b * T + t_first) * width + (rows[:, None] * width + cols[None, :])


@triton.jit
def head_block(PRE, pid_n, T, NH, BN: tl.constexpr):
    """Where program ``pid_n``'s head starts in ``PRE`` (H, B, T, 3 NH), the
    pre-activations of NH channels per head held head by head (gate-major (B, T, 3N) is
    H = 1, NH = N; see :func:`kernel_pre`); its channels within the head are
    :func:`head_offsets`. A block lies in one head (``BN`` divides NH); the launch grid's
    second dimension is the batch B."""
    head = (pid_n * BN) // NH
    return PRE + head.to(tl.int64) * tl.num_programs(1) * T * 3 * NH


@triton.jit
def head_offsets(pid_n, NH, BN: tl.constexpr, VEC: tl.constexpr):
    """Program ``pid_n``'s ``BN`` channels within its head (see :func:`head_block`).

    Computed apart from the head's pointer on purpose: torch's analysis of what a kernel
    writes (how ``torch.compile`` decides which inputs to copy before a launch) follows a
    value back through every argument of the call that made it, so offsets returned
    together with the pre-activations' pointer would make each store at those offsets a
    write to the pre-activations, and the compiled step would copy them before every
    backward launch."""
    first = pid_n * BN
    return tl.max_contiguous(first - (first // NH) * NH + tl.arange(0, BN), VEC)


@triton.jit
def load_gate_tiles(PRE, b, T, NH, t_first, rows, offs, mask):
    """The three gate pre-activations of steps ``t_first + rows`` as fp32 (K, BN) register
    tiles (``PRE`` from :func:`head_block`, ``offs`` from :func:`head_offsets`: rows of
    3 NH, gates NH apart); masked entries are 0."""
    ptr = PRE + step_offsets(b, T, 3 * NH, t_first, rows, offs)
    return (tl.load(ptr, mask=mask, other=0.0).to(tl.float32),
            tl.load(ptr + NH, mask=mask, other=0.0).to(tl.float32),
            tl.load(ptr + 2 * NH, mask=mask, other=0.0).to(tl.float32))


@triton.jit
def store_gate_tiles(GPRE, b, T, NH, t_first, rows, offs, mask, g0, g1, g2):
    """Gate-level gradients of steps ``t_first + rows`` in the layout of
    :func:`load_gate_tiles`, in GPRE's dtype."""
    ptr = GPRE + step_offsets(b, T, 3 * NH, t_first, rows, offs)
    tl.store(ptr, g0.to(GPRE.dtype.element_ty), mask=mask)
    tl.store(ptr + NH, g1.to(GPRE.dtype.element_ty), mask=mask)
    tl.store(ptr + 2 * NH, g2.to(GPRE.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class Plan:
    """Launch plan: ``segments`` of ``seg_len`` steps, ``warmup`` steps, channel block,
    ``steps_per_block`` steps loaded together, ``stages`` the depth of the walk's load
    pipeline (blocks are loaded ``stages - 1`` ahead; 1: when used); ``channel_blocks``
    and ``step_blocks`` count the blocks of ``block_n`` channels and of
    ``steps_per_block`` steps."""

    segments: int
    seg_len: int
    warmup: int
    block_n: int
    num_warps: int
    steps_per_block: int
    stages: int
    channel_blocks: int
    step_blocks: int

    @property
    def channels_per_thread(self) -> int:
        return channels_per_thread(self.block_n, self.num_warps)

    def whole_blocks(self, steps: int) -> bool:
        """True if every walk of this plan over ``steps`` steps starts and ends on a block
        boundary (``steps``, the segment length and the warm-up multiples of
        ``steps_per_block``): the kernels' ``ALIGNED``, under which no row of a block
        needs its own in-walk mask."""
        k = self.steps_per_block
        return steps % k == 0 and self.seg_len % k == 0 and self.warmup % k == 0


def channels_per_thread(block_n: int, num_warps: int) -> int:
    """Channels each thread of a tile walks (its ``block_n`` over its 32 x ``num_warps``
    threads; at least 1): the ``VEC`` of :func:`channel_offsets`."""
    return max(1, block_n // (32 * num_warps))


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` in plain Python (``triton.cdiv`` is a jit function: slow to call
    from the host)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# Tuned on an H100 (benchmarks/gpu_profile.py --sweep, GPU time by CUDA-graph replay):
# enough independent (row, channel, segment) chains to keep ~2k lanes per SM busy,
# segments no shorter than MIN_SEG_LEN steps, a warm-up of WARMUP steps. At 8x4096x1024
# (GRU forward, 128 channels x 4 steps per program) segments of 128/256/512 steps with
# warm-ups of 32 gave 0.244/0.222/- ms and with 64 -/0.240/0.267 ms; the backward
# 0.462/0.429/0.434 ms. One segment (the fused sequential loop) when rows x channels
# alone give <= 2 segments' worth (64x2048 channels: 1.48 ms sequential vs 1.55 ms with
# 3 segments) or T <= 2 * MIN_SEG_LEN.
CHAINS_PER_SM = 2048
MIN_SEG_LEN = 256
WARMUP = 32


# Per kernel, its CUDA tile (channels per program, warps, steps per block, load-pipeline
# stages) by how many independent chains (rows x channels x segments) the plan gives each
# SM: ((up to this many chains per SM, tile), ..., (None: any more, tile)). Fewer channels
# per thread make more warps of the same chains, which pays where chains are few; more
# give each thread independent chains to interleave. A walk reads each block once, so what
# bounds it is the loads in flight: with the loads of the next block only (the first
# tunings' register prefetch) an SM held ~14 KB in flight at the LM's shape, about half
# what the H200's memory needs to stream, and the kernels ran at 2-3x their memory floor;
# Triton's pipeliner (``tl.range(num_stages=...)``) keeps stages - 1 blocks in flight in
# shared memory instead. Measured on an H200 (gpu_profile.py --sweep, CUDA-graph replay;
# results/gpu_h200_2026-12-03g, register prefetch -> this table):
# - 248 chains per SM (32x512x1024 bf16, the LM's T=512, one walk): GRU forward 64/1/8
#   0.095 -> 0.058 ms (4 stages), backward 0.165 -> 0.099 (64/1/4, 4 stages; 64/1/8 with
#   3 stages 0.131), LSTM forward 0.137 -> 0.093 (64/1/4/4), backward 0.275 -> 0.256
#   (64/1/4/3; 64/1/8 spills: 2.07 ms);
# - 496 (4x4096x1024 bf16, 16 segments): GRU forward 0.107 -> 0.069, backward 0.137 ->
#   0.113; the LSTM backward loses here (0.228 with 64/2/1 and the register prefetch,
#   0.256 at best pipelined): its walk issues ~130 instructions per channel-step, so
#   loads in flight matter less than for the GRU's;
# - 993 (8x4096x1024 fp32): GRU backward 128/1/4 0.314 -> 0.313, forward 0.160 -> 0.168.
# After the whole-block walks and the LSTM's (c, h) pair loads (results/gpu_h200_2026-12-04
# c3): the LSTM backward at 64/1/4/3 takes 0.133 (248) and 0.149 ms (496), 64/1/8/3 is 6%
# faster at 248 one-walk chains but 1.5x slower at 248 segmented fp32 ones (16x1024x512),
# so it stays; the LSTM forward at 64/1/8/4 is 2-6% faster than 64/1/4/4 at all three
# measured shapes (0.074 vs 0.077, 0.106 vs 0.108 bf16; 0.072 vs 0.077 fp32 16x1024x512),
# so it takes the measured range (up to 512 chains per SM). The other thresholds sit
# between two measured points.
CUDA_TILES = {"gru_fwd": ((384, (64, 1, 8, 4)), (None, (64, 1, 4, 4))),
              "gru_bwd": ((768, (64, 1, 4, 4)), (None, (128, 1, 4, 3))),
              "lstm_fwd": ((512, (64, 1, 8, 4)), (None, (64, 1, 4, 4))),
              "lstm_bwd": ((768, (64, 1, 4, 3)), (None, (64, 2, 1, 3)))}


def cuda_tile(kernel: str, chains_per_sm: float) -> tuple[int, int, int, int]:
    """The :data:`CUDA_TILES` tile of ``kernel`` for a plan of ``chains_per_sm``."""
    for limit, tile in CUDA_TILES[kernel]:
        if limit is None or chains_per_sm <= limit:
            return tile
    raise ValueError(f"CUDA_TILES[{kernel!r}] has no catch-all (None) entry")


def multiprocessors(device: torch.device) -> int:
    """SMs of a CUDA ``device``."""
    # not cached here: eager calls get here only when a plan cache (this module's, the
    # causal conv's) misses, and torch.compile folds get_device_properties to a constant
    # (an lru_cache it would warn about and bypass)
    return torch.cuda.get_device_properties(device).multi_processor_count


def host_cache(fn):
    """``fn`` (a pure function of hashable arguments: shapes, a device, constants) with an
    LRU cache for eager calls, which small, host-bound calls repeat with the same arguments;
    called through when traced (torch.compile warns about a cache it would bypass, and a
    trace with dynamic shapes passes ``SymInt``s, which do not hash)."""
    cached = functools.lru_cache(maxsize=1024)(fn)

    @functools.wraps(fn)
    def call(*args):
        if torch.compiler.is_compiling() or any(isinstance(a, torch.SymInt) for a in args):
            return fn(*args)
        return cached(*args)

    call.cache_clear = cached.cache_clear
    return call


def make_plan(kernel: str, batch: int, steps: int, channels: int, device: torch.device, *,
              seg_len: int | None, warmup: int | None, block_n: int | None,
              num_warps: int | None, steps_per_block: int | None = None,
              stages: int | None = None, sequential: bool = False) -> Plan:
    """The launch plan for this call, cached: a small call (decode-like prompt chunks) is
    bound by host work, and the plan depends only on these arguments and the tuning
    constants above (part of the key, so that tests can change them)."""
    return _cached_plan(kernel, batch, steps, channels, device, seg_len, warmup, block_n,
                        num_warps, steps_per_block, stages, sequential, CHAINS_PER_SM,
                        MIN_SEG_LEN, WARMUP)


def _plan(kernel, batch, steps, channels, device, seg_len, warmup, block_n, num_warps,
          steps_per_block, stages, sequential, chains_per_sm, min_seg_len,
          default_warmup) -> Plan:
    sms = multiprocessors(device) if device.type == "cuda" else 1
    if sequential:
        seg_len = steps
    elif seg_len is None:
        want = sms * chains_per_sm // max(1, batch * channels)
        if want <= 2 or steps <= 2 * min_seg_len:
            seg_len = steps  # measured: warm-up and boundary rounds don't pay off here
        else:
            seg_len = max(min_seg_len, math.ceil(steps / want))
    if seg_len < 1:
        raise ValueError(f"seg_len must be >= 1, got {seg_len}")
    seg_len = min(seg_len, steps)
    segments = cdiv(steps, seg_len)
    tile_bn, tile_warps, tile_k, tile_stages = cuda_tile(kernel,
                                                         batch * channels * segments / sms)
    if block_n is None:
        block_n = 16 if device.type == "cpu" else tile_bn
    if num_warps is None:
        num_warps = 1 if device.type == "cpu" else (tile_warps if block_n == tile_bn
                                                      else max(1, block_n // 128))
    if block_n < 1 or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two, got {block_n}")
    if warmup is None:
        warmup = default_warmup
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if steps_per_block is None:
        steps_per_block = 4 if device.type == "cpu" else tile_k
    if steps_per_block < 1 or steps_per_block > 16 or steps_per_block & (steps_per_block - 1):
        raise ValueError(f"steps_per_block must be a power of two <= 16, got {steps_per_block}")
    if stages is None:
        stages = 1 if device.type == "cpu" else tile_stages  # the interpreter ignores it
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    return Plan(segments, seg_len, warmup, block_n, num_warps, steps_per_block, stages,
                cdiv(channels, block_n), cdiv(steps, steps_per_block))


_cached_plan = host_cache(_plan)


# ----------------------------------------------------------------------------------------
# Boundary Newton: x_{next} = E_c + A_c (x_c - S_c) over the segments, by an affine scan.
# Row i of the tile is the i-th map in solve order (segment i, or P-1-i when REVERSE).


@triton.jit
def _solve_order(P, mn, REVERSE: tl.constexpr, BP: tl.constexpr):
    """Per tile row i: the segment whose map it holds, the segment that map's output
    starts, the segment solved first, and which (row, channel) entries are real maps."""
    i = tl.arange(0, BP)
    if REVERSE:
        seg = P - 1 - i
        nxt = seg - 1
        first = P - 1
    else:
        seg = i
        nxt = seg + 1
        first = 0
    return seg, nxt, first, (i < P - 1)[:, None] & mn[None, :]


@triton.jit
def _boundary_diag_kernel(E, A, S, X, P, N,
                          REVERSE: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid_n * BN + tl.arange(0, BN)
    mn = offs < N
    seg, nxt, first, valid = _solve_order(P, mn, REVERSE, BP)
    base = b * P * N
    ptr = base + seg[:, None] * N + offs[None, :]
    m = tl.load(A + ptr, mask=valid, other=1.0)
    e = tl.load(E + ptr, mask=valid, other=0.0)
    s = tl.load(S + ptr, mask=valid, other=0.0)
    m, v = tl.associative_scan((m, e - m * s), 0, affine1)
    x0 = tl.load(S + base + first * N + offs, mask=mn, other=0.0)
    tl.store(X + base + first * N + offs, x0, mask=mn)
    tl.store(X + base + nxt[:, None] * N + offs[None, :], m * x0[None, :] + v, mask=valid)


@triton.jit
def _boundary_2x2_kernel(E, A, S, X, P, N,
                         REVERSE: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    # E, S, X: (B, P, N, 2); A: (B, P, N, 4) row-major 2x2 blocks
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid_n * BN + tl.arange(0, BN)
    mn = offs < N
    seg, nxt, first, valid = _solve_order(P, mn, REVERSE, BP)
    cell = b * P * N + seg[:, None] * N + offs[None, :]
    m00 = tl.load(A + 4 * cell, mask=valid, other=1.0)
    m01 = tl.load(A + 4 * cell + 1, mask=valid, other=0.0)
    m10 = tl.load(A + 4 * cell + 2, mask=valid, other=0.0)
    m11 = tl.load(A + 4 * cell + 3, mask=valid, other=1.0)
    e0 = tl.load(E + 2 * cell, mask=valid, other=0.0)
    e1 = tl.load(E + 2 * cell + 1, mask=valid, other=0.0)
    s0 = tl.load(S + 2 * cell, mask=valid, other=0.0)
    s1 = tl.load(S + 2 * cell + 1, mask=valid, other=0.0)
    v0 = e0 - m00 * s0 - m01 * s1
    v1 = e1 - m10 * s0 - m11 * s1
    m00, m01, m10, m11, v0, v1 = tl.associative_scan(
        (m00, m01, m10, m11, v0, v1), 0, affine2)
    c0 = b * P * N + first * N + offs
    x0 = tl.load(S + 2 * c0, mask=mn, other=0.0)
    x1 = tl.load(S + 2 * c0 + 1, mask=mn, other=0.0)
    tl.store(X + 2 * c0, x0, mask=mn)
    tl.store(X + 2 * c0 + 1, x1, mask=mn)
    out = b * P * N + nxt[:, None] * N + offs[None, :]
    tl.store(X + 2 * out, m00 * x0[None, :] + m01 * x1[None, :] + v0, mask=valid)
    tl.store(X + 2 * out + 1, m10 * x0[None, :] + m11 * x1[None, :] + v1, mask=valid)


def boundary_kernel(block: int):
    """The boundary-Newton kernel for Jacobian blocks of ``block`` x ``block`` (1 or 2)."""
    return _boundary_diag_kernel if block == 1 else _boundary_2x2_kernel


def solve_boundaries(E, A, S, X, *, block: int, reverse: bool) -> None:
    """Corrected segment starts ``X`` (same layout as ``S``) from one walk's E, A, S."""
    batch, segments, channels = S.shape[:3]
    bp = next_power_of_2(segments)
    bn = max(1, min(next_power_of_2(channels), 4096 // bp if block == 1 else 2048 // bp))
    grid = (cdiv(channels, bn), batch)
    launcher(boundary_kernel(block), E)[grid](E, A, S, X, segments, channels, REVERSE=reverse,
                                              BP=bp, BN=bn)


def boundary_buffers(batch: int, segments: int, channels: int, width: int, device):
    """E, A, S, X of the boundary Newton: ``width``-vectors (GRU 1: ``(B, P, N)``; LSTM 2:
    ``(B, P, N, 2)``) and row-major ``width x width`` blocks. Four allocations, not views
    of one: a compiled graph tracks the kernels' writes per tensor, and writes into views
    of a shared base would make it copy the base around every launch."""
    shape = (batch, segments, channels) + (() if width == 1 else (width,))
    blocks = (batch, segments, channels) + (() if width == 1 else (width * width,))
    return tuple(torch.empty(s, device=device, dtype=torch.float32)
                 for s in (shape, blocks, shape, shape))


def run_segmented(launch, plan: Plan, rounds: int, E, A, S, X, *, block: int, reverse: bool):
    """The walk, then ``rounds`` x (boundary Newton, correction walk); see module doc."""
    launch(False)
    if plan.segments == 1:
        return
    for _ in range(rounds):
        solve_boundaries(E, A, S, X, block=block, reverse=reverse)
        launch(True)


@dataclass
class ForwardReport:
    """What a fused forward ran. ``fell_back`` is a device tensor (one int8 flag per
    (batch row, channel block)) or None when no verification ran; reading it syncs."""

    segments: int
    boundary_rounds: int
    fell_back: torch.Tensor | None


def default_plan(kernel: str, pre: torch.Tensor, channels: int, sequential: bool) -> Plan:
    """The plan a forward with the tuned defaults runs (what the registered op launches)."""
    batch, steps = pre.shape[-3:-1]
    return make_plan(kernel, batch, steps, channels, pre.device, seg_len=None,
                     warmup=0 if sequential else None, block_n=None, num_warps=None,
                     sequential=sequential)


def op_flags(report: ForwardReport, pre: torch.Tensor) -> torch.Tensor:
    """The verification flags as a registered op returns them: empty when none ran (an op
    returns tensors only)."""
    return pre.new_empty(0, dtype=torch.int8) if report.fell_back is None else report.fell_back


def fake_flags(pre: torch.Tensor, plan: Plan, batch: int, verify_tol) -> torch.Tensor:
    """The shape :func:`op_flags` gives, for the op's fake (shape-only) implementation."""
    if verify_tol is None or plan.segments == 1:
        return pre.new_empty(0, dtype=torch.int8)
    return pre.new_empty(batch, plan.channel_blocks, dtype=torch.int8)


def op_report(pre, kernel: str, channels: int, rounds: int, verify_tol, sequential: bool,
              flags: torch.Tensor) -> ForwardReport:
    """The :class:`ForwardReport` of a call of the registered forward op."""
    plan = default_plan(kernel, pre, channels, sequential)
    verified = verify_tol is not None and plan.segments > 1
    return ForwardReport(plan.segments, rounds if plan.segments > 1 else 0,
                         flags if verified else None)


@triton.jit
def boundaries_mismatch(E, A, S, b, P, N, offs, mn, tol, WIDTH: tl.constexpr, BN: tl.constexpr):
    """Whether, in this batch row and channel block, the error that the segment boundaries
    leave at any segment start exceeds ``tol (1 + |E_{c-1}|)`` or is not finite.
    ``E``/``S``: (B, P, N, WIDTH); ``A``: (B, P, N, WIDTH²), row-major blocks.

    Inside a segment the walk is the exact recurrence, so the only errors are the
    boundaries' mismatches ``d_c = E_{c-1} - S_c`` (the start a segment assumed against
    where the one before it ended), and each travels on through the later segments:
    segment ``c`` starts ``e_c = d_c + A_{c-1} e_{c-1}`` from the sequential solution
    (``e_0 = 0``; ``A_{c-1}`` the product of segment ``c-1``'s step Jacobians, 0 across a
    reset). Checking each mismatch alone would let errors just below ``tol`` add up over
    the segments where memories are long (``A`` near 1). Segments go 8 at a time: the
    loads of a group are in flight together (hundreds of segments at long, narrow
    shapes), an associative scan carries the error through the group, and its last row
    through to the next group.
    """
    tol = tl.cast(tol, tl.float32)  # inductor's launcher passes float arguments as fp64
    rows = tl.arange(0, 8)
    bad = tl.zeros([8, BN], dtype=tl.int32)
    carry0 = tl.zeros([BN], dtype=tl.float32)
    carry1 = tl.zeros([BN], dtype=tl.float32)
    for c0 in range(1, P, 8):
        seg = c0 + tl.arange(0, 8)
        m = (seg < P)[:, None] & mn[None, :]
        prev = (b * P + seg[:, None] - 1) * N + offs[None, :]  # segment c - 1
        here = (b * P + seg[:, None]) * N + offs[None, :]  # segment c
        # rows past P: A = identity, d = 0 carry the last error through unchanged (and
        # are not checked: their E reads as 0)
        e0 = tl.load(E + prev * WIDTH, mask=m, other=0.0)
        d0 = e0 - tl.load(S + here * WIDTH, mask=m, other=0.0)
        if WIDTH == 1:
            a = tl.load(A + prev, mask=m, other=1.0)
            a, v = tl.associative_scan((a, d0), 0, affine1)
            err0 = a * carry0[None, :] + v
            bad = tl.where(~m | (tl.abs(err0) <= tol * (1.0 + tl.abs(e0))), bad, 1)
            carry0 = row_of(err0, rows, 7)
        else:
            e1 = tl.load(E + prev * 2 + 1, mask=m, other=0.0)
            d1 = e1 - tl.load(S + here * 2 + 1, mask=m, other=0.0)
            a00 = tl.load(A + prev * 4, mask=m, other=1.0)
            a01 = tl.load(A + prev * 4 + 1, mask=m, other=0.0)
            a10 = tl.load(A + prev * 4 + 2, mask=m, other=0.0)
            a11 = tl.load(A + prev * 4 + 3, mask=m, other=1.0)
            a00, a01, a10, a11, v0, v1 = tl.associative_scan(
                (a00, a01, a10, a11, d0, d1), 0, affine2)
            err0 = a00 * carry0[None, :] + a01 * carry1[None, :] + v0
            err1 = a10 * carry0[None, :] + a11 * carry1[None, :] + v1
            bad = tl.where(~m | (tl.abs(err0) <= tol * (1.0 + tl.abs(e0))), bad, 1)
            bad = tl.where(~m | (tl.abs(err1) <= tol * (1.0 + tl.abs(e1))), bad, 1)
            carry0, carry1 = row_of(err0, rows, 7), row_of(err1, rows, 7)
    return tl.max(tl.max(bad, 1), 0) > 0


def check_common(name: str, pre: torch.Tensor, a: torch.Tensor, h0, resets, state_width: int,
                 bias: torch.Tensor | None = None):
    """Validate shapes/dtypes before any work; returns (B, T, N). ``pre`` is (B, T, 3N)
    gate-major or (H, B, T, 3N/H) head-major (see :func:`kernel_pre`)."""
    if pre.dim() not in (3, 4) or pre.shape[-1] % 3:
        raise ValueError(f"{name}: pre must be (B, T, 3N) or head-major (H, B, T, 3N/H), "
                         f"got shape {tuple(pre.shape)}")
    if pre.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"{name}: pre must be float32 or bfloat16, got {pre.dtype} "
                        "(float64 goes to the PyTorch path)")
    batch, steps, n3 = pre.shape[-3:]
    n = n3 // 3 * (pre.shape[0] if pre.dim() == 4 else 1)
    if steps < 1 or n < 1 or batch < 1:
        raise ValueError(f"{name}: empty input, shape {tuple(pre.shape)}")
    if tuple(a.shape) != (3, n):
        raise ValueError(f"{name}: a must be (3, {n}), got {tuple(a.shape)}")
    if bias is not None and tuple(bias.shape) != (3, n):
        raise ValueError(f"{name}: bias must be (3, {n}), got {tuple(bias.shape)}")
    if h0 is not None and tuple(h0.shape) != (batch, state_width * n):
        raise ValueError(f"{name}: h0 must be ({batch}, {state_width * n}), got {tuple(h0.shape)}")
    if resets is not None:
        if tuple(resets.shape) != (batch, steps) or resets.dtype != torch.bool:
            raise ValueError(f"{name}: resets must be bool ({batch}, {steps}), "
                             f"got {resets.dtype} {tuple(resets.shape)}")
    if batch > 65535:
        raise ValueError(f"{name}: batch {batch} exceeds the launch grid limit 65535")
    return batch, steps, n


def kernel_pre(pre: torch.Tensor, channels: int, block_n: int) -> tuple[torch.Tensor, int]:
    """``pre`` as the kernels read it (contiguous) and its channels per head ``NH``.

    Head-major (H, B, T, 3 NH) is what a multi-head projection's batched GEMM writes
    (one (B T, 3 NH) product per head): the kernels read it in place when their channel
    blocks of ``block_n`` tile each head, which :func:`head_block` needs; otherwise it is
    copied to gate-major. Gate-major (B, T, 3N) is the case H = 1, NH = N."""
    if pre.dim() == 3:
        return pre.contiguous(), channels
    if (pre.shape[-1] // 3) % block_n == 0:
        return pre.contiguous(), pre.shape[-1] // 3
    return gate_major(pre, 3).contiguous(), channels


def hidden_buffer(pre: torch.Tensor, channels: int, hidden: bool) -> torch.Tensor:
    """The ``(B, T, channels)`` tensor in pre's dtype that a forward walk writes a layer's
    output into (``hidden``), or an empty one: a registered op returns tensors only."""
    if not hidden:
        return pre.new_empty(0)
    batch, steps = pre.shape[-3:-1]
    return pre.new_empty(batch, steps, channels)


def check_hidden_out(name: str, hidden_out: torch.Tensor | None, batch: int, steps: int,
                     channels: int) -> None:
    """Raise unless ``hidden_out`` is None or a contiguous ``(batch, steps, channels)``
    tensor (what a forward walk writes a layer's output into)."""
    if hidden_out is not None and (tuple(hidden_out.shape) != (batch, steps, channels)
                                   or not hidden_out.is_contiguous()):
        raise ValueError(f"{name}: hidden_out must be a contiguous ({batch}, {steps}, {channels}) "
                         f"tensor, got {tuple(hidden_out.shape)}")


# The language-model block's kernels (causal_conv.py, gated_norm.py): the dtypes they take,
# their math dtype, and the layout they read.
BLOCK_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_block_operands(*named: tuple[str, torch.Tensor]) -> None:
    """Raise unless every ``(name, tensor)`` is of a :data:`BLOCK_DTYPES` dtype and on the
    first one's device."""
    first, anchor = named[0]
    for name, t in named:
        if t.dtype not in BLOCK_DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.device != anchor.device:
            raise ValueError(f"{name} is on {t.device}, {first} on {anchor.device}")


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The block kernels' math dtype for input ``dtype`` (float64 stays float64): that of
    their partial gradient rows."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def acc_dtype(dtype: torch.dtype):
    """:func:`math_dtype` as a Triton dtype (the kernels' ``ACC``)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def unit_channel_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``(B, T, C)`` as the block kernels read it: any row and time strides, unit
    stride over channels."""
    return t if t.stride(2) == 1 else t.contiguous()


def as_f32(t: torch.Tensor | None, device) -> torch.Tensor | None:
    """``t`` as a contiguous fp32 tensor on ``device`` for a kernel to read: ``t`` itself
    when it already is one (the usual case; no aten op), else a converted copy."""
    if t is None or (t.dtype == torch.float32 and t.device == device and t.is_contiguous()):
        return t
    return t.detach().to(device=device, dtype=torch.float32).contiguous()


# Per block length k, the last resets packed. The layers of a model receive the same
# resets (or the same cu_seqlens, whose step starts are kept with its checks), so an
# unchanged tensor is packed once rather than by ~10 small ops in every layer's forward
# and backward.
_packed_resets = LastTensorCache()


def pack_resets(resets: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """Reset flags as one int32 bit mask per block of ``k`` steps: (B, ceil(T / k) + 2).

    Bit ``j`` of word ``1 + i`` is ``resets[:, i * k + j]``; words 0 and last are zero
    padding, so the kernels can prefetch the block before the first or after the last
    without a mask. The kernels walk blocks aligned to multiples of ``k`` and read one
    word per block (a uniform scalar, not a tile). Read only: the result may be the one an
    earlier call returned for the same, unchanged ``resets``.
    """
    if resets is None:
        return None
    return _packed_resets.get(k, resets, k, lambda: _pack_resets(resets, k))


def _pack_resets(resets: torch.Tensor, k: int) -> torch.Tensor:
    batch, steps = resets.shape
    blocks = -(-steps // k)
    padded = torch.zeros(batch, blocks * k, dtype=torch.int64, device=resets.device)
    padded[:, :steps] = resets.to(torch.int64)
    weights = torch.pow(2, torch.arange(k, device=resets.device, dtype=torch.int64))
    words = torch.zeros(batch, blocks + 2, dtype=torch.int32, device=resets.device)
    words[:, 1:-1] = (padded.view(batch, blocks, k) * weights).sum(-1).to(torch.int32)
    return words
