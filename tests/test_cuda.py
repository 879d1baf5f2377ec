"""The PyTorch path on CUDA tensors (skipped without a GPU)."""

import pytest
import torch

import pararnn
from cells_zoo import CONVERGED, all_cells

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(all_cells()))
def test_parallel_equals_sequential_on_cuda(name, dtype):
    cell = all_cells(dtype)[name].cuda()
    x = torch.randn(3, 1000, cell.input_size, dtype=dtype, device="cuda")
    h0 = torch.randn(3, cell.state_size, dtype=dtype, device="cuda") * 0.5
    resets = torch.rand(3, 1000, device="cuda") < 0.01
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    ref, ref_n = pararnn.RNN(cell, mode="sequential")(x, h0, resets=resets)
    rnn = pararnn.RNN(cell, mode="parallel", backend="torch",
                      newton=pararnn.NewtonConfig(max_iters=60, tol=tol, on_failure="raise"))
    out, h_n = rnn(x, h0, resets=resets)
    rel = ((out - ref).norm() / ref.norm()).item()
    assert rel < (1e-10 if dtype == torch.float64 else 1e-5), rel
    assert ((h_n - ref_n).norm() / ref_n.norm()).item() < (1e-10 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_layer_gradients_on_cuda(layer_cls):
    layer = layer_cls(32, 64, num_heads=4, dtype=torch.float64, device="cuda",
                      newton=pararnn.NewtonConfig(**CONVERGED))
    x = torch.randn(2, 777, 32, dtype=torch.float64, device="cuda")
    grads = {}
    for mode in ("sequential", "parallel"):
        layer.mode = mode
        layer.zero_grad()
        layer(x)[0].cos().sum().backward()
        grads[mode] = [p.grad.clone() for p in layer.parameters()]
    for a, b in zip(grads["parallel"], grads["sequential"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_bf16_autocast_on_cuda():
    layer = pararnn.ParaGRU(64, 128, device="cuda")
    x = torch.randn(4, 512, 64, device="cuda")
    ref, _ = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = layer(x)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 2e-2


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_fused_default_is_capturable_in_a_cuda_graph(layer_cls):
    """The safe default on the fused path decides its fallback on the device: the whole
    layer forward captures into a CUDA graph (no host synchronisation) and replays to the
    eager result, at a shape whose plan is segmented (boundary rounds + verification)."""
    torch.manual_seed(0)
    layer = layer_cls(256, 256, num_heads=2, recurrent_clip=0.5, device="cuda")
    x = torch.randn(1, 8192, 256, device="cuda")
    with torch.no_grad():
        eager, _ = layer(x)
        assert layer.last_solve.segments > 1 and not layer.last_solve.fell_back
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            layer(x)  # warm-up on the capture stream (Triton compiles outside the graph)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured, _ = layer(x)
        graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, eager, rtol=0, atol=0)

