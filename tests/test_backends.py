"""Backend selection: what auto picks, and clear errors when a forced backend cannot run."""

import pytest
import torch

import pararnn
from pararnn.solver import api
from pararnn.solver.backends import select_scan, triton_runs_on
from pararnn.structure import DENSE, DIAGONAL


def test_auto_uses_torch_on_cpu():
    layer = pararnn.ParaGRU(4, 8)
    layer(torch.randn(2, 16, 4))
    assert layer.last_solve.backend == "torch"


def test_forced_torch_backend():
    _, name = select_scan(DIAGONAL, torch.device("cpu"), torch.float32, "torch")
    assert name == "torch"


def test_forced_triton_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="backend='triton' has no scan kernel for jacobian='dense'"):
        select_scan(DENSE, torch.device("cpu"), torch.float32, "triton")
    with pytest.raises(ValueError, match="dtype torch.float64"):
        select_scan(DIAGONAL, torch.device("cpu"), torch.float64, "triton")


@pytest.mark.skipif(triton_runs_on(torch.device("cpu")), reason="Triton interpreter is on")
def test_forced_triton_on_cpu_without_interpreter():
    layer = pararnn.ParaGRU(4, 8, backend="triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        layer(torch.randn(2, 16, 4))


def test_auto_mode_rule_on_cpu():
    wide = pararnn.ParaGRU(4, 512)
    narrow = pararnn.ParaGRU(4, 8)
    x = torch.randn(2, 16, 4)
    with torch.no_grad():
        wide(x)
        assert wide.last_solve.mode == "sequential"  # inference, wide steps: the loop wins
        narrow(x)
        assert narrow.last_solve.mode == "parallel"
        for half_width, mode in ((api.CPU_SEQUENTIAL_MIN_WIDTH // 2, "sequential"),
                                 (api.CPU_SEQUENTIAL_MIN_WIDTH // 2 - 1, "parallel")):
            layer = pararnn.ParaGRU(4, half_width)  # batch 2: the step is twice as wide
            layer(x)
            assert layer.last_solve.mode == mode, half_width
    wide(x[:1].expand(torch.get_num_threads(), -1, -1))  # training from 512 per thread: the loop
    assert wide.last_solve.mode == "sequential"
    wide(x[:, :1])
    assert wide.last_solve.mode == "sequential"  # a single step needs no Newton


def test_auto_mode_rule_with_gradients_where_the_c_loop_trains(monkeypatch):
    """From B x state = 128 per thread the C loop where it runs; elsewhere Newton below 512
    per thread."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    x = torch.randn(1, 16, 4)
    has_c = pararnn.ParaGRUCell(4).compiled_loop(x) is not None
    mid, narrow = pararnn.ParaGRU(4, 256), pararnn.ParaGRU(4, 64)
    mid(x)  # B x state = 1 x 256: 128 per thread
    assert mid.last_solve.mode == ("sequential" if has_c else "parallel")
    narrow(x.expand(4, -1, -1))  # 4 x 64
    assert narrow.last_solve.mode == ("sequential" if has_c else "parallel")
    narrow(x.expand(2, -1, -1))  # 2 x 64
    assert narrow.last_solve.mode == "parallel"
    mid(x, resets=torch.rand(1, 16) < 0.2)  # restarts: the PyTorch loop, 512 per thread
    assert mid.last_solve.mode == "parallel"
    monkeypatch.setenv("PARARNN_CPU_KERNELS", "0")  # no C loop
    mid(x)
    assert mid.last_solve.mode == "parallel"
    mid(x.expand(2, -1, -1))  # 2 x 256: 256 per thread, below 512
    assert mid.last_solve.mode == "parallel"
    mid(x.expand(4, -1, -1))  # 4 x 256: 512 per thread
    assert mid.last_solve.mode == "sequential"


def test_auto_takes_kernels_only_on_cuda_and_fused_kernels_only_for_float32_bfloat16(monkeypatch):
    """Where Triton runs on the CPU (its interpreter), "auto" still takes the PyTorch scan and
    no fused solve there; "triton" takes the fused kernels only for float32/bfloat16 input
    (float64 stays on the generic path)."""
    from pararnn.solver import backends

    monkeypatch.setattr(backends, "triton_runs_on", lambda device: True)
    cpu = torch.device("cpu")
    assert select_scan(DIAGONAL, cpu, torch.float32, "auto")[1] == "torch"
    assert select_scan(DIAGONAL, cpu, torch.float32, "triton")[1] == "triton"
    cell = pararnn.ParaGRUCell(4, dtype=torch.float64)
    x = torch.randn(1, 3, 12, dtype=torch.float64)
    assert backends.select_fused(cell, x, "triton") is None
    assert backends.select_fused(pararnn.ParaGRUCell(4), x.float(), "auto") is None
    assert backends.select_fused(pararnn.ParaGRUCell(4), x.float(), "triton") is not None
