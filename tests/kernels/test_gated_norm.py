"""The fused gated RMSNorm against its PyTorch reference and the module's plain ops:
values and the gradients of h, gate and weight."""

import pytest
import torch

pytest.importorskip("triton")

from pararnn.kernels import gated_norm, interpreter_enabled  # noqa: E402
from pararnn.kernels.gated_norm import gated_rms_norm, gated_rms_norm_naive  # noqa: E402
from pararnn.models import lm as lm_module  # noqa: E402
from _lm_block_kernels import (kernels_on,  # noqa: E402
                               loss_and_gradients_with_and_without_kernels)
from pararnn.models.lm import GatedRMSNorm  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
if not CUDA and not interpreter_enabled():
    pytest.skip("no CUDA device and TRITON_INTERPRET is not 1", allow_module_level=True)

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
# (B, T, N): N not a power of two; on the CPU (64-element tiles) 21 channels make blocks
# of two rows, so B*T rows end in a ragged block and the backward's two programs walk
# several blocks each (see the test below)
SHAPES = [(3, 7, 21), (1, 9, 40)]
EPS = 1e-5


def _operands(batch, steps, width, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, steps, width, generator=gen, dtype=dtype)
    gate = torch.randn(batch, steps, width, generator=gen, dtype=dtype)
    weight = 1.0 + 0.5 * torch.randn(width, generator=gen, dtype=dtype)
    grad = torch.randn(batch, steps, width, generator=gen, dtype=dtype)
    return [t.to(DEVICE) for t in (h, gate, weight, grad)]


def _value_and_grads(fn, h, gate, weight, grad):
    inputs = [t.detach().requires_grad_() for t in (h, gate, weight)]
    y = fn(*inputs, EPS)
    return [y.detach(), *torch.autograd.grad(y, inputs, grad.to(y.dtype))]


def test_shapes_cover_ragged_blocks_and_several_blocks_per_program():
    if CUDA:
        pytest.skip("the CPU tiles decide the plan")
    h = torch.empty(3, 7, 21)
    block_r, block_n, _, programs, per_program = gated_norm._plan(h)
    assert (block_r, block_n) == (2, 32) and 21 % block_r == 1  # 11 blocks, the last ragged
    assert programs == 2 and per_program == 6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype):
    h, gate, weight, grad = _operands(*shape, dtype)
    got = _value_and_grads(gated_rms_norm, h, gate, weight, grad)
    want = _value_and_grads(gated_rms_norm_naive, *(t.double() for t in (h, gate, weight, grad)))
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == w.shape and g.is_contiguous()
        torch.testing.assert_close(g.double(), w, **TOL[dtype])


def test_strided_inputs():
    """A gate that is a chunk of a wider projection (strided rows) and an h stored
    channels-first, as the mixer hands them over."""
    h, gate, weight, grad = _operands(2, 11, 18, torch.float64)
    want = _value_and_grads(gated_rms_norm_naive, h, gate, weight, grad)
    chunk = torch.cat([h.flip(-1), gate], dim=-1)[..., 18:]
    channels_first = h.transpose(1, 2).contiguous().transpose(1, 2)
    assert not chunk.is_contiguous() and not channels_first.is_contiguous()
    for g, w in zip(_value_and_grads(gated_rms_norm, channels_first, chunk, weight, grad), want):
        torch.testing.assert_close(g, w, **TOL[torch.float64])


def test_reduced_precision_gate_and_float32_weight_gradient():
    """A bfloat16 gate with float32 h and weight (the ParaRNN block under autocast without
    a fused cell output): float32 math and output, a bfloat16 gate gradient, float32 h
    and weight gradients, each one rounding from the float64 reference."""
    h, gate, weight, grad = _operands(3, 13, 21, torch.float32)
    gate = gate.bfloat16()
    got = _value_and_grads(gated_rms_norm, h, gate, weight, grad)
    assert [t.dtype for t in got] == [torch.float32, torch.float32, torch.bfloat16, torch.float32]
    want = _value_and_grads(gated_rms_norm_naive, *(t.double() for t in (h, gate, weight, grad)))
    for i in (0, 1, 3):
        torch.testing.assert_close(got[i].double(), want[i], rtol=1e-5, atol=1e-5)
    # Triton's interpreter rounds float32 to bfloat16 toward zero, a GPU to nearest
    assert ((got[2].double() - want[2]).abs() <= 2 ** -7 * want[2].abs() + 1e-6).all()


