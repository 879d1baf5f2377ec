"""The fused causal depthwise conv (+ SiLU) against its PyTorch reference and the module's
own ``F.conv1d`` path: values and the gradients of x, weight and bias."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from pararnn.kernels import causal_conv, interpreter_enabled  # noqa: E402
from pararnn.kernels.causal_conv import causal_conv1d, causal_conv1d_naive  # noqa: E402
from _lm_block_kernels import (kernels_on,  # noqa: E402
                               loss_and_gradients_with_and_without_kernels)
from pararnn.models.lm import CausalConv1d  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
if not CUDA and not interpreter_enabled():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
# (B, T, C): T and C not multiples of the tiles; on the CPU (8 x 16 tiles) B=1 splits the
# backward's time blocks into runs of one block, B=3 into runs of two (see the test below)
SHAPES = [(1, 37, 40), (3, 29, 21)]


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    """float32 means float32: cuDNN would run the plain path's conv in TF32 by default."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _operands(batch, steps, channels, k, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, channels, generator=gen, dtype=dtype)
    weight = torch.randn(channels, 1, k, generator=gen, dtype=dtype)
    bias = torch.randn(channels, generator=gen, dtype=dtype)
    grad = torch.randn(batch, steps, channels, generator=gen, dtype=dtype)
    return [t.to(DEVICE) for t in (x, weight, bias, grad)]


def _value_and_grads(fn, x, weight, bias, grad, silu):
    inputs = [t.detach().requires_grad_() for t in (x, weight, bias)]
    y = fn(*inputs, silu)
    return [y.detach(), *torch.autograd.grad(y, inputs, grad.to(y.dtype))]


def _module_old_path(conv, x, silu):
    """CausalConv1d's plain ops (transpose, zero window, grouped F.conv1d, SiLU)."""
    y = conv._conv(x, None, "conv")
    return F.silu(y) if silu else y


def test_shapes_cover_several_runs_and_several_blocks_per_run():
    if CUDA:
        pytest.skip("the CPU tiles decide the runs")
    launch = (*causal_conv.CPU_TILE[:2], causal_conv.PROGRAMS_PER_SM)
    assert causal_conv._runs(1, 37, 40, DEVICE, *launch) == (5, 1)
    assert causal_conv._runs(3, 29, 21, DEVICE, *launch) == (2, 2)
    assert causal_conv._runs(3, 37, 21, DEVICE, *launch) == (3, 2)  # the last run is one block


# Half of the 2 x 2 x 2 x 2 grid of shape, kernel size, SiLU and dtype (the cases whose
# levels have an even sum): each level of each factor runs four times, and every pair of
# levels of two factors (every specialisation pair the kernels compile: K with SILU, K with
# the float64 or float32 accumulator, either with both run layouts) twice.
MATCH_CASES = [(shape, k, silu, dtype)
               for i, shape in enumerate(SHAPES) for j, k in enumerate((2, 4))
               for s, silu in enumerate((True, False))
               for d, dtype in enumerate((torch.float64, torch.float32)) if (i + j + s + d) % 2 == 0]


@pytest.mark.parametrize("shape,k,silu,dtype", MATCH_CASES, ids=lambda v: (
    "x".join(map(str, v)) if isinstance(v, tuple) else str(v).removeprefix("torch.")))
def test_matches_reference(shape, k, silu, dtype):
    x, weight, bias, grad = _operands(*shape, k, dtype)
    got = _value_and_grads(causal_conv1d, x, weight, bias, grad, silu)
    want = _value_and_grads(causal_conv1d_naive, *(t.double() for t in (x, weight, bias, grad)), silu)
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape
        torch.testing.assert_close(g.double(), w, **TOL[dtype])


def test_odd_kernel_sizes_and_runs_of_several_blocks():
    # k = 11 reaches past a time block of the CPU tile's 8 steps: the kernels take 16 (17
    # steps: two runs of one block, the second a single masked step). With
    # SiLU both kernels run every tap loop (the backward recomputes the pre-activation); the
    # no-SiLU epilogue differs from it by the SiLU step alone (test_matches_reference)
    assert causal_conv._tile(DEVICE, 11)[0] >= 10
    for k, shape, silu in ((1, (2, 9, 5), False), (1, (2, 9, 5), True), (3, (3, 37, 21), True),
                           (11, (1, 17, 3), True)):
        x, weight, bias, grad = _operands(*shape, k, torch.float64, seed=k)
        got = _value_and_grads(causal_conv1d, x, weight, bias, grad, silu)
        want = _value_and_grads(causal_conv1d_naive, x, weight, bias, grad, silu)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL[torch.float64])


