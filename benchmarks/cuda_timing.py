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


def make_layer(layer_cls, hidden: int, **options):
    """The benchmarks' layer: ``hidden -> hidden``, input-projection heads of 128 channels,
    recurrent clip 0.5 (as the language models use), on the current CUDA device."""
    torch.manual_seed(0)
    return layer_cls(hidden, hidden, num_heads=max(1, hidden // 128), recurrent_clip=0.5,
                     device="cuda", **options)


def time_layer(layer, shape, dtype: str, backward: bool) -> float:
    """Median ms of ``layer`` on random input of ``shape`` (B, T, F): forward, plus the
    backward of the outputs' sum when ``backward``; ``dtype`` "bf16" runs under autocast."""
    x = torch.randn(*shape, device="cuda", requires_grad=backward)

    def call():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = layer(x)[0]
        if backward:
            out.float().sum().backward()

    with torch.set_grad_enabled(backward):
        return median_event_ms(call)