@pytest.mark.parametrize("wide", ["gate", "weight"])
def test_a_float64_operand_makes_the_math_float64(wide):
    """float32 h with a float64 gate or weight: the math is float64 (it was float32 by h's
    dtype alone), so the output matches the float64 reference to float64 precision."""
    h, gate, weight, grad = _operands(3, 7, 21, torch.float64)
    h = h.float()
    gate, weight = (gate, weight.float()) if wide == "gate" else (gate.float(), weight)
    got = _value_and_grads(gated_rms_norm, h, gate, weight, grad)
    assert got[0].dtype == torch.float64
    want = _value_and_grads(gated_rms_norm_naive, *(t.double() for t in (h, gate, weight, grad)))
    torch.testing.assert_close(got[0], want[0], **TOL[torch.float64])


def test_autocast_outputs_the_autocast_dtype():
    """Under autocast the output is in the autocast dtype (the output projection casts to
    it anyway), rounded once from the float32 result; the gradients keep their dtypes."""
    h, gate, weight, grad = _operands(2, 9, 16, torch.float32)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        got = _value_and_grads(gated_rms_norm, h, gate.bfloat16(), weight, grad)
    plain = _value_and_grads(gated_rms_norm, h, gate.bfloat16(), weight, grad)
    assert got[0].dtype == torch.bfloat16 and plain[0].dtype == torch.float32
    assert [t.dtype for t in got[1:]] == [torch.float32, torch.bfloat16, torch.float32]
    assert ((got[0].double() - plain[0].double()).abs() <= 2 ** -7 * plain[0].double().abs()).all()
    # the output's gradient arrives in bfloat16, once rounded
    rounded = torch.autograd.grad(gated_rms_norm(*(t.requires_grad_() for t in (h, gate.bfloat16(), weight)),
                                                 EPS), [h], grad.bfloat16().float())
    torch.testing.assert_close(got[1], rounded[0], rtol=1e-6, atol=1e-6)


def test_backward_is_deterministic():
    h, gate, weight, grad = _operands(3, 7, 21, torch.float32)
    first = _value_and_grads(gated_rms_norm, h, gate, weight, grad)
    second = _value_and_grads(gated_rms_norm, h, gate, weight, grad)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_bad_input_is_rejected():
    h, gate, weight, grad = _operands(2, 5, 6, torch.float32)
    with pytest.raises(ValueError, match=r"h must be \(B, T, N\)"):
        gated_rms_norm(h[0], gate[0], weight, EPS)
    with pytest.raises(ValueError, match=r"gate must have h's shape \(2, 5, 6\)"):
        gated_rms_norm(h, gate[:, :4], weight, EPS)
    with pytest.raises(ValueError, match=r"weight must be \(6,\)"):
        gated_rms_norm(h, gate, weight[:5], EPS)
    with pytest.raises(ValueError, match="h must be float16, bfloat16, float32 or float64"):
        gated_rms_norm(h.int(), gate, weight, EPS)
    with pytest.raises(ValueError, match=r"grad_y must have h's shape"):
        gated_norm.backward(h, gate, weight, EPS, grad[:, :3])
    wide = torch.zeros(1, 1, gated_norm.MAX_WIDTH + 1, device=DEVICE)
    with pytest.raises(ValueError, match="rows of up to 4096 channels"):
        gated_rms_norm(wide, wide, wide[0, 0], EPS)


def test_double_backward_is_refused():
    h, gate, weight, grad = _operands(1, 5, 6, torch.float32)
    h.requires_grad_()
    y = gated_rms_norm(h, gate, weight, EPS)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y, h, grad, create_graph=True)