def test_takes_the_weight_as_c_by_k_and_strided_inputs():
    x, weight, bias, grad = _operands(2, 11, 18, 3, torch.float64)
    want = _value_and_grads(causal_conv1d_naive, x, weight, bias, grad, True)
    flat = _value_and_grads(causal_conv1d, x, weight[:, 0], bias, grad, True)
    assert flat[2].shape == (18, 3)
    torch.testing.assert_close(flat[2], want[2][:, 0], **TOL[torch.float64])
    # a chunk of a wider projection (strided rows), and channels-first storage
    wide = torch.cat([x, x.flip(-1)], dim=-1)[..., :18]
    channels_first = x.transpose(1, 2).contiguous().transpose(1, 2)
    for strided in (wide, channels_first):
        assert not strided.is_contiguous()
        for g, w in zip(_value_and_grads(causal_conv1d, strided, weight, bias, grad, True), want):
            torch.testing.assert_close(g, w, **TOL[torch.float64])


def test_reduced_precision_keeps_float32_parameter_gradients():
    """bfloat16 input with float32 parameters: float32 math, a bfloat16 output and input
    gradient, float32 weight and bias gradients. The parameters hold bfloat16 values, so
    that rounding them to the input dtype is exact (Triton's interpreter rounds float32 to
    bfloat16 toward zero, a GPU to nearest); the outputs are then one bfloat16 rounding
    (or two ulps toward zero) from the float64 reference."""
    x, weight, bias, grad = _operands(3, 13, 21, 4, torch.float32)
    x, grad, weight, bias = x.bfloat16(), grad.bfloat16(), weight.bfloat16().float(), bias.bfloat16().float()
    got = _value_and_grads(causal_conv1d, x, weight, bias, grad, True)
    assert [t.dtype for t in got] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    want = _value_and_grads(causal_conv1d_naive, *(t.double() for t in (x, weight, bias, grad)), True)
    for g, w in zip(got[:2], want[:2]):
        assert ((g.double() - w).abs() <= 2 ** -7 * w.abs() + 1e-6).all()
    for g, w in zip(got[2:], want[2:]):  # sums of float32 products of the same values
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)


def test_autocast_computes_in_the_autocast_dtype():
    """Under autocast the input is cast first, as ``F.conv1d`` casts it; the parameters
    and their gradients stay float32."""
    x, weight, bias, grad = _operands(2, 9, 16, 4, torch.float32)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        got = _value_and_grads(causal_conv1d, x, weight, bias, grad, True)
        plain = causal_conv1d_naive(x, weight, bias, True)
    assert got[0].dtype == plain.dtype == torch.bfloat16
    assert got[1].dtype == got[2].dtype == got[3].dtype == torch.float32
    cast = _value_and_grads(causal_conv1d, x.bfloat16(), weight, bias, grad, True)
    for g, c in zip(got, cast):
        assert torch.equal(g, c.to(g.dtype))
    assert (got[0].float() - plain.float()).norm() <= 1e-2 * plain.float().norm()


