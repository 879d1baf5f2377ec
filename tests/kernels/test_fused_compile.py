"""torch.compile(fullgraph=True) traces the fused ParaGRU/ParaLSTM layers without graph
breaks: the kernels are registered ops (``torch.ops.pararnn.*``), opaque to the compiler,
with their fused backward registered beside them. ``aot_eager`` checks tracing, the
registered shapes (fake implementations) and the autograd registration without code
generation; on a CPU the ops run through Triton's interpreter."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pararnn

pytest.importorskip("triton")
# the cell modules register torch.ops.pararnn.* when imported: a test run alone needs them
from pararnn.kernels import _fused_common, paragru, paralstm  # noqa: E402, F401

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def short_segments(monkeypatch):
    """Segmented plans (4 segments of 8 steps) at test sizes, so that the boundary rounds
    and the verification walk run inside the compiled graph."""
    monkeypatch.setattr(_fused_common, "MIN_SEG_LEN", 8)
    monkeypatch.setattr(_fused_common, "CHAINS_PER_SM", 1 << 20)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_compiled_fused_layer_matches_eager(layer_cls, short_segments):
    torch.manual_seed(0)
    layer = layer_cls(4, 8, num_heads=2, recurrent_clip=0.5, mode="parallel",
                      backend="triton", device=DEVICE)
    with torch.no_grad():
        layer.cell.bias.normal_()
    x = torch.randn(2, 32, 4, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    results = []
    for run in (layer, compiled):
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        out, final = run(xg)
        h_n = final[0] if isinstance(final, tuple) else final
        (out.sin().sum() + h_n.square().sum()).backward()
        info = layer.last_solve
        assert info.backend == "triton-fused" and info.segments == 4
        assert info.converged and not info.fell_back  # the device flags came back
        results.append([out.detach(), xg.grad, *(p.grad for p in layer.parameters())])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_compiled_fused_inference_without_gradients():
    torch.manual_seed(0)
    layer = pararnn.ParaGRU(4, 8, num_heads=2, recurrent_clip=0.5, backend="triton",
                            device=DEVICE)
    x = torch.randn(2, 12, 4, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        ref, ref_n = layer(x)
        out, h_n = compiled(x)
    assert layer.last_solve.backend == "triton-fused"
    # (the compiled projection is one einsum: rounding differs from the eager GEMMs)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_n, ref_n, rtol=1e-5, atol=1e-6)


class _OpRecorder(TorchDispatchMode):
    """Names of the operators dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cell", ["paragru", "paralstm"])
def test_registered_backward_goes_through_the_backward_op(cell):
    """The compiler traces the registered op's backward with fake tensors, which a Triton
    launch cannot take (on a GPU: "Cannot access data pointer of Tensor"): that backward
    must call the opaque backward op, never the kernels themselves. Checked eagerly, where
    the interpreter would accept either."""
    torch.manual_seed(0)
    n = 8
    pre = torch.randn(2, 12, 3 * n, device=DEVICE, requires_grad=True)
    a = (0.5 * torch.rand(3, n, device=DEVICE)).requires_grad_()
    bias = torch.randn(3, n, device=DEVICE, requires_grad=True)
    if cell == "paragru":
        states, _ = torch.ops.pararnn.paragru_forward(pre, a, bias, None, None, 3, None, False)
    else:
        peephole = (0.5 * torch.rand(2, n, device=DEVICE)).requires_grad_()
        states, _ = torch.ops.pararnn.paralstm_forward(pre, a, peephole, bias, None, None, 3,
                                                       None, False)
    with _OpRecorder() as recorder:
        states.sum().backward()
    assert f"pararnn::{cell}_backward" in recorder.names
    assert pre.grad is not None and torch.isfinite(pre.grad).all()
