"""torch.compile(fullgraph=True) traces the fused ParaGRU/ParaLSTM layers without graph
breaks: the kernels are registered ops (``torch.ops.pararnn.*``) with their fused backward
registered beside them; triton_ops on a GPU, which inductor traces into and launches
itself, opaque custom ops with shape functions under Triton's interpreter (the CPU).
``aot_eager`` checks tracing, the registered shapes and the autograd registration without
code generation; on a CPU the ops run through the interpreter."""

import pytest
import torch
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._ops import HigherOrderOperator
from torch.utils._python_dispatch import TorchDispatchMode

import pararnn

pytest.importorskip("triton")
# the cell modules register torch.ops.pararnn.* when imported: a test run alone needs them
from pararnn.kernels import _fused_common, paragru, paralstm  # noqa: E402, F401

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def short_segments(monkeypatch):
    """Segmented plans (segments of 8 steps: 3 at the CPU tests' 24 steps, 4 at the GPU
    tests' 32) at test sizes, so that the boundary rounds and the verification walk run
    inside the compiled graph."""
    monkeypatch.setattr(_fused_common, "MIN_SEG_LEN", 8)
    monkeypatch.setattr(_fused_common, "CHAINS_PER_SM", 1 << 20)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_compiled_fused_layer_matches_eager(layer_cls, short_segments):
    torch.manual_seed(0)
    layer = layer_cls(4, 8, num_heads=2, recurrent_clip=0.5, mode="parallel",
                      backend="triton", device=DEVICE)
    with torch.no_grad():
        layer.cell.bias.normal_()
    # one row (rows are the eager kernel tests' concern): its size differs from the two
    # heads', so the registered shapes cannot confuse the head-major input's dimensions
    x = torch.randn(1, 24, 4, device=DEVICE)
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
        assert info.backend == "triton-fused" and info.segments == 3
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
    """Names of the operators dispatched while active, and each call's arguments. A Triton
    kernel that a compiled graph launches itself (a triton_op traced into, on a GPU) comes
    as a higher-order operator: recorded under the kernel's name, with its tensor arguments
    by name."""

    supports_higher_order_operators = True

    def __init__(self):
        super().__init__()
        self.names, self.args = [], {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, HigherOrderOperator):
            if "kernel_idx" not in kwargs:
                return NotImplemented
            kernel = kernel_side_table.get_kernel(kwargs["kernel_idx"])
            name, recorded = kernel.fn.__name__, kwargs["kwargs"]
        else:
            name, recorded = func.name(), args
        self.names.append(name)
        self.args[name] = recorded
        return func(*args, **kwargs)


@pytest.mark.parametrize("cell", ["paragru", "paragru-hidden", "paralstm", "paralstm-hidden"])
def test_registered_backward_goes_through_the_backward_op(cell):
    """The compiler traces the registered op's backward with fake tensors, which a bare
    Triton launch cannot take ("Cannot access data pointer of Tensor"): that backward must
    call the backward op (traced into on a GPU, a shape function under the interpreter),
    never the kernels themselves. Checked eagerly, where the interpreter would accept
    either. The ops with ``hidden``: a loss on the hidden output alone hands the backward op
    its gradient as it is (for ParaLSTM (B, T, N), not a (B, T, 2N) one with zeros for c)."""
    torch.manual_seed(0)
    n = 8
    pre = torch.randn(2, 12, 3 * n, device=DEVICE, requires_grad=True)
    a = (0.5 * torch.rand(3, n, device=DEVICE)).requires_grad_()
    bias = torch.randn(3, n, device=DEVICE, requires_grad=True)
    clip = 0.4  # clamps some of the weights: the clip passes through both ops
    hidden = cell.endswith("-hidden")
    if cell.startswith("paragru"):
        states, copy, _ = torch.ops.pararnn.paragru_forward(pre, a, bias, None, None, clip, 3,
                                                            None, False, hidden)
        out = copy if hidden else states
    else:
        peephole = (0.5 * torch.rand(2, n, device=DEVICE)).requires_grad_()
        states, h, _ = torch.ops.pararnn.paralstm_forward(pre, a, peephole, bias, None, None,
                                                          clip, 3, None, False, hidden)
        out = h if hidden else states
    with _OpRecorder() as recorder:
        out.sum().backward()
    backward_op = f"pararnn::{cell.split('-')[0]}_backward"
    assert backward_op in recorder.names
    assert tuple(recorder.args[backward_op][-1].shape) == tuple(out.shape)
    assert pre.grad is not None and torch.isfinite(pre.grad).all()


