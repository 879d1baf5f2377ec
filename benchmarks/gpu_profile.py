"""Where the time goes on a CUDA GPU: per-kernel breakdowns and launch-plan sweeps.

    PYTHONPATH=src python benchmarks/gpu_profile.py [--layers] [--kernels] [--sweep]

``--layers``: the ParaGRU/ParaLSTM layers (8 heads, 8x4096x1024 or ``--shapes``, fp32 and bf16 autocast),
forward and forward+backward, every CUDA kernel of one call with its time (torch.profiler),
next to the time of the projection's matrix products alone (the "matmul time" of the
layer targets). ``--kernels``: the fused ParaGRU forward at the target shapes, per launch.
``--dtypes``: the fused kernels' GPU time (CUDA-graph replay) and eager time with fp32
and bf16 pre-activations. ``--sweep``: fused forward/backward times over launch plans
(segment length, warm-up, channels per program, steps per block); ``--shapes 32x512x1024
--shipped-tiles --bf16`` sweeps the plans at the LM's shape, ``--segments shipped,128/32``
only those plans (with every tile). Without flags, all.
"""

from __future__ import annotations

import argparse
import sys

import torch

from cuda_timing import graph_median_ms

SHAPE = (8, 4096, 1024)


def bench(fn):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")


def kernel_table(fn, title, top=14, host_top=0):
    """Run ``fn`` once under the profiler (after a warm-up) and print its CUDA kernels and,
    with ``host_top``, that many host operations by self CPU time (where a call that is
    slower than its kernels spends the host's time; the profiler inflates each)."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if host_top else [])
    with profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    events = [e for e in averages if e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    total = sum(e.device_time_total for e in events)
    print(f"\n### {title}: {total / 1e3:.3f} ms of kernels")
    for e in events[:top]:
        print(f"  {e.device_time_total / 1e3:8.3f} ms  x{e.count:<3d} {e.key[:110]}")
    host = sorted((e for e in averages if e.self_cpu_time_total > 0),
                  key=lambda e: -e.self_cpu_time_total)
    for e in host[:host_top]:
        print(f"  host {e.self_cpu_time_total / 1e3:7.3f} ms self  x{e.count:<3d} {e.key[:100]}")
    sys.stdout.flush()


def layers(shape=SHAPE):
    from pararnn.layers import ParaGRU, ParaLSTM
    from pararnn.layers.projection import heads_weight_grad, weight_grad_splits
    B, T, D = shape
    x = torch.randn(B, T, D, device="cuda", requires_grad=True)
    for cls in (ParaGRU, ParaLSTM):
        layer = cls(D, D, num_heads=8, recurrent_clip=0.5, device="cuda")
        for prec in ("fp32", "bf16"):
            amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=prec == "bf16")
            grad = torch.randn(B, T, D, device="cuda")

            def fwd():
                with torch.no_grad(), amp:
                    layer(x)

            def fwd_bwd():
                with amp:
                    y, _ = layer(x)
                y.backward(grad.to(y.dtype))
            name = f"{cls.__name__} {B}x{T}x{D} 8 heads {prec}"
            print(f"\n{name}: forward {bench(fwd):.3f} ms, forward+backward {bench(fwd_bwd):.3f} ms")
            kernel_table(fwd, f"{name} forward", host_top=10)
            kernel_table(fwd_bwd, f"{name} forward+backward", host_top=15)
    # the projection's matrix products alone: (H, B*T, D/H) @ (H, D/H, G*N/H) and its two
    # backward products, as batched GEMMs on contiguous operands
    H = 8
    for gates in (3,):
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.randn(H, B * T, D // H, device="cuda", dtype=dtype)
            w = torch.randn(H, D // H, gates * D // H, device="cuda", dtype=dtype)
            g = torch.randn(H, B * T, gates * D // H, device="cuda", dtype=dtype)
            t_f = bench(lambda: torch.bmm(a, w))
            t_b = bench(lambda: (torch.bmm(g, w.transpose(1, 2)), torch.bmm(a.transpose(1, 2), g)))
            print(f"matmuls {dtype}: forward {t_f:.3f} ms, backward (dx, dW) {t_b:.3f} ms")
            # the weight gradient alone as the layer computes it (pararnn's
            # heads_weight_grad: x in its (B*T, D) layout), its K = B*T reduction in one
            # batched GEMM or split into chunks summed after (the layer's choice marked)
            x2 = torch.randn(B * T, D, device="cuda", dtype=dtype)
            chosen = weight_grad_splits(B * T, g.shape[0] * g.shape[2] * D // H, dtype, x2.device)
            t_w = {splits: bench(lambda: heads_weight_grad(g, x2, D // H, splits))
                   for splits in (1, 4, 8, 16) if (B * T) % splits == 0}
            print(f"  weight gradient {dtype}, K split in " + ", ".join(
                f"{k}{' (the layer)' if k == chosen else ''}: {ms:.3f} ms" for k, ms in t_w.items()))


def kernels():
    from pararnn.cells import ParaGRUCell
    from pararnn.kernels import paragru
    for B, T, N in (SHAPE, (64, 2048, 2048), (1, 65536, 256)):
        cell = ParaGRUCell(N, recurrent_clip=0.9, device="cuda")
        a = cell.recurrent_weights().detach()
        pre = torch.randn(B, T, 3 * N, device="cuda")
        h0 = torch.randn(B, N, device="cuda") * 0.5
        for iters in (1, 3):
            t = bench(lambda: paragru.newton_forward(pre, a, h0, None, iters))
            print(f"gru fwd {B}x{T}x{N} num_iters={iters}: {t:.3f} ms")
        kernel_table(lambda: paragru.newton_forward(pre, a, h0, None, 3), f"gru fwd {B}x{T}x{N}")
        H = paragru.newton_forward(pre, a, h0, None, 3)
        gH = torch.randn_like(H)
        kernel_table(lambda: paragru.backward(pre, a, h0, None, H, gH), f"gru bwd {B}x{T}x{N}")
        del pre, H, gH
        torch.cuda.empty_cache()


def host_us(fn, calls=200):
    """Host time per call (launch overhead): ``calls`` calls back to back, tiny problem."""
    import time
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


# (channels per program, warps, steps per block, load-pipeline stages): 4, 2 and 1
# channels per thread, loads 1 to 3 blocks ahead. More channels per thread give each
# thread independent chains to interleave; fewer make more warps of the same chains, which
# serve better where a plan leaves few chains per SM; deeper pipelines keep more loads in
# flight (the shipped table, _fused_common.CUDA_TILES, says what won where).
TILES = {"gru_fwd": [(128, 1, 4, 3), (128, 1, 8, 3), (64, 1, 4, 3), (64, 1, 4, 4),
                     (64, 1, 8, 3), (64, 1, 8, 4), (128, 1, 4, 2)],
         "gru_bwd": [(128, 1, 4, 3), (128, 1, 4, 4), (64, 1, 4, 3), (64, 1, 4, 4),
                     (64, 1, 8, 3), (64, 1, 8, 4), (128, 1, 4, 2), (64, 2, 2, 3)],
         "lstm_fwd": [(128, 1, 4, 3), (64, 1, 4, 3), (64, 1, 4, 4), (64, 1, 8, 3),
                      (64, 1, 8, 4), (64, 2, 4, 3)],
         "lstm_bwd": [(64, 1, 4, 3), (64, 1, 2, 3), (64, 1, 4, 4), (64, 2, 1, 3),
                      (64, 2, 2, 3), (128, 1, 2, 3), (64, 1, 8, 3), (32, 1, 2, 3)]}
SEGMENTS = [(None, None), (64, 16), (128, 16), (128, 32), (256, 32), (256, 64), (512, 64), (1024, 64)]


def sweep(shapes=(SHAPE, (1, 65536, 256)), shipped_tiles=False, pre_dtype=torch.float32,
          segments=SEGMENTS, tiles=None):
    """Graph and eager ms of the fused forward/backward over ``segments`` (segment length,
    warm-up; ``None``: the shipped plan; ``"walk"``: one exact walk; default
    :data:`SEGMENTS`) and :data:`TILES` (or only the shipped tile of each kernel, or only
    the kernels and tiles of ``tiles``, a dict like :data:`TILES`), at ``shapes`` with
    pre-activations in ``pre_dtype``. Each row names the plan that ran (segments x steps /
    warm-up), the shipped one marked."""
    from pararnn.cells import ParaGRUCell, ParaLSTMCell
    from pararnn.kernels import _fused_common, paragru, paralstm
    small = torch.randn(1, 64, 3 * 64, device="cuda")
    a_small = torch.rand(3, 64, device="cuda") * 0.5
    print(f"host time per call, 1x64x64: gru newton_forward {host_us(lambda: paragru.newton_forward(small, a_small)):.1f} us, "
          f"sequential_forward {host_us(lambda: paragru.sequential_forward(small, a_small)):.1f} us, "
          f"a torch add {host_us(lambda: small + 1):.1f} us")
    print("\n| cell | pass | shape | plan: segments x steps / warm-up | block_n/warps/K | graph ms | eager ms |")
    print("|---|---|---|---|---|---:|---:|")
    for kind in ("gru", "lstm"):
        mod = paragru if kind == "gru" else paralstm
        for B, T, N in shapes:
            cell = (ParaGRUCell if kind == "gru" else ParaLSTMCell)(N, recurrent_clip=0.9,
                                                                    device="cuda")
            w = cell.recurrent_weights()
            w = tuple(t.detach() for t in (w if isinstance(w, tuple) else (w,)))
            width = 1 if kind == "gru" else 2
            pre = torch.randn(B, T, 3 * N, device="cuda").to(pre_dtype)
            h0 = torch.randn(B, width * N, device="cuda") * 0.5
            H = mod.newton_forward(pre, *w, h0, None, 3)
            gH = torch.randn_like(H)
            for name in ("fwd", "bwd"):
                key = f"{kind}_{name}"
                if tiles is not None:
                    kernel_tiles = tiles.get(key, [])
                else:  # None: the plan's own tile
                    kernel_tiles = [(None,) * 4] if shipped_tiles else TILES[key]
                for seg, warm in [(seg, warm) for seg, warm in segments
                                  if seg is None or seg == "walk" or seg < T]:
                    for bn, nw, k, stages in kernel_tiles:
                        kw = dict(seg_len=T if seg == "walk" else seg, warmup=warm,
                                  block_n=bn, num_warps=nw, steps_per_block=k, stages=stages)
                        plan = _fused_common.make_plan(key, B, T, N, pre.device, **kw)
                        label = (f"{plan.segments} x {plan.seg_len} / {plan.warmup}"
                                 + (" (shipped)" if seg is None else ""))
                        if name == "fwd":
                            def fn():
                                return mod.newton_forward(pre, *w, h0, None, 3, **kw)
                        else:
                            def fn():
                                return mod.backward(pre, *w, h0, None, H, gH, **kw)
                        try:
                            ms = f"{graph_median_ms(fn):.3f} | {bench(fn):.3f}"
                        except Exception as err:  # noqa: BLE001 - report and go on
                            ms = f"failed: {type(err).__name__} | -"
                        print(f"| {kind} | {name} | {B}x{T}x{N} | {label} | {plan.block_n}/"
                              f"{plan.num_warps}/{plan.steps_per_block}/{plan.stages} | {ms} |")
                        sys.stdout.flush()
            del pre, H, gH
            torch.cuda.empty_cache()


def dtypes():
    """Fused kernels with fp32 vs bf16 pre-activations, default plans (graph / eager ms)."""
    from pararnn.cells import ParaGRUCell, ParaLSTMCell
    from pararnn.kernels import paragru, paralstm
    print("\n| cell | B×T×N | pre dtype | fwd graph | fwd eager | bwd graph | bwd eager |")
    print("|---|---|---|---:|---:|---:|---:|")
    for kind in ("gru", "lstm"):
        mod = paragru if kind == "gru" else paralstm
        for B, T, N in (SHAPE, (64, 2048, 2048), (1, 65536, 256)):
            cell = (ParaGRUCell if kind == "gru" else ParaLSTMCell)(N, recurrent_clip=0.9,
                                                                    device="cuda")
            w = cell.recurrent_weights()
            w = tuple(t.detach() for t in (w if isinstance(w, tuple) else (w,)))
            bias = torch.randn(3, N, device="cuda") * 0.1
            width = 1 if kind == "gru" else 2
            pre32 = torch.randn(B, T, 3 * N, device="cuda")
            h0 = torch.randn(B, width * N, device="cuda") * 0.5
            for name, pre in (("fp32", pre32), ("bf16", pre32.to(torch.bfloat16))):
                H = mod.newton_forward(pre, *w, h0, None, 3, bias=bias)
                gH = torch.randn_like(H)

                def fwd():
                    return mod.newton_forward(pre, *w, h0, None, 3, bias=bias)

                def bwd():
                    return mod.backward(pre, *w, h0, None, H, gH, bias=bias)
                print(f"| {kind} | {B}x{T}x{N} | {name} | {graph_median_ms(fwd):.3f} | {bench(fwd):.3f} "
                      f"| {graph_median_ms(bwd):.3f} | {bench(bwd):.3f} |")
                sys.stdout.flush()
                del H, gH
            del pre32, pre
            torch.cuda.empty_cache()


def parse_plan(text: str):
    """One ``--segments`` entry: ``shipped``, ``walk`` or ``SEG_LEN/WARMUP``."""
    if text in ("shipped", "walk"):
        return (None if text == "shipped" else "walk", None)
    try:
        seg_len, warmup = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--segments: {text!r} is not 'shipped', 'walk' or SEG_LEN/WARMUP") from None
    return seg_len, warmup


TILE_SYNTAX = "KERNEL=BLOCK_N/WARPS/STEPS_PER_BLOCK/STAGES[+...]"


def parse_tiles(text: str) -> dict:
    """``--tiles``: ``KERNEL=BN/W/K/S+BN/W/K/S,KERNEL=...`` -> {kernel: [(BN, W, K, S), ...]}."""
    tiles = {}
    for entry in text.split(","):
        kernel, _, values = entry.partition("=")
        if kernel not in TILES:
            raise argparse.ArgumentTypeError(
                f"--tiles: unknown kernel {kernel!r} (one of {', '.join(TILES)})")
        try:
            tiles[kernel] = [tuple(int(v) for v in tile.split("/")) for tile in values.split("+")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"--tiles: {entry!r} is not {TILE_SYNTAX}") from None
        if any(len(tile) != 4 for tile in tiles[kernel]):
            raise argparse.ArgumentTypeError(f"--tiles: {entry!r} is not {TILE_SYNTAX}")
    return tiles


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", action="store_true")
    ap.add_argument("--kernels", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--dtypes", action="store_true")
    ap.add_argument("--shapes", default=None,
                    help="--sweep and --layers at these BxTxN, comma-separated (e.g. the LM's "
                    "32x512x1024)")
    ap.add_argument("--segments", default=None,
                    help="--sweep only these (segment length/warm-up) plans, comma-separated, "
                    "'shipped' for the shipped one, 'walk' for one exact walk, e.g. "
                    "shipped,walk,128/32")
    ap.add_argument("--shipped-tiles", action="store_true",
                    help="--sweep only the shipped tile of each kernel (plans only)")
    ap.add_argument("--tiles", default=None,
                    help="--sweep only these kernels and tiles, e.g. "
                    "gru_fwd=128/1/4/3+64/1/8/4,lstm_bwd=64/1/4/3 "
                    "(BLOCK_N/WARPS/STEPS_PER_BLOCK/STAGES)")
    ap.add_argument("--bf16", action="store_true", help="--sweep with bf16 pre-activations")
    args = ap.parse_args()
    everything = not (args.layers or args.kernels or args.sweep or args.dtypes)
    try:
        segments = SEGMENTS if args.segments is None else [
            parse_plan(plan) for plan in args.segments.split(",")]
        tiles = None if args.tiles is None else parse_tiles(args.tiles)
    except argparse.ArgumentTypeError as err:
        ap.error(str(err))
    print(torch.cuda.get_device_name(), torch.__version__)
    shapes = ([tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")]
              if args.shapes else None)
    if args.layers or everything:
        for shape in shapes or (SHAPE,):
            layers(shape)
    if args.kernels or everything:
        kernels()
    if args.dtypes or everything:
        dtypes()
    if args.sweep or everything:
        sweep(shapes or (SHAPE, (1, 65536, 256)), args.shipped_tiles,
              torch.bfloat16 if args.bf16 else torch.float32, segments, tiles)


if __name__ == "__main__":
    main()
