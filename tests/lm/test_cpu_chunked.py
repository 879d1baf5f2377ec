"""The chunked CPU conv + SiLU and gated RMSNorm equal the plain ops, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from pararnn.models import cpu_chunked
from pararnn.models.lm import CausalConv1d, GatedRMSNorm


def plain_conv_silu(conv, x):
    y = F.conv1d(F.pad(x.transpose(1, 2), (conv.kernel_size - 1, 0)), conv.weight, conv.bias,
                 groups=x.shape[-1])
    return F.silu(y.transpose(1, 2))


def plain_gated_norm(norm, y, gate):
    return F.rms_norm(y, (y.shape[-1],), norm.weight, norm.eps) * F.silu(gate)


def grads(out, inputs, seed=1):
    cotangent = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, cotangent)


@pytest.fixture(params=["c", 1 << 16, 40], ids=["c", "default-chunks", "uneven-small-chunks"])
def chunk_elements(request, monkeypatch):
    """The C loops, or (as without a C compiler) the chunked PyTorch ops in chunks of
    ``request.param`` elements."""
    if request.param == "c":
        if cpu_chunked._LIBRARY.get(torch.zeros(1, dtype=torch.float64)) is None:
            pytest.skip("no C compiler")
        return request.param
    monkeypatch.setenv("PARARNN_CPU_KERNELS", "0")
    monkeypatch.setattr(cpu_chunked, "CHUNK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("steps,kernel", [(13, 4), (3, 4), (1, 4), (9, 1), (9, 2)])
def test_conv_silu_matches_plain_ops(chunk_elements, steps, kernel):
    torch.manual_seed(0)
    conv = CausalConv1d(6, kernel).double()
    with torch.no_grad():
        conv.bias.normal_()
    # a strided view, as the mixer passes the first half of its input projection
    both = torch.randn(3, steps, 12, dtype=torch.float64, requires_grad=True)
    x = both[..., :6]
    out = conv(x, silu=True)
    assert out.grad_fn is not None and "CausalConvSiLU" in type(out.grad_fn).__name__
    expected = plain_conv_silu(conv, x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    inputs = (both, conv.weight, conv.bias)
    for got, want in zip(grads(out, inputs), grads(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_conv_silu_and_norm_take_inputs_strided_along_channels(chunk_elements):
    torch.manual_seed(0)
    conv, norm = CausalConv1d(5, 4).double(), GatedRMSNorm(5).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    xt = x.transpose(1, 2)  # (B, T, C) with channels strided
    torch.testing.assert_close(conv(xt, silu=True), plain_conv_silu(conv, xt), rtol=0, atol=1e-12)
    out = norm(xt, xt.flip(1))
    expected = plain_gated_norm(norm, xt, xt.flip(1))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    for got, want in zip(grads(out, (x, norm.weight)), grads(expected, (x, norm.weight))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_conv_silu_gradcheck(chunk_elements):
    torch.manual_seed(0)
    conv = CausalConv1d(3, 4).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: cpu_chunked.CausalConvSiLU.apply(x, w, b),
                                    (x, conv.weight, conv.bias))


def test_gated_norm_matches_plain_ops(chunk_elements):
    torch.manual_seed(0)
    norm = GatedRMSNorm(8, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.normal_()
    y = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    both = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    gate = both[..., 8:]
    out = norm(y, gate)
    assert "GatedRMSNormFn" in type(out.grad_fn).__name__
    expected = plain_gated_norm(norm, y, gate)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    inputs = (y, both, norm.weight)
    for got, want in zip(grads(out, inputs), grads(expected, inputs)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda y, g, w: cpu_chunked.GatedRMSNormFn.apply(y, g, w, 1e-5), (y, gate, norm.weight))


def test_float32_matches_plain_ops_and_inference_keeps_the_plain_ops():
    torch.manual_seed(0)
    conv, norm = CausalConv1d(16, 4), GatedRMSNorm(16)
    x = torch.randn(2, 9, 16, requires_grad=True)
    torch.testing.assert_close(conv(x, silu=True), plain_conv_silu(conv, x))
    torch.testing.assert_close(norm(x, x.flip(1)), plain_gated_norm(norm, x, x.flip(1)))
    # a decode cache, or no SiLU: the plain conv; autocast: the plain ops
    for out in (conv(x, {}, silu=True), conv(x)):
        assert "CausalConvSiLU" not in type(out.grad_fn).__name__
    with torch.no_grad():  # inference: the plain ops, which a compiled decode step reproduces
        torch.testing.assert_close(norm(x, x), plain_gated_norm(norm, x, x), rtol=0, atol=0)
        torch.testing.assert_close(conv(x, silu=True), plain_conv_silu(conv, x), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "GatedRMSNormFn" not in type(norm(x, x).grad_fn).__name__
        assert "CausalConvSiLU" not in type(conv(x, silu=True).grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_inputs_stay_finite_and_match_plain_ops(chunk_elements, dtype):
    """Pre-activations far beyond exp's range (a SiLU of -1e4, +-100, +-1e3): the C loops'
    sigmoid is clamped where exp overflows (built with fast math, an overflowing exp gave
    NaN), so values and gradients stay the plain ops' (zero or one to rounding)."""
    torch.manual_seed(0)
    conv, norm = CausalConv1d(8, 4).to(dtype), GatedRMSNorm(8).to(dtype)
    big = torch.tensor([-1e4, -1e3, -100.0, -89.0, 89.0, 100.0, 1e3, 1e4], dtype=dtype)
    x = (big * torch.rand(2, 9, 1, dtype=dtype).add(1)).requires_grad_()
    with torch.no_grad():
        conv.weight.fill_(1.0)  # pre-activations of the order of x
    for fn, plain in ((lambda v: conv(v, silu=True), lambda v: plain_conv_silu(conv, v)),
                      (lambda v: norm(torch.randn_like(v), v),
                       lambda v: plain_gated_norm(norm, torch.randn_like(v), v))):
        torch.manual_seed(1)
        out = fn(x)
        torch.manual_seed(1)
        expected = plain(x)
        assert out.isfinite().all()
        torch.testing.assert_close(out, expected)
        for got, want in zip(grads(out, (x,)), grads(expected, (x,))):
            assert got.isfinite().all()
            torch.testing.assert_close(got, want)
