"""benchmarks/gpu_overhead.py's per-call timing on the CPU: the layers' rounds in turns."""

import pytest
import torch

pytest.importorskip("triton")

from benchmark_scripts import load_benchmark  # noqa: E402


def test_rounds_are_taken_in_turns(monkeypatch):
    bench = load_benchmark("gpu_overhead")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(bench, "ROUNDS", 3)
    monkeypatch.setattr(bench, "CALLS", 4)
    calls = []
    rounds = bench.interleaved_rounds_us([lambda: calls.append("a"), lambda: calls.append("b")])
    assert [len(r) for r in rounds] == [3, 3] and all(t > 0 for r in rounds for t in r)
    assert "".join(calls) == "a" * 20 + "b" * 20 + ("a" * 4 + "b" * 4) * 3  # warm-up, then turns
    assert len(bench.host_rounds_us(lambda: None)) == 3