def test_opcheck():
    """The registered op's schema, fake (meta) kernel and autograd registration."""
    h, gate, weight, _ = _operands(2, 5, 6, torch.float32)
    torch.library.opcheck(torch.ops.pararnn.gated_rms_norm.default,
                          (h.requires_grad_(), gate.requires_grad_(), weight.requires_grad_(),
                           EPS, torch.float32))


@pytest.fixture
def kernel_on_this_device(monkeypatch):
    """The module takes the kernel on this test's device (the CPU under the interpreter)."""
    kernels_on(monkeypatch, DEVICE)


def _module_run(norm, weight, h, gate, grad):
    inputs = [h.clone().requires_grad_(), gate.clone().requires_grad_()]
    y = norm(*inputs)
    return y, [y.detach(), *torch.autograd.grad(y, [*inputs, weight], grad)]


def _kernel_path(y):
    return type(y.grad_fn).__name__ == "_GatedRMSNormBackward"  # the kernel's Function


def test_module_routes_through_the_kernel_unchanged(kernel_on_this_device):
    h, gate, weight, grad = _operands(3, 13, 21, torch.float32)
    norm = GatedRMSNorm(21).to(DEVICE)
    with torch.no_grad():
        norm.weight.copy_(weight)
    y, got = _module_run(norm, norm.weight, h, gate, grad)
    assert _kernel_path(y)
    _, want = _module_run(lambda h, gate: gated_rms_norm_naive(h, gate, norm.weight, norm.eps),
                          norm.weight, h, gate, grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL[torch.float32])


def test_module_keeps_the_plain_ops_in_float64_and_for_wide_rows(kernel_on_this_device, monkeypatch):
    norm = GatedRMSNorm(8).to(DEVICE)
    h = torch.randn(2, 5, 8, device=DEVICE, requires_grad=True)
    assert not _kernel_path(norm.double()(h.double(), h.double()))
    norm.float()
    assert _kernel_path(norm(h, h))
    monkeypatch.setattr(lm_module, "_NORM_MAX_WIDTH", 7)
    assert not _kernel_path(norm(h, h))


def test_mixer_keeps_the_plain_ops_with_a_decode_cache(kernel_on_this_device, monkeypatch):
    """Training and scoring (no cache) take the kernel; prefill with a cache and decode
    steps keep the plain ops, as the conv does."""
    from pararnn.models import build_model, preset

    torch.manual_seed(0)
    lm = build_model(preset("paragru", d_model=32, n_layers=1, vocab_size=64, block="paper")).to(DEVICE)
    mixer = lm.blocks[0].mixer
    calls = []
    kernel_forward = gated_norm.forward
    monkeypatch.setattr(gated_norm, "forward", lambda *args: calls.append(1) or kernel_forward(*args))
    x = torch.randn(2, 5, 32, device=DEVICE)
    with torch.no_grad():
        whole = mixer(x)
        assert len(calls) == 1
        cache = {}
        steps = [mixer(x[:, :3], cache), *(mixer(x[:, t:t + 1], cache) for t in (3, 4))]
    assert len(calls) == 1
    torch.testing.assert_close(torch.cat(steps, dim=1), whole, rtol=1e-5, atol=1e-6)


def test_module_width_limit_is_the_kernels():
    assert lm_module._NORM_MAX_WIDTH == gated_norm.MAX_WIDTH


def test_compiled_module_traces_one_op(kernel_on_this_device):
    """``torch.compile(fullgraph=True)`` traces the registered op and its backward
    (``aot_eager``: shapes from the fake kernel, no code generation) and computes what the
    eager module does."""
    norm = GatedRMSNorm(21).to(DEVICE)
    h, gate, _, grad = _operands(2, 13, 21, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(norm, fullgraph=True, backend="aot_eager")
    results = [_module_run(run, norm.weight, h, gate, grad)[1] for run in (norm, compiled)]
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_language_model_loss_and_gradients_unchanged(monkeypatch):
    """A one-layer ParaGRU LM of the paper's block whose gated norm runs the kernel
    computes the loss and gradients of the plain ops."""
    calls, got, want = loss_and_gradients_with_and_without_kernels(monkeypatch, gated_norm,
                                                                   "paragru", DEVICE)
    assert calls == 1  # the first run's one norm, the second's none
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
