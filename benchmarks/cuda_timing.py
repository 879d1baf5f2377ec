"""Timing shared by the GPU benchmarks: the median of calls, each between two CUDA events."""

from __future__ import annotations

import statistics

import torch

REPEATS, WARMUP_CALLS = 20, 5


def median_event_ms(fn, repeats: int = REPEATS, warmup: int = WARMUP_CALLS) -> float:
    """Median milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graphed(fn, warmup: int = 3):
    """``fn`` captured once as a CUDA graph (after ``warmup`` calls on a side stream, as
    capture requires); the returned function replays it: the GPU's time without the host's."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def graph_median_ms(fn) -> float:
    """GPU time of ``fn`` without host launch gaps: median of CUDA-graph replays (Triton's
    ``do_bench_cudagraph``), after one call outside the graph (compiles, allocates)."""
    import triton.testing
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")


def interleaved_median_event_ms(fns, repeats: int = REPEATS, warmup: int = WARMUP_CALLS):
    """Median milliseconds of each of ``fns``, timed in turns (A B, B A, A B, ...) so
    that drifts of the host or the clocks fall on all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for i in range(repeats):
        order = range(len(fns)) if i % 2 == 0 else reversed(range(len(fns)))
        for k in order:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[k]()
            end.record()
            end.synchronize()
            times[k].append(start.elapsed_time(end))
    return [statistics.median(t) for t in times]


def make_layer(layer_cls, hidden: int, **options):
    """The benchmarks' layer: ``hidden -> hidden``, input-projection heads of 128 channels,
    recurrent clip 0.5 (as the language models use), on the current CUDA device."""
    torch.manual_seed(0)
    return layer_cls(hidden, hidden, num_heads=max(1, hidden // 128), recurrent_clip=0.5,
                     device="cuda", **options)


def layer_call(layer, x, dtype: str, backward: bool, **options):
    """One timed step: ``layer`` on ``x`` (and keyword ``options``, e.g. ``cu_seqlens``),
    plus the backward of the outputs' sum when ``backward``; ``dtype`` "bf16" runs under
    autocast."""
    def call():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = layer(x, **options)[0]
        if backward:
            out.float().sum().backward()
    return call


def time_layer(layer, shape, dtype: str, backward: bool) -> float:
    """Median ms of :func:`layer_call` on random input of ``shape`` (B, T, F)."""
    x = torch.randn(*shape, device="cuda", requires_grad=backward)
    with torch.set_grad_enabled(backward):
        return median_event_ms(layer_call(layer, x, dtype, backward))
