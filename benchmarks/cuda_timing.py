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