def test_backward_is_deterministic():
    # SHAPES[0]'s five runs of one block (partial weight-gradient rows summed over runs),
    # on two channel blocks (the second masked)
    x, weight, bias, grad = _operands(1, 37, 24, 2, torch.float32)
    first = _value_and_grads(causal_conv1d, x, weight, bias, grad, True)
    second = _value_and_grads(causal_conv1d, x, weight, bias, grad, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_bad_input_is_rejected():
    x, weight, bias, _ = _operands(2, 5, 6, 4, torch.float32)
    with pytest.raises(ValueError, match=r"x must be \(B, T, C\)"):
        causal_conv1d(x[0], weight, bias)
    with pytest.raises(ValueError, match=r"weight must be \(6, 1, K\)"):
        causal_conv1d(x, weight[:5], bias)
    with pytest.raises(ValueError, match=r"weight must be \(6, 1, K\)"):
        causal_conv1d(x, weight.expand(6, 2, 4), bias)
    with pytest.raises(ValueError, match=r"bias must be \(6,\)"):
        causal_conv1d(x, weight, bias[:3])
    with pytest.raises(ValueError, match="x must be float16, bfloat16, float32 or float64"):
        causal_conv1d(x.int(), weight, bias)


def test_double_backward_is_refused():
    x, weight, bias, grad = _operands(1, 5, 6, 2, torch.float32)
    x.requires_grad_()
    y = causal_conv1d(x, weight, bias, True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y, x, grad, create_graph=True)


def test_opcheck():
    """The registered op's schema, fake (meta) kernel and autograd registration."""
    x, weight, bias, _ = _operands(2, 5, 6, 3, torch.float32)
    for silu in (True, False):
        torch.library.opcheck(torch.ops.pararnn.causal_conv1d.default,
                              (x.requires_grad_(), weight.requires_grad_(), bias, silu))


@pytest.fixture
def kernel_on_this_device(monkeypatch):
    """The module takes the kernel on this test's device (the CPU under the interpreter)."""
    kernels_on(monkeypatch, DEVICE)


# the module hands the kernel its (C, 1, K) weight and the SiLU flag as they are: each kernel
# size and each flag once (their combinations are test_matches_reference's)
@pytest.mark.parametrize("k,silu", [(2, False), (4, True)])
def test_module_routes_through_the_kernel_unchanged(kernel_on_this_device, k, silu):
    torch.manual_seed(k)
    conv = CausalConv1d(21, k).to(DEVICE)
    with torch.no_grad():
        conv.bias.normal_()
    x, _, _, grad = _operands(3, 13, 21, k, torch.float32)
    params = list(conv.parameters())
    results = []
    for run in (lambda x: conv(x, silu=silu), lambda x: _module_old_path(conv, x, silu)):
        xg = x.clone().requires_grad_()
        y = run(xg)
        results.append([y.detach(), *torch.autograd.grad(y, [xg, *params], grad)])
        if len(results) == 1:
            assert "CausalConv1d" in type(y.grad_fn).__name__  # the kernel's Function
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOL[torch.float32])


def test_module_keeps_the_plain_ops_with_a_cache_and_in_float64(kernel_on_this_device):
    conv = CausalConv1d(8, 4).to(DEVICE)
    x = torch.randn(2, 5, 8, device=DEVICE, requires_grad=True)
    assert "CausalConv1d" not in type(conv(x, {}, silu=True).grad_fn).__name__
    assert "CausalConv1d" not in type(conv.double()(x.double(), silu=True).grad_fn).__name__


def test_compiled_module_traces_one_op(kernel_on_this_device):
    """``torch.compile(fullgraph=True)`` traces the registered op and its backward
    (``aot_eager``: shapes from the fake kernel, no code generation) and computes what the
    eager module does."""
    conv = CausalConv1d(21, 4).to(DEVICE)
    x, _, _, grad = _operands(2, 13, 21, 4, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: conv(x, silu=True), fullgraph=True, backend="aot_eager")
    results = []
    for run in (lambda x: conv(x, silu=True), compiled):
        xg = x.clone().requires_grad_()
        y = run(xg)
        results.append([y.detach(), *torch.autograd.grad(y, [xg, *conv.parameters()], grad)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("model", ["paragru", "mamba2"])
def test_language_model_loss_and_gradients_unchanged(model, monkeypatch):
    """A one-layer LM whose conv runs the kernel (the ParaRNN block's conv before the cell,
    Mamba2's on its x, B, C) computes the loss and gradients of the plain ops."""
    # Mamba2 with a 16-wide state: its conv takes 96 channels (x 64, B 16, C 16) rather than
    # 192, still a strided slice of the input projection, in 6 channel blocks
    options = dict(mamba_d_state=16) if model == "mamba2" else {}
    calls, got, want = loss_and_gradients_with_and_without_kernels(monkeypatch, causal_conv, model,
                                                                   DEVICE, **options)
    assert calls == 1  # the first run's one conv, the second's none
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