@pytest.mark.skipif(DEVICE != "cuda", reason="inductor launches the kernels on a GPU only")
@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_inductor_launches_the_fused_kernels_itself(layer_cls, short_segments):
    """On a GPU the solve ops are triton_ops: inductor traces into them and launches the
    walk, boundary and backward kernels from its generated code (no opaque op call left),
    with the eager results, the boundary rounds and verification included."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    layer = layer_cls(64, 128, num_heads=2, recurrent_clip=0.5, backend="triton",
                      device=DEVICE)
    x = torch.randn(2, 32, 64, device=DEVICE)
    kind = "gru" if layer_cls is pararnn.ParaGRU else "lstm"

    def step(run):
        layer.zero_grad()
        xg = x.clone().requires_grad_()
        out, _ = run(xg)
        out.sin().sum().backward()
        return [out.detach(), xg.grad, *(p.grad for p in layer.parameters())]

    want = step(layer)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    got, code = run_and_get_code(step, compiled)
    assert layer.last_solve.segments == 4
    source = "\n".join(code)
    for kernel in (f"_{kind}_fwd_kernel", f"_{kind}_bwd_kernel", "_boundary_"):
        assert kernel in source
    assert f"torch.ops.pararnn.para{kind}_forward" not in source
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="inductor launches the kernels on a GPU only")
def test_inductor_launches_the_conv_kernels_itself():
    from torch._inductor.utils import run_and_get_code
    from pararnn.kernels.causal_conv import causal_conv1d

    torch.manual_seed(0)
    x = torch.randn(2, 40, 96, device=DEVICE, dtype=torch.bfloat16)
    weight = torch.randn(96, 1, 4, device=DEVICE, requires_grad=True)
    bias = torch.randn(96, device=DEVICE, requires_grad=True)

    def step(conv):
        weight.grad = bias.grad = None
        xg = x.clone().requires_grad_()
        y = conv(xg, weight, bias, silu=True)
        y.float().square().sum().backward()
        return [y.detach(), xg.grad, weight.grad, bias.grad]

    want = step(causal_conv1d)
    torch._dynamo.reset()
    got, code = run_and_get_code(step, torch.compile(causal_conv1d, fullgraph=True))
    source = "\n".join(code)
    for kernel in ("_conv1d_fwd_kernel", "_conv1d_bwd_kernel"):
        assert kernel in source
    assert "torch.ops.pararnn.causal_conv1d" not in source
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)


@pytest.mark.skipif(DEVICE != "cuda", reason="inductor launches the kernels on a GPU only")
def test_inductor_launches_the_gated_norm_kernels_itself():
    """The mixer's gated norm as a compiled model runs it: under autocast, the gate a
    bfloat16 chunk of the input projection, the output bfloat16."""
    from torch._inductor.utils import run_and_get_code
    from pararnn.kernels.gated_norm import gated_rms_norm

    torch.manual_seed(0)
    projected = torch.randn(2, 40, 192, device=DEVICE, dtype=torch.bfloat16)
    weight = torch.randn(96, device=DEVICE, requires_grad=True)

    def step(norm):
        weight.grad = None
        pg = projected.clone().requires_grad_()
        h, gate = pg.chunk(2, dim=-1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = norm(h.float(), gate, weight, 1e-5)
        y.float().square().sum().backward()
        return [y.detach(), pg.grad, weight.grad]

    want = step(gated_rms_norm)
    torch._dynamo.reset()
    got, code = run_and_get_code(step, torch.compile(gated_rms_norm, fullgraph=True))
    source = "\n".join(code)
    for kernel in ("_gated_norm_fwd_kernel", "_gated_norm_bwd_kernel"):
        assert kernel in source
    assert "torch.ops.pararnn.gated_rms_norm" not in source
    assert got[0].dtype == torch.bfloat16
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)


def test_compiled_paralstm_layer_hands_its_backward_the_gradient_of_h_alone():
    """Compiled as a model uses the layer (its final state dropped inside the graph, as the
    LM's mixer does), the states have no gradient in AOTAutograd's joint graph, so the
    backward op reads h's gradient as it is, (B, T, N) (the zero-filled (B, T, 2N) gradient
    of all the states cost 10% of the LM step). A final state returned from the compiled
    graph gets a gradient (zeros when unused): then the (B, T, 2N) one."""
    torch.manual_seed(0)
    layer = pararnn.ParaLSTM(4, 8, num_heads=2, recurrent_clip=0.5, backend="triton",
                             device=DEVICE)
    x = torch.randn(2, 12, 4, device=DEVICE, requires_grad=True)
    for returns_final_state, width in ((False, 8), (True, 16)):
        torch._dynamo.reset()
        compiled = torch.compile(layer if returns_final_state else lambda x: layer(x)[0],
                                 fullgraph=True, backend="aot_eager")
        out = compiled(x)
        out = out[0] if returns_final_state else out
        assert layer.last_solve.backend == "triton-fused"
        with _OpRecorder() as recorder:  # (a dispatch mode around the compiled call breaks it)
            out.sin().sum().backward()
        # on a GPU the graph launches the backward kernel itself, else it calls the op
        grad_h = (recorder.args["_lstm_bwd_kernel"]["GH"] if DEVICE == "cuda"
                  else recorder.args["pararnn::paralstm_backward"][-1])
        assert tuple(grad_h.shape) == (2, 12, width)


def test_compiled_bf16_paragru_layer_hands_its_backward_a_bf16_gradient():
    """Compiled under bf16 autocast as the LM's mixer uses it (final state dropped inside
    the graph), the layer outputs the walk's bf16 copy of the states and the backward reads
    that copy's gradient in bf16; a final state returned from the graph gets a gradient
    (zeros when unused), and the sum of both then comes in fp32."""
    torch.manual_seed(0)
    layer = pararnn.ParaGRU(4, 8, num_heads=2, recurrent_clip=0.5, backend="triton",
                            device=DEVICE)
    x = torch.randn(2, 12, 4, device=DEVICE, requires_grad=True)
    for returns_final_state, dtype in ((False, torch.bfloat16), (True, torch.float32)):
        torch._dynamo.reset()
        compiled = torch.compile(layer if returns_final_state else lambda x: layer(x)[0],
                                 fullgraph=True, backend="aot_eager")
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = compiled(x)
        out = out[0] if returns_final_state else out
        assert layer.last_solve.backend == "triton-fused" and out.dtype == torch.bfloat16
        with _OpRecorder() as recorder:
            out.float().sin().sum().backward()
        grad_h = (recorder.args["_gru_bwd_kernel"]["GH"] if DEVICE == "cuda"
                  else recorder.args["pararnn::paragru_backward"][-1])
        assert grad_h.dtype == dtype and tuple(grad_h.shape) == (2, 12, 8)
